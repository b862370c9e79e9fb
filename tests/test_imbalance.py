"""Tests for geniu_jax/data/imbalance.py: the imbalanced split (§3, §5, App. F) and class counts."""

from __future__ import annotations

import numpy as np
import pytest

from geniu_jax.data import DataError, class_counts, format_counts, make_imbalanced, parse_imbalance


# --- imbalance ------------------------------------------------------------


def _balanced(per_class=100, k=10):
    y = np.repeat(np.arange(k), per_class)[np.random.default_rng(3).permutation(per_class * k)]
    return np.arange(y.size), y  # x = row ids, so kept x are the kept indices


def test_imbalance_scalar_counts_and_order():
    x, y = _balanced()
    xk, yk = make_imbalanced(x, y, majority=[0, 4], rate=0.1, num_classes=10, seed=0)
    expected = [100, 10, 10, 10, 100, 10, 10, 10, 10, 10]
    np.testing.assert_array_equal(class_counts(yk, 10), expected)
    assert np.all(np.diff(xk) > 0)  # original order kept
    np.testing.assert_array_equal(yk, y[xk])  # images and labels stay paired


def test_imbalance_per_class_counts():
    x, y = _balanced()
    rates = parse_imbalance("0.5,0.2,0.05,1,0.004,0.3,0.33,0.7,0.9,0.125", 10)
    _, yk = make_imbalanced(x, y, majority=[0], rate=rates, num_classes=10, seed=1)
    # Class 0 is majority (its 0.5 is ignored); 0.004*100 rounds to 0 -> at least 1.
    np.testing.assert_array_equal(class_counts(yk, 10), [100, 20, 5, 100, 1, 30, 33, 70, 90, 12])


def test_imbalance_seeds():
    x, y = _balanced()
    a = make_imbalanced(x, y, [2], 0.2, 10, seed=7)[0]
    np.testing.assert_array_equal(a, make_imbalanced(x, y, [2], 0.2, 10, seed=7)[0])
    assert not np.array_equal(a, make_imbalanced(x, y, [2], 0.2, 10, seed=8)[0])
    # Per-class streams: a smaller rate keeps a subset of a larger one.
    assert set(make_imbalanced(x, y, [2], 0.1, 10, seed=7)[0]) <= set(a)


@pytest.mark.parametrize(
    "majority,rate,seed,match",
    [
        ([10], 0.1, 0, "outside"),
        ([-1], 0.1, 0, "outside"),
        ([1, 1], 0.1, 0, "duplicates"),
        (list(range(10)), 0.1, 0, "every class"),
        ([0], 0.0, 0, r"\(0, 1\]"),
        ([0], 1.5, 0, r"\(0, 1\]"),
        ([0], [0.5] * 9, 0, "9 per-class rates for 10"),
        ([0], 0.1, -1, "seed"),
    ],
)
def test_imbalance_validation(majority, rate, seed, match):
    x, y = _balanced(5)
    with pytest.raises(DataError, match=match):
        make_imbalanced(x, y, majority, rate, 10, seed)


def test_imbalance_bad_labels():
    with pytest.raises(DataError, match=r"labels must be in \[0, 3\)"):
        make_imbalanced(np.arange(3), np.array([0, 1, 3]), [0], 0.5, 3, 0)


def test_parse_imbalance():
    assert parse_imbalance("0.1", 10) == 0.1 and parse_imbalance(0.25, 10) == 0.25
    assert parse_imbalance(" 0.5, 1 ", 2) == (0.5, 1.0)
    assert parse_imbalance([0.2, 0.7, 1], 3) == (0.2, 0.7, 1.0)
    for bad, match in [("", "empty"), ("abc", "not a number"), ("nan", r"\(0, 1\]"), ("0.1,", "not a number"),
                       ("0.1,0.2", "2 per-class rates for 3"), (True, "expected a number")]:
        with pytest.raises(DataError, match=match):
            parse_imbalance(bad, 3)


def test_counts_and_format():
    counts = class_counts(np.array([0, 2, 2, 2]), 4)
    np.testing.assert_array_equal(counts, [1, 0, 3, 0])
    assert format_counts(counts) == "class counts: 0:1 1:0 2:3 3:0"
