"""Supervision sample selection (§4.4): per class, the top-B samples by a score.

The selection is a running top-B per class that merges one batch at a time,
so it can ride along the classifier epoch (scores of the logits the train
step already computed, no extra pass) or run as its own eval-mode pass.
Max entropy is the paper's rule; min entropy is its Table 10 ablation;
`random` is the control the ablation lacks: B samples of every class drawn
uniformly at random, whatever their entropy.

`random` scores each sample by a hash of its logits' bits. The rules only
ever see logits (the train step and the selection pass hand nothing else to
`selection_scores`), and the logits are a deterministic function of the
run's seed, so the draw is reproducible from the seed, changes with it and
from epoch to epoch as the entropy rules' choices do, and needs no PRNG key
threaded through the jitted training programs. A well-mixed hash is
independent of the entropy, and the top-B of independent uniform scores is
a uniformly random B-subset of the class. Being keyed by exact bits, the
draw repeats where training itself repeats bit for bit (CPU; accelerators
with deterministic ops); a last-bit difference in a logit redraws its sample.
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


RULES = ("max_entropy", "min_entropy", "random")


def _mix32(h: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finaliser: every input bit flips each output bit
  with probability ~1/2."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def random_scores(logits: jax.Array) -> jax.Array:
  """[N] uniform scores in [0, 1), a hash of each row of [N, K] logits."""
  bits = jax.lax.bitcast_convert_type(logits.astype(jnp.float32), jnp.uint32)
  h = jnp.full(bits.shape[:1], 0x9E3779B9, jnp.uint32)
  for k in range(bits.shape[1]):  # K is static and small
    h = _mix32(h ^ bits[:, k])
  # 24 bits: what a float32 in [0, 1) holds exactly.
  return (h >> 8).astype(jnp.float32) * (1.0 / (1 << 24))


def selection_scores(logits: jax.Array, rule: str) -> jax.Array:
  """Higher is better: entropy for `max_entropy`, -entropy for `min_entropy`,
  a hash of the logits (`random_scores`) for `random`."""
  if rule not in RULES:
    raise ValueError(f"unknown selection rule {rule!r}; expected one of {RULES}")
  if rule == "random":
    return random_scores(logits)
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
