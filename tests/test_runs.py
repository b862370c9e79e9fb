"""Data preparation of whole runs: `geniu_jax/runs.py`.

The balanced validation hold-out, the imbalanced training split with that
hold-out as its evaluation split, class-list validation, and rebuilding a
checkpoint's split from its metadata (on the `embedded` data shipped with
the package). Training and saving runs are covered by the CLI tests.
"""

from __future__ import annotations

import numpy as np
import pytest

from geniu_jax import data as data_lib
from geniu_jax import runs


@pytest.fixture(scope="module")
def embedded() -> data_lib.Dataset:
  return data_lib.load("embedded")


def _assert_same_data(a: runs.TrainingData, b: runs.TrainingData):
  for field in ("x_train", "y_train", "x_test", "y_test", "counts"):
    np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
  assert (a.num_classes, a.source, a.majority, a.held_out) == (
      b.num_classes, b.source, b.majority, b.held_out)


def test_holdout_balanced_takes_per_class_of_each_class_and_the_rest_is_disjoint():
  y = np.repeat(np.arange(3), [5, 6, 7]).astype(np.int32)
  x = (1000 * y + np.arange(len(y)))[:, None]    # each row names its index and label
  x_rest, y_rest, x_val, y_val = runs.holdout_balanced(x, y, 2, seed=0)
  np.testing.assert_array_equal(np.bincount(y_val), [2, 2, 2])
  np.testing.assert_array_equal(np.bincount(y_rest), [3, 4, 5])
  np.testing.assert_array_equal(x_val[:, 0] // 1000, y_val)    # rows keep their labels
  np.testing.assert_array_equal(x_rest[:, 0] // 1000, y_rest)
  val, rest = x_val[:, 0] % 1000, x_rest[:, 0] % 1000
  assert not set(val) & set(rest)
  np.testing.assert_array_equal(np.sort(np.concatenate([val, rest])), np.arange(len(y)))
  assert np.all(np.diff(val) > 0) and np.all(np.diff(rest) > 0)   # original order kept
  again = runs.holdout_balanced(x, y, 2, seed=0)
  np.testing.assert_array_equal(again[2], x_val)


def test_prepare_data_with_validation_per_class_evaluates_on_the_held_out_split(embedded):
  per_class, seed = 5, 0
  data = runs.prepare_data(embedded, [9], 0.1, seed, validation_per_class=per_class, log=None)
  assert data.held_out
  _, _, x_val, y_val = runs.holdout_balanced(embedded.x_train, embedded.y_train, per_class,
                                             seed)
  np.testing.assert_array_equal(data.x_test, x_val)
  np.testing.assert_array_equal(data.y_test, y_val)
  np.testing.assert_array_equal(data.counts, np.bincount(data.y_train, minlength=10))
  # Class 9 keeps everything not held out; the others keep round(0.1 * n).
  left = np.bincount(embedded.y_train, minlength=10) - per_class
  assert data.counts[9] == left[9]
  np.testing.assert_array_equal(data.counts[:9], [max(1, round(0.1 * n)) for n in left[:9]])
  # The training split never contains a held-out image.
  train_rows = {row.tobytes() for row in data.x_train}
  assert not any(row.tobytes() in train_rows for row in x_val)

  plain = runs.prepare_data(embedded, [9], 0.1, seed, log=None)
  assert not plain.held_out
  np.testing.assert_array_equal(plain.x_test, embedded.x_test)
  np.testing.assert_array_equal(plain.y_test, embedded.y_test)


@pytest.mark.parametrize("classes,match", [
    ([10], r"outside \[0, 10\)"),
    ([-1, 2], r"outside \[0, 10\)"),
    ([1, 1], "duplicates"),
    (list(range(10)), "every one of the 10 classes"),
    ([], "no majority classes"),
])
def test_check_classes_rejects(classes, match):
  with pytest.raises(data_lib.DataError, match=match):
    runs.check_classes(classes, 10, "majority")


def test_check_classes_returns_plain_ints():
  got = runs.check_classes(np.array([3, 0], np.int64), 10, "forget")
  assert got == (3, 0) and all(type(k) is int for k in got)


@pytest.mark.parametrize("where", ["top", "grid_cell", "none"])
def test_training_data_of_rebuilds_the_split_from_metadata(embedded, where):
  meta = {"data_source": "embedded", "majority": [2, 7], "imbalance": 0.2, "seed": 3}
  if where == "top":
    meta["validation_per_class"] = 4
  elif where == "grid_cell":
    meta["grid_cell"] = {"validation_per_class": 4, "lr": 0.01}
  rebuilt = runs.training_data_of(meta)
  want = runs.prepare_data(embedded, [2, 7], 0.2, 3,
                           validation_per_class=0 if where == "none" else 4, log=None)
  assert rebuilt.held_out == (where != "none")
  _assert_same_data(rebuilt, want)
