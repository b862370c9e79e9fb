"""The VAE proxy generator g(., phi) of GENIU (§4.1, Fig. 2).

Encoder: four stride-2 convs with 32, 64, 128, 256 channels (§5), then dense
layers to the mean and log-variance of an l-dimensional latent (l = 128 for
28x28 inputs, 256 for 32x32). Decoder: the encoder mirrored, as in the
reference VAE the paper takes its defaults from: a dense layer back to the
256-channel seed map, then four (nearest x2 upsample -> conv) stages with
128, 64, 32 and 32 channels, and a final conv to the image channels with a
sigmoid (images live in [0, 1]). Each stage halves the channels as it doubles
the resolution, so the decoder costs what the encoder costs (about 48 MFLOP
per image at 28x28, against 140 for a decoder that keeps 256 channels one
stage longer). Upsample + conv is used instead of a transposed conv so that
every conv lowering applies unchanged; the 32x32 map is cropped to 28x28 for
MNIST-style data.

Normalisation. The reference VAE puts BatchNorm + LeakyReLU after every conv;
without any normalisation the first Adam steps drive the output sigmoid into
saturation and the generator never learns. We use GroupNorm instead of
BatchNorm: it keeps the scale in check the same way but does not depend on
the batch, so a proxy g(z_k) is the same whichever prompts share its batch and
the generator carries no running statistics.

What the encoder sees. The paper writes x' = g(z, phi) with z an image-shaped
noise prompt (Eq. 7) and trains g so that g(z_k) reconstructs the selected
sample x_k (Eq. 4). So the encoder's input is the prompt z_k, not a real image:
at unlearning time only z and g exist. We follow that literally.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from geniu_jax.models.conv import Conv2d, Lowering

VAE_CHANNELS = (32, 64, 128, 256)
# Output channels of the decoder's upsampling stages: the encoder's, mirrored
# (256 -> 128 -> 64 -> 32), plus the reference VAE's last full-width stage.
DECODER_CHANNELS = (128, 64, 32, 32)


def _groups(channels: int) -> int:
  return min(8, channels)


def default_latent_dim(image_shape: tuple[int, int, int]) -> int:
  """128 for 28x28 (MNIST-style), 256 for larger inputs such as CIFAR-10 (§5)."""
  return 128 if image_shape[0] <= 28 else 256


class VAE(nnx.Module):
  """Convolutional VAE mapping an image-shaped prompt to an image.

  Args:
    image_shape: (H, W, C) of prompts and outputs.
    latent_dim: l; `None` picks the paper's value from the image size.
    lowering: convolution lowering.
    rngs: NNX random streams.
  """

  def __init__(self, image_shape: tuple[int, int, int], latent_dim: int | None = None,
               *, lowering: Lowering = "auto", rngs: nnx.Rngs):
    h, w, c = image_shape
    self.image_shape = tuple(image_shape)
    self.latent_dim = latent_dim or default_latent_dim(self.image_shape)
    convs, norms, c_in = [], [], c
    for c_out in VAE_CHANNELS:
      convs.append(Conv2d(c_in, c_out, 3, 2, lowering=lowering, use_bias=True, rngs=rngs))
      norms.append(nnx.GroupNorm(c_out, num_groups=_groups(c_out), rngs=rngs))
      c_in = c_out
    self.encoder = nnx.List(convs)
    self.encoder_norms = nnx.List(norms)
    # Spatial size after four stride-2 convs; the decoder starts from it.
    self.seed_hw = (-(-h // 16), -(-w // 16))
    flat = self.seed_hw[0] * self.seed_hw[1] * VAE_CHANNELS[-1]
    self.to_mu = nnx.Linear(flat, self.latent_dim, rngs=rngs)
    # Zero-initialised so training starts at sigma = 1: with a random init the
    # encoder's unnormalised features give huge variances, the sampled latents
    # saturate the output sigmoid and the reconstruction gradient vanishes.
    self.to_logvar = nnx.Linear(flat, self.latent_dim, kernel_init=nnx.initializers.zeros,
                                rngs=rngs)
    self.from_latent = nnx.Linear(self.latent_dim, flat, rngs=rngs)
    deconvs, norms, c_in = [], [], VAE_CHANNELS[-1]
    for c_out in DECODER_CHANNELS:
      deconvs.append(Conv2d(c_in, c_out, 3, 1, lowering=lowering, use_bias=True, rngs=rngs))
      norms.append(nnx.GroupNorm(c_out, num_groups=_groups(c_out), rngs=rngs))
      c_in = c_out
    self.decoder = nnx.List(deconvs)
    self.decoder_norms = nnx.List(norms)
    self.to_image = Conv2d(c_in, c, 3, 1, lowering=lowering, use_bias=True, rngs=rngs)

  def encode(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Prompt batch [N,H,W,C] -> (mu, logvar), each [N, l]."""
    x = z
    for conv, norm in zip(self.encoder, self.encoder_norms):
      x = jax.nn.leaky_relu(norm(conv(x)), 0.2)
    x = x.reshape(x.shape[0], -1)
    return self.to_mu(x), self.to_logvar(x)

  def decode(self, latent: jax.Array) -> jax.Array:
    """Latent batch [N, l] -> images [N,H,W,C] in [0, 1]."""
    h, w, _ = self.image_shape
    x = self.from_latent(latent).reshape(
        latent.shape[0], *self.seed_hw, VAE_CHANNELS[-1])
    for conv, norm in zip(self.decoder, self.decoder_norms):
      x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
      x = jax.nn.leaky_relu(norm(conv(x)), 0.2)
    x = self.to_image(x)
    top, left = (x.shape[1] - h) // 2, (x.shape[2] - w) // 2
    return jax.nn.sigmoid(x[:, top:top + h, left:left + w, :])

  def __call__(self, z: jax.Array, key: jax.Array | None = None
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns (x', mu, logvar); samples the latent when `key` is given, else uses mu."""
    mu, logvar = self.encode(z)
    latent = mu
    if key is not None:
      latent = mu + jnp.exp(0.5 * logvar) * jax.random.normal(key, mu.shape)
    return self.decode(latent), mu, logvar
