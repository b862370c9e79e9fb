"""The proxy generator g(., phi) (Eq. 4-6): `geniu_jax/geniu/generator.py`.

The KL term on hand-computed Gaussians, Eq. 6's reconstruction and KL parts,
Adam steps that fit the targets without touching their input state, and
`make_proxies`: the deterministic, per-prompt x'_k = g(z_k).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from geniu_jax.geniu import generator as gen_lib
from geniu_jax.models import functional as F

from conftest import TINY_SHAPE, assert_unchanged, normal, snapshot

_make_proxies = jax.jit(gen_lib.make_proxies, static_argnums=0)
_generator_loss = jax.jit(gen_lib.generator_loss, static_argnums=1)
_apply = jax.jit(F.generator_apply, static_argnums=0)


class KlDivergenceTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_kl_divergence_of_hand_made_gaussians(self):
    # N(0, I): 0. N((1, 2), I): (1 + 4) / 2. N(0, diag(2, 1)): (2 - 1 - log 2) / 2.
    mu = jnp.array([[0.0, 0.0], [1.0, 2.0], [0.0, 0.0]], jnp.float32)
    logvar = jnp.array([[0.0, 0.0], [0.0, 0.0], [np.log(2.0), 0.0]], jnp.float32)
    got = self.variant(gen_lib.kl_divergence)(mu, logvar)
    np.testing.assert_allclose(got, [0.0, 2.5, 0.5 * (1.0 - np.log(2.0))], rtol=1e-6,
                               atol=1e-7)


def test_make_proxies_is_deterministic_and_per_prompt(tiny_generator, tiny_prompts):
  gen = tiny_generator
  proxies = np.asarray(_make_proxies(gen.graphdef, gen.params, tiny_prompts))
  assert proxies.shape == tiny_prompts.shape
  assert np.all((proxies >= 0.0) & (proxies <= 1.0))     # images, through a sigmoid
  np.testing.assert_array_equal(_make_proxies(gen.graphdef, gen.params, tiny_prompts),
                                proxies)
  # The latent mean, never a sample: a keyed pass decodes a different latent.
  sampled = np.asarray(_apply(gen.graphdef, gen.params, tiny_prompts, jax.random.key(0))[0])
  assert not np.allclose(sampled, proxies)
  # x'_k depends on z_k only (no statistics across the batch).
  np.testing.assert_allclose(_make_proxies(gen.graphdef, gen.params, tiny_prompts[:3]),
                             proxies[:3], rtol=1e-5, atol=1e-6)
  other = np.asarray(_make_proxies(gen.graphdef, gen.params, tiny_prompts + 1.0))
  assert not np.allclose(other, proxies)


def test_generator_loss_is_reconstruction_plus_weighted_kl(tiny_generator, tiny_prompts):
  gen = tiny_generator
  key = jax.random.key(3)
  recon, mu, logvar = _apply(gen.graphdef, gen.params, tiny_prompts, key)
  kl = float(jnp.mean(gen_lib.kl_divergence(mu, logvar)))
  assert kl > 0
  # Targets equal to the (same-key) reconstruction: only the KL term is left.
  loss, aux = _generator_loss(gen.params, gen.graphdef, tiny_prompts, recon, key, 0.5)
  assert float(aux["rec"]) == 0.0
  np.testing.assert_allclose(aux["kl"], kl, rtol=1e-5)
  np.testing.assert_allclose(loss, 0.5 * kl, rtol=1e-5)
  # Every pixel off by 0.5: the pixel-mean squared error is 0.25.
  loss, aux = _generator_loss(gen.params, gen.graphdef, tiny_prompts, recon + 0.5, key, 0.0)
  np.testing.assert_allclose(aux["rec"], 0.25, rtol=1e-5)
  np.testing.assert_allclose(loss, 0.25, rtol=1e-5)


def test_train_generator_fits_the_targets_and_leaves_its_input_alone(tiny_generator,
                                                                     tiny_prompts):
  gen = tiny_generator
  targets = normal(4, (tiny_prompts.shape[0], *TINY_SHAPE), 0.1) + 0.5
  optimizer = optax.adam(1e-2)
  state = gen_lib.GeneratorState(gen.params, optimizer.init(gen.params))
  snaps = snapshot(gen.params)
  error = lambda params: float(jnp.mean(
      (_make_proxies(gen.graphdef, params, tiny_prompts) - targets) ** 2))

  new, last_rec = jax.jit(gen_lib.train_generator, static_argnums=(1, 5, 6))(
      state, gen.graphdef, tiny_prompts, targets, jax.random.key(5), optimizer, 20, 1e-4)

  assert np.isfinite(float(last_rec))
  assert error(new.params) < 0.5 * error(gen.params)
  assert int(new.opt_state[0].count) == 20
  assert_unchanged((gen.params,), snaps)
