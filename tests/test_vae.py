"""The VAE proxy generator: `geniu_jax/models/vae.py`.

Output shapes, range and latent size (the paper's l from the image size),
the deterministic decode from mu, no running statistics, the log-variance
starting at zero, and outputs cropped back to any input size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from geniu_jax.models import functional as F
from geniu_jax.models import vae as vae_lib

from conftest import normal

_generate = jax.jit(F.generator_apply, static_argnums=0)


@pytest.mark.parametrize("shape,latent", [((28, 28, 1), 128), ((32, 32, 3), 256)],
                         ids=["28x28x1", "32x32x3"])
def test_vae_shapes_range_and_latent_size(shape, latent):
  gen = F.make_generator(shape, None, "native", jax.random.key(0))
  z = normal(1, (2, *shape), 3.0)
  x, mu, logvar = _generate(gen.graphdef, gen.params, z, jax.random.key(2))
  assert x.shape == (2, *shape) and x.dtype == jnp.float32
  assert mu.shape == (2, latent) and logvar.shape == (2, latent)
  assert mu.dtype == logvar.dtype == jnp.float32
  xs = np.asarray(x)
  assert np.all(np.isfinite(xs)) and xs.min() >= 0.0 and xs.max() <= 1.0
  # Without a key x' is decoded from mu: deterministic, and not the sampled one.
  x_det1, mu1, _ = _generate(gen.graphdef, gen.params, z)
  x_det2, _, _ = _generate(gen.graphdef, gen.params, z)
  assert np.array_equal(x_det1, x_det2)
  np.testing.assert_allclose(mu1, mu, rtol=1e-6)
  assert not np.allclose(x_det1, x)
  # The VAE carries no running statistics (GroupNorm only).
  assert not jax.tree_util.tree_leaves(gen.stats)


def test_vae_explicit_latent_dim():
  gen = F.make_generator((28, 28, 1), 16, "native", jax.random.key(0))
  _, mu, logvar = _generate(gen.graphdef, gen.params, jnp.zeros((1, 28, 28, 1)))
  assert mu.shape == logvar.shape == (1, 16)


@pytest.mark.parametrize("shape,want", [((28, 28, 1), 128), ((8, 8, 1), 128),
                                        ((29, 29, 1), 256), ((32, 32, 3), 256)])
def test_default_latent_dim(shape, want):
  assert vae_lib.default_latent_dim(shape) == want


def test_logvar_starts_at_zero(tiny_generator, tiny_prompts):
  # Zero-initialised head: sigma = 1 for every prompt at the start of training.
  _, mu, logvar = _generate(tiny_generator.graphdef, tiny_generator.params, tiny_prompts)
  assert np.all(np.asarray(logvar) == 0.0)
  assert float(jnp.abs(mu).max()) > 0.0


@pytest.mark.parametrize("shape,seed_hw", [((8, 8, 1), (1, 1)), ((20, 12, 3), (2, 1)),
                                           ((28, 28, 1), (2, 2)), ((33, 17, 2), (3, 2))])
def test_outputs_are_cropped_to_any_input_size(shape, seed_hw):
  model = nnx.eval_shape(lambda: vae_lib.VAE(shape, 8, lowering="native",
                                             rngs=nnx.Rngs(params=0)))
  assert model.seed_hw == seed_hw and model.latent_dim == 8
  graphdef, state = nnx.split(model)
  x, mu, logvar = jax.eval_shape(lambda s, z: nnx.merge(graphdef, s)(z), state,
                                 jax.ShapeDtypeStruct((3, *shape), jnp.float32))
  assert x.shape == (3, *shape) and mu.shape == logvar.shape == (3, 8)

