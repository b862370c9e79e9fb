"""Acc_r, Acc_f and per-class accuracy: `geniu_jax/metrics.py`.

Fixed-size chunking (pad, cut, one compile for every size), per-class sums on
labels built from the classifier's own predictions (so the answer is known),
and the accuracies from those sums, None where a set has no samples.
"""

from __future__ import annotations

import chex
import jax
import numpy as np
import pytest

from geniu_jax import metrics
from geniu_jax.models import functional as F

from conftest import TINY_K, TINY_SHAPE, normal

_logits = jax.jit(F.classifier_logits, static_argnums=0)
_NO_MODEL = F.SplitModel(None, None, None)


def test_map_chunks_pads_the_last_chunk_with_zeros_and_cuts_it_off():
  seen = []

  def fn(graphdef, params, stats, xb):
    seen.append(np.array(xb))
    return 2 * xb[:, 0]

  x = np.arange(1, 8, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)   # 7 rows
  out = metrics.map_chunks(fn, _NO_MODEL, x, chunk=3)
  np.testing.assert_array_equal(out, 2 * np.arange(1, 8))
  assert [s.shape for s in seen] == [(3, 2)] * 3
  np.testing.assert_array_equal(seen[2], [[7, 7], [0, 0], [0, 0]])   # 1 row + 2 zero rows
  # An empty input still calls fn once, on a chunk of zeros, and returns no rows.
  seen.clear()
  out = metrics.map_chunks(fn, _NO_MODEL, x[:0], chunk=3)
  assert out.shape == (0,)
  assert len(seen) == 1 and seen[0].shape == (3, 2) and not seen[0].any()


def test_map_chunks_compiles_once_for_every_dataset_size():
  chex.clear_trace_counter()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def fn(graphdef, params, stats, xb):
    return xb.sum(axis=(1, 2))

  for n in (1, 4, 5, 11, 0):
    x = normal(n, (n, 3, 2))
    out = metrics.map_chunks(fn, _NO_MODEL, np.asarray(x), chunk=4)
    np.testing.assert_allclose(out, np.asarray(x).sum(axis=(1, 2)), rtol=1e-6)
  assert fn._cache_size() == 1


def _hand_labels(cls, n: int):
  """(x, y, hit): labels equal to the classifier's own prediction where `hit`,
  the next class elsewhere, so which samples are correct is known."""
  x = normal(8, (n, *TINY_SHAPE))
  preds = np.argmax(np.asarray(_logits(cls.graphdef, cls.params, cls.stats, x)), -1)
  hit = np.arange(n) % 3 != 0
  y = np.where(hit, preds, (preds + 1) % TINY_K).astype(np.int32)
  return np.asarray(x), y, hit


@pytest.mark.parametrize("chunk", [1000, 4])
def test_per_class_counts_on_known_predictions(tiny_classifier, chunk):
  x, y, hit = _hand_labels(tiny_classifier, 11)
  correct, count = metrics.per_class_counts(tiny_classifier, x, y, TINY_K, chunk=chunk)
  np.testing.assert_array_equal(count, np.bincount(y, minlength=TINY_K))
  np.testing.assert_array_equal(correct, np.bincount(y[hit], minlength=TINY_K))
  assert count.sum() == 11    # the padding (label -1) counts nowhere


def test_unlearning_accuracies_by_hand():
  correct, count = np.array([3, 0, 2, 0]), np.array([4, 2, 2, 0])
  acc = metrics.unlearning_accuracies(correct, count, [1])
  assert acc["acc_r"] == pytest.approx(5 / 6)     # (3 + 0 + 2) / (4 + 2)
  assert acc["acc_f"] == 0.0
  assert acc["per_class"] == [0.75, 0.0, 1.0, None]
  assert acc["missing"] == [3]
  # A forgotten class without samples: Acc_f is undefined, not 0.
  acc = metrics.unlearning_accuracies(correct, count, [3])
  assert acc["acc_f"] is None and acc["acc_r"] == pytest.approx(5 / 8)
  acc = metrics.unlearning_accuracies(np.array([1, 2]), np.array([2, 4]), [0])
  assert acc == {"acc_r": 0.5, "acc_f": 0.5, "per_class": [0.5, 0.5]}   # no "missing"


def test_evaluate_on_known_predictions(tiny_classifier):
  x, y, hit = _hand_labels(tiny_classifier, 11)
  forget = [int(y[0])]
  got = metrics.evaluate(tiny_classifier, x, y, TINY_K, forget)
  gone = np.isin(y, forget)
  assert got["acc_f"] == pytest.approx(hit[gone].mean())
  assert got["acc_r"] == pytest.approx(hit[~gone].mean())
  for k in range(TINY_K):
    if np.any(y == k):
      assert got["per_class"][k] == pytest.approx(hit[y == k].mean())
    else:
      assert got["per_class"][k] is None and k in got["missing"]
