"""Tests for geniu_jax.forget_requests and the metrics of classes without samples."""

from __future__ import annotations

import numpy as np
import pytest

from geniu_jax import forget_requests as fr
from geniu_jax import metrics


def test_a_trained_original_has_forgotten_nothing():
  assert fr.forgotten({"num_classes": 10}) == []
  assert fr.plan({}, [3, 1]) == [1, 3]


def test_plan_is_the_union_with_earlier_requests():
  meta = fr.record({}, [9], [9], {"method": "geniu"})
  assert fr.forgotten(meta) == [9]
  assert fr.plan(meta, [0]) == [0, 9]
  assert fr.plan(meta, [0, 9]) == [0, 9]
  with pytest.raises(fr.NothingToForget, match="already forgotten"):
    fr.plan(meta, [9])


def test_record_keeps_the_history_oldest_first():
  meta = fr.record({"format": "x"}, [9], [9], {"r": 1})
  meta = fr.record(meta, [0], [0, 9], {"r": 2})
  assert meta["forgotten"] == [0, 9] and meta["unlearned"] == {"r": 2}
  assert [r["requested"] for r in meta["requests"]] == [[9], [0]]
  assert [r["report"] for r in meta["requests"]] == [{"r": 1}, {"r": 2}]
  assert all(r["finished"] for r in meta["requests"]) and meta["format"] == "x"


def test_checkpoints_that_kept_only_the_last_request():
  old = {"unlearned": {"method": "geniu", "forget": [4]}}
  assert fr.forgotten(old) == [4]
  meta = fr.record(old, [2], fr.plan(old, [2]), {"method": "geniu", "forget": [2, 4]})
  assert meta["forgotten"] == [2, 4]
  assert [r["forget"] for r in meta["requests"]] == [[4], [2, 4]]
  assert meta["requests"][0]["finished"] is None   # its time was never recorded


def test_accuracies_over_no_samples_are_none_not_zero():
  correct = np.array([5, 0, 3])
  count = np.array([10, 0, 3])
  out = metrics.unlearning_accuracies(correct, count, [1])
  assert out["acc_f"] is None and out["missing"] == [1]
  assert out["per_class"] == [0.5, None, 1.0]
  assert out["acc_r"] == pytest.approx(8 / 13)
  full = metrics.unlearning_accuracies(correct, np.array([10, 2, 3]), [1])
  assert full["acc_f"] == 0.0 and "missing" not in full
