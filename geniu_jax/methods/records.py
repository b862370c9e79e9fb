"""Training-time records of the data-access baselines (I-R / Amnesiac, Unrolling SGD).

`default_recorder()` returns the `Recorder` that `geniu train --record-baselines`
and `experiments.table1` pass to `geniu_jax.geniu.train.train`. It runs INSIDE
the jitted train step and keeps, per class k (which class will be forgotten is
unknown while training, so every class gets its own slot):

* ``ir_updates[k]`` -- the sum of the parameter updates (w_{t+1} - w_t, weight
  decay included) of every batch that contained class k. Amnesiac unlearning
  (Graves et al. 2021, §4.2) subtracts exactly these: w_T - sum_{t: k in B_t}
  Delta_t. Graves et al. store one update per batch; summing per class keeps
  what one-class unlearning needs in K copies of the parameters instead of
  one per step.
* ``ir_batches[k]`` -- how many batches contained class k (for reports).
* ``unroll_grads[k]`` -- class k's share n_k/|B| of the mean-loss gradient of
  the first batch that contained class k, at the weights before that step
  (for a class present in the first batch: the initial weights w_0). This is
  the "gradient recorded when learning the first batch" that Unrolling SGD
  (Thudi et al. 2022) adds back, see `geniu_jax.methods.unrolling`. The train
  step gives the recorder only the batch gradient, not per-example ones, so
  the class's part of it is approximated by its share of the batch.
* ``unroll_step[k]`` -- the step at which that was recorded (-1: never seen).
* ``steps`` -- number of recorded steps.

Everything is a plain dict of arrays whose dict keys are strings, so the tree
survives `checkpoint.save(records=...)` / `checkpoint.restore` unchanged
(Orbax writes dict keys as strings; NNX lists would give int keys otherwise).
`state_to_tree` / `tree_to_state` convert between such trees and the NNX
parameter `State` of a classifier.

Size: two [K, ...params] float32 trees, i.e. 8 * K * P bytes for P parameters
(`record_bytes`): 0.53 MB for the smoke AllCNN (P = 6652), 2.1 MB for the cpu
preset (width 0.125), 129 MB for the paper's (P = 1.62 M, 28x28x1).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from geniu_jax.checkpoint import keys_like, str_keys

Tree = Any


def state_to_tree(state: Any) -> Tree:
  """NNX `State` (or pure dict) -> pure dict with string keys (jit-friendly)."""
  pure = nnx.to_pure_dict(state) if isinstance(state, nnx.State) else state
  return str_keys(pure)


def tree_to_state(tree: Tree, like: nnx.State) -> nnx.State:
  """Inverse of `state_to_tree`: puts the arrays of `tree` into a copy of `like`.

  `nnx.replace_by_pure_dict` updates its argument in place (and returns None
  in flax 0.12), so it is applied to a fresh copy and `like` stays untouched.
  """
  state = jax.tree.map(lambda x: x, like)
  nnx.replace_by_pure_dict(state, keys_like(tree, nnx.to_pure_dict(like)))
  return state


def class_slice(records_tree: Tree, classes) -> Tree:
  """Sum over the given classes of a [K, ...] records tree."""
  idx = jnp.asarray(classes, jnp.int32)
  return jax.tree.map(lambda a: jnp.sum(jnp.asarray(a)[idx], axis=0), records_tree)


@dataclasses.dataclass(frozen=True)
class BaselineRecorder:
  """The `geniu_jax.geniu.train.Recorder` of I-R and Unrolling SGD (see module doc)."""

  def init(self, params: Any, num_classes: int) -> dict:
    tree = state_to_tree(params)
    stacked = jax.tree.map(
        lambda p: jnp.zeros((num_classes, *p.shape), jnp.float32), tree)
    return {
        "ir_updates": stacked,
        "ir_batches": jnp.zeros((num_classes,), jnp.int32),
        "unroll_grads": jax.tree.map(jnp.copy, stacked),
        "unroll_step": jnp.full((num_classes,), -1, jnp.int32),
        "steps": jnp.zeros((), jnp.int32),
    }

  def update(self, records: dict, params: Any, grads: Any, updates: Any,
             labels: jax.Array) -> dict:
    del params  # the updates already are w_{t+1} - w_t
    num_classes = records["ir_batches"].shape[0]
    counts = jnp.sum(jax.nn.one_hot(labels, num_classes, dtype=jnp.float32), axis=0)
    present = counts > 0
    # Broadcast a [K] vector against [K, ...param] leaves.
    def per_class(v, leaf):
      return v.reshape((num_classes,) + (1,) * (leaf.ndim - 1))

    upd = state_to_tree(updates)
    ir = jax.tree.map(lambda acc, u: acc + per_class(present.astype(u.dtype), acc) * u[None],
                      records["ir_updates"], upd)
    first = present & (records["unroll_step"] < 0)
    share = jnp.where(first, counts / labels.shape[0], 0.0)
    grd = state_to_tree(grads)
    unroll = jax.tree.map(lambda acc, g: acc + per_class(share, acc) * g[None],
                          records["unroll_grads"], grd)
    step = records["steps"]
    return {
        "ir_updates": ir,
        "ir_batches": records["ir_batches"] + present.astype(jnp.int32),
        "unroll_grads": unroll,
        "unroll_step": jnp.where(first, step, records["unroll_step"]),
        "steps": step + 1,
    }


def default_recorder() -> BaselineRecorder:
  """The recorder `geniu train --record-baselines` uses."""
  return BaselineRecorder()


REQUIRED_KEYS = ("ir_updates", "ir_batches", "unroll_grads", "unroll_step", "steps")


def check_records(records: Any) -> dict:
  """Validates records (fresh or restored from a checkpoint) and returns them as jnp.

  Raises:
    ValueError: records are missing or were not written by `BaselineRecorder`.
  """
  if not isinstance(records, dict) or any(k not in records for k in REQUIRED_KEYS):
    have = sorted(records) if isinstance(records, dict) else type(records).__name__
    raise ValueError(f"baseline records are missing or foreign (keys {have}); "
                     "train with --record-baselines")
  return jax.tree.map(jnp.asarray, {k: records[k] for k in REQUIRED_KEYS})


def record_bytes(records: Any) -> int:
  """Bytes the records occupy (what the checkpoint stores)."""
  return int(sum(np.asarray(a).nbytes for a in jax.tree.leaves(records)))
