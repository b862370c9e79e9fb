"""Supervision sample selection (§4.4): per class, the top-B samples by entropy.

The selection is a running top-B per class that merges one batch at a time,
so it can ride along the classifier epoch (entropies of the logits the train
step already computed, no extra pass) or run as its own eval-mode pass.
Max entropy is the paper's rule; min entropy is its Table 10 ablation.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from geniu_jax.geniu.losses import batch_entropy
from geniu_jax.models.functional import classifier_logits


class TopB(NamedTuple):
  scores: jax.Array   # [K, B] best scores so far (-inf where empty)
  indices: jax.Array  # [K, B] training-set index of each, -1 where empty


def init_topb(num_classes: int, per_class: int) -> TopB:
  return TopB(jnp.full((num_classes, per_class), -jnp.inf),
              jnp.full((num_classes, per_class), -1, jnp.int32))


def selection_scores(logits: jax.Array, rule: str) -> jax.Array:
  """Higher is better: entropy for `max_entropy`, -entropy for `min_entropy`."""
  if rule not in ("max_entropy", "min_entropy"):
    raise ValueError(f"unknown selection rule {rule!r}")
  ent = batch_entropy(logits)
  return ent if rule == "max_entropy" else -ent


def update_topb(topb: TopB, scores: jax.Array, labels: jax.Array,
                indices: jax.Array) -> TopB:
  """Merges one batch (scores, labels, dataset indices) into the running top-B."""
  per_class = topb.scores.shape[1]

  def merge_class(k, best_scores, best_indices):
    cand = jnp.where(labels == k, scores, -jnp.inf)
    all_scores = jnp.concatenate([best_scores, cand])
    all_indices = jnp.concatenate([best_indices, indices.astype(jnp.int32)])
    top, pos = jax.lax.top_k(all_scores, per_class)
    return top, jnp.where(jnp.isfinite(top), all_indices[pos], -1)

  ks = jnp.arange(topb.scores.shape[0])
  return TopB(*jax.vmap(merge_class)(ks, topb.scores, topb.indices))


def supervision_indices(topb: TopB) -> jax.Array:
  """[B*K] training indices in prompt order (i -> class i % K, rank i // K).

  A class with fewer than B samples repeats its best one.
  """
  idx = jnp.where(topb.indices >= 0, topb.indices, topb.indices[:, :1])
  return idx.T.reshape(-1)


def select_by_pass(classifier, x: jax.Array, y: jax.Array, num_classes: int,
                   per_class: int, rule: str, batch_size: int = 1024) -> TopB:
  """Eval-mode pass over (x, y) in chunks, as one `lax.scan` (Alg. 1, line 5)."""
  graphdef, params, stats = classifier
  n = x.shape[0]
  num_chunks = -(-n // batch_size)
  pad = num_chunks * batch_size - n
  xs = jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1)).reshape(
      num_chunks, batch_size, *x.shape[1:])
  # Padding rows get label -1 so they never match a class.
  ys = jnp.pad(y, (0, pad), constant_values=-1).reshape(num_chunks, batch_size)
  idx = jnp.arange(num_chunks * batch_size).reshape(num_chunks, batch_size)

  def body(topb, chunk):
    xb, yb, ib = chunk
    scores = selection_scores(classifier_logits(graphdef, params, stats, xb), rule)
    return update_topb(topb, scores, yb, ib), None

  topb, _ = jax.lax.scan(body, init_topb(num_classes, per_class), (xs, ys, idx))
  return topb
