"""AllCNN (Springenberg et al., 2015) as the unlearning baselines use it.

Layout of the baselines' PyTorch AllCNN (UNSIR, GKT): eight conv blocks, each
conv -> BatchNorm -> ReLU, then global average pooling and one dense layer.
Channel counts scale with `width` (the baselines' `filters_percentage`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from geniu_jax.models.conv import Conv2d, Lowering

# (out channels at width 1, kernel size, stride) of each block.
ALLCNN_BLOCKS = (
    (96, 3, 1), (96, 3, 1), (192, 3, 2),
    (192, 3, 1), (192, 3, 1), (192, 3, 2),
    (192, 3, 1), (192, 1, 1),
)
# PyTorch's BatchNorm momentum 0.1 is an EMA decay of 0.9.
BN_MOMENTUM = 0.9


def scaled_channels(channels: int, width: float) -> int:
  return max(1, int(channels * width))


class ConvBlock(nnx.Module):
  """conv -> BatchNorm -> ReLU."""

  def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, *,
               lowering: Lowering, dtype=None, rngs: nnx.Rngs):
    self.conv = Conv2d(c_in, c_out, kernel, stride, lowering=lowering, dtype=dtype, rngs=rngs)
    # Statistics in float32 whatever the compute dtype (flax's mixed-precision default).
    self.norm = nnx.BatchNorm(c_out, momentum=BN_MOMENTUM, epsilon=1e-5, dtype=dtype,
                              rngs=rngs)

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    return jax.nn.relu(self.norm(self.conv(x), use_running_average=not train))


class AllCNN(nnx.Module):
  """AllCNN classifier for NHWC images of any size (global average pool).

  Args:
    num_classes: K, the number of output logits.
    in_channels: 1 for MNIST-style data, 3 for CIFAR-10.
    width: channel multiplier (1.0 is the paper's model).
    lowering: convolution lowering, see `geniu_jax.models.conv`.
    dtype: compute dtype (`bfloat16` for mixed precision) or None (float32);
      parameters and BatchNorm statistics stay float32 and the logits are
      returned in float32, so losses and softmaxes never run in bfloat16.
    rngs: NNX random streams.
  """

  def __init__(self, num_classes: int, in_channels: int = 1, width: float = 1.0, *,
               lowering: Lowering = "auto", dtype=None, rngs: nnx.Rngs):
    blocks = []
    c_in = in_channels
    for channels, kernel, stride in ALLCNN_BLOCKS:
      c_out = scaled_channels(channels, width)
      blocks.append(ConvBlock(c_in, c_out, kernel, stride, lowering=lowering, dtype=dtype,
                              rngs=rngs))
      c_in = c_out
    self.blocks = nnx.List(blocks)
    self.head = nnx.Linear(c_in, num_classes, dtype=dtype, rngs=rngs)

  def features(self, x: jax.Array, train: bool = False) -> list[jax.Array]:
    """Activations after every block (used by GKT's attention transfer)."""
    acts = []
    for block in self.blocks:
      x = block(x, train)
      acts.append(x)
    return acts

  def logits(self, last: jax.Array) -> jax.Array:
    """float32 logits from the last block's activations (global average pool + head)."""
    return self.head(jnp.mean(last, axis=(1, 2))).astype(jnp.float32)

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    return self.logits(self.features(x, train)[-1])
