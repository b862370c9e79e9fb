"""Acc_r, Acc_f and per-class accuracy on a test split, as sums from jitted code.

The jitted evaluator returns per-class (correct, count) sums over fixed-size
chunks (one compile for any dataset size); ratios are taken on the host, so
results from several chunks, devices or hosts add up exactly.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from geniu_jax.models import functional as F


def _per_class_sums(graphdef, params, stats, x, y, num_classes: int):
  logits = F.classifier_logits(graphdef, params, stats, x)
  hit = (jnp.argmax(logits, -1) == y).astype(jnp.int32)
  onehot = jax.nn.one_hot(y, num_classes, dtype=jnp.int32)  # label -1 (padding) -> zeros
  return hit @ onehot, onehot.sum(0)


_per_class_sums_jit = jax.jit(_per_class_sums, static_argnums=(0, 5))


def map_chunks(fn, model: F.SplitModel, x: np.ndarray, chunk: int = 1000) -> np.ndarray:
  """`fn(graphdef, params, stats, x_chunk)` over x in fixed-size chunks, concatenated.

  The last chunk is zero-padded to `chunk` rows and the padding cut off, so a
  jitted `fn` compiles once for every dataset size (an empty x included).
  """
  out = []
  for start in range(0, max(len(x), 1), chunk):
    xb = x[start:start + chunk]
    pad = chunk - len(xb)
    if pad:
      xb = np.concatenate([xb, np.zeros((pad, *xb.shape[1:]), xb.dtype)])
    out.append(np.asarray(fn(model.graphdef, model.params, model.stats, xb))[:chunk - pad])
  return np.concatenate(out)


def per_class_counts(classifier: F.SplitModel, x: np.ndarray, y: np.ndarray,
                     num_classes: int, chunk: int = 1000) -> tuple[np.ndarray, np.ndarray]:
  """(correct[K], count[K]) of the classifier (eval mode) on (x, y)."""
  correct = np.zeros(num_classes, np.int64)
  count = np.zeros(num_classes, np.int64)
  chunk = min(chunk, len(x))
  for start in range(0, len(x), chunk):
    xb, yb = x[start:start + chunk], y[start:start + chunk]
    pad = chunk - len(xb)
    if pad:
      xb = np.concatenate([xb, np.zeros((pad, *xb.shape[1:]), xb.dtype)])
      yb = np.concatenate([yb, -np.ones(pad, yb.dtype)])
    c, n = _per_class_sums_jit(classifier.graphdef, classifier.params, classifier.stats,
                               jnp.asarray(xb), jnp.asarray(yb), num_classes)
    correct += np.asarray(c)
    count += np.asarray(n)
  return correct, count


def unlearning_accuracies(correct: np.ndarray, count: np.ndarray,
                          forget: Sequence[int]) -> dict:
  """{"acc_r", "acc_f", "per_class"} from per-class sums (Acc over samples, not classes).

  An accuracy over no samples is None, never 0 (an Acc_f of 0 would read as
  perfect forgetting), and `missing` names the classes without samples.
  """
  forget_mask = np.zeros(len(count), bool)
  forget_mask[list(forget)] = True

  def ratio(mask):
    n = count[mask].sum()
    return float(correct[mask].sum() / n) if n else None

  per_class = [float(c / n) if n else None for c, n in zip(correct, count)]
  out = {"acc_r": ratio(~forget_mask), "acc_f": ratio(forget_mask), "per_class": per_class}
  missing = [k for k, n in enumerate(count) if not n]
  if missing:
    out["missing"] = missing
  return out


def evaluate(classifier: F.SplitModel, x: np.ndarray, y: np.ndarray, num_classes: int,
             forget: Sequence[int]) -> dict:
  """Acc_r (retained classes), Acc_f (forgotten classes) and per-class accuracy."""
  return unlearning_accuracies(*per_class_counts(classifier, x, y, num_classes), forget)
