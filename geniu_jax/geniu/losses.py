"""Numerically careful per-example losses shared by training and unlearning."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy(logits: jax.Array, label: jax.Array) -> jax.Array:
  """CE of one example, accurate down to ~1e-38 when the label is confident.

  logsumexp(l) - l_y rounds to exactly 0 in float32 once p_y > 1 - 6e-8, which
  would make Eq. 10's 1/CE infinite. Written as log1p(sum_{j != y} exp(l_j - l_y))
  it stays positive and accurate far below that.
  """
  shifted = logits - logits[label]
  others = jnp.where(jnp.arange(logits.shape[-1]) == label, -jnp.inf, shifted)
  return jax.nn.softplus(jax.nn.logsumexp(others))


batch_cross_entropy = jax.vmap(cross_entropy)


def entropy(logits: jax.Array) -> jax.Array:
  """Softmax entropy E(x) = -sum_k p_k log p_k of one example (§4.4)."""
  logp = jax.nn.log_softmax(logits)
  return -jnp.sum(jnp.exp(logp) * logp)


batch_entropy = jax.vmap(entropy)
