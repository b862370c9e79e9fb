"""Training the proxy generator g(., phi) so that g(z_k) reconstructs x_k (Eq. 4-6).

The paper takes lambda = 2.5e-4 and the learning rate from "the default
setting in the VAE"; in the reference VAE code those defaults come with a
pixel-mean squared reconstruction error and a batch-mean KL term, so we use
that scale: L_gen = mean_k mean_pixels (g(z_k) - x_k)^2 + lambda * KL, where
KL = -L_dis of Eq. 5 (minimising L_rec - lambda * L_dis, Eq. 6).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from geniu_jax.models.functional import generator_apply


class GeneratorState(NamedTuple):
  params: object
  opt_state: optax.OptState


def kl_divergence(mu: jax.Array, logvar: jax.Array) -> jax.Array:
  """Per-example KL(N(mu, sigma^2) || N(0, I)) = -(1/2) sum_j (1 + log s^2 - s^2 - mu^2)."""
  return -0.5 * jnp.sum(1.0 + logvar - jnp.exp(logvar) - mu**2, axis=-1)


def generator_loss(params, graphdef, z: jax.Array, targets: jax.Array, key: jax.Array,
                   kl_weight: float) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Eq. 6 for a batch of (prompt, supervision sample) pairs."""
  recon, mu, logvar = generator_apply(graphdef, params, z, key)
  rec = jnp.mean((recon - targets) ** 2)
  kl = jnp.mean(kl_divergence(mu, logvar))
  return rec + kl_weight * kl, {"rec": rec, "kl": kl}


def train_generator(state: GeneratorState, graphdef, z: jax.Array, targets: jax.Array,
                    key: jax.Array, optimizer: optax.GradientTransformation, steps: int,
                    kl_weight: float) -> tuple[GeneratorState, jax.Array]:
  """`steps` Adam steps on Eq. 6 as one `lax.scan`; returns the last reconstruction error."""

  def step(carry, step_key):
    params, opt_state = carry
    (_, aux), grad = jax.value_and_grad(generator_loss, has_aux=True)(
        params, graphdef, z, targets, step_key, kl_weight)
    updates, opt_state = optimizer.update(grad, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), aux["rec"]

  (params, opt_state), recs = jax.lax.scan(
      step, tuple(state), jax.random.split(key, steps))
  return GeneratorState(params, opt_state), recs[-1]


def make_proxies(graphdef, params, z: jax.Array) -> jax.Array:
  """x'_k = g(z_k) with the latent mean: proxies are a deterministic function of z."""
  return generator_apply(graphdef, params, z)[0]
