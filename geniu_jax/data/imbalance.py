"""Imbalanced training sets as in GENIU (paper §3, §5 and App. F).

A few *majority* classes keep all of their samples; every other class k keeps
only a fraction of its samples: one rate for all of them (e.g. 0.1), or a
rate per class (the paper's 'vary' setting, where rate[k] is ignored for the
majority classes). The kept samples are drawn with a seeded permutation, so
a (seed, rates) pair always gives the same subset.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np

from geniu_jax.data.sources import DataError

__all__ = ["parse_imbalance", "make_imbalanced", "class_counts", "format_counts"]


def _rate(value, what: str) -> float:
    """One rate: a real number in (0, 1]."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise DataError(f"{what}: {value!r} is not a number") from None
    # bool is an int subclass; True as "rate 1" is almost surely a mistake.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise DataError(f"{what}: expected a number, got {type(value).__name__}")
    value = float(value)
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise DataError(f"{what}: rate must be in (0, 1], got {value:g}")
    return value


def parse_imbalance(spec: str | float | Sequence[float], num_classes: int) -> float | tuple[float, ...]:
    """Parses an imbalance rate given on the command line or in a config.

    Args:
        spec: One rate (``0.1`` or ``"0.1"``) applied to every non-majority
            class, or K rates (``"0.2,0.7,..."`` or a sequence), one per class.
            Every rate must be in (0, 1].
        num_classes: K, the length a per-class spec must have.

    Returns:
        A float for a single rate, a tuple of K floats for per-class rates.

    Raises:
        DataError: Empty spec, non-numbers, rates outside (0, 1], or a
            per-class spec whose length is not K.
    """
    if isinstance(spec, str):
        parts = spec.split(",")
        if not spec.strip():
            raise DataError("imbalance: empty rate spec")
        if len(parts) == 1:
            return _rate(parts[0], "imbalance")
        spec = parts
    elif not isinstance(spec, Sequence) and not isinstance(spec, np.ndarray):
        return _rate(spec, "imbalance")
    rates = tuple(_rate(r, f"imbalance rate for class {k}") for k, r in enumerate(spec))
    if len(rates) != num_classes:
        raise DataError(f"imbalance: got {len(rates)} per-class rates for {num_classes} classes")
    return rates


def _labels(y, num_classes: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"labels must be 1-D integers, got {y.dtype} with shape {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(f"labels must be in [0, {num_classes}), got [{y.min()}, {y.max()}]")
    return y


def class_counts(y, num_classes: int) -> np.ndarray:
    """Number of samples per class.

    Args:
        y: Integer labels [N] in [0, num_classes).
        num_classes: K.

    Returns:
        int64 array [K]; classes without samples count 0.
    """
    return np.bincount(_labels(y, num_classes), minlength=num_classes).astype(np.int64)


def format_counts(counts) -> str:
    """One log line such as ``class counts: 0:600 1:600 ... 9:6000``."""
    return "class counts: " + " ".join(f"{k}:{int(c)}" for k, c in enumerate(np.asarray(counts)))


def make_imbalanced(
    x: np.ndarray,
    y: np.ndarray,
    majority: Sequence[int],
    rate: float | Sequence[float],
    num_classes: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Subsamples a balanced training set into an imbalanced one.

    Majority classes keep all their samples. Every other class k with n_k
    samples keeps ``max(1, round(r_k * n_k))`` of them (Python's round, half to
    even), where r_k is `rate` or `rate[k]`. The kept samples of class k are
    the first ones of a permutation drawn from ``default_rng((seed, k))``: a
    class's subset does not depend on the other classes' rates, and a smaller
    rate gives a subset of a larger one for the same seed.

    Args:
        x: Samples [N, ...] (images); only indexed.
        y: Integer labels [N] in [0, num_classes).
        majority: Classes that keep everything; distinct, in [0, K), not all
            K classes. May be empty (then every class is subsampled).
        rate: One rate in (0, 1] or K per-class rates (see `parse_imbalance`;
            a string spec is accepted too).
        num_classes: K.
        seed: Non-negative integer seed.

    Returns:
        (x_kept, y_kept), rows in their original order so the result is
        reproducible and independent of class iteration order.

    Raises:
        DataError: On invalid majority classes, rates, labels or seed.
    """
    y = _labels(y, num_classes)
    if len(x) != len(y):
        raise DataError(f"{len(x)} samples but {len(y)} labels")
    majority = list(majority)
    if any(isinstance(c, bool) or not isinstance(c, numbers.Integral) for c in majority):
        raise DataError(f"majority classes must be integers, got {majority}")
    majority = [int(c) for c in majority]
    bad = [c for c in majority if not 0 <= c < num_classes]
    if bad:
        raise DataError(f"majority classes {bad} are outside [0, {num_classes})")
    if len(set(majority)) != len(majority):
        raise DataError(f"majority classes contain duplicates: {majority}")
    if len(majority) >= num_classes:
        raise DataError("majority cannot be every class: nothing would be imbalanced")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}")
    rates = parse_imbalance(rate, num_classes)
    if isinstance(rates, float):
        rates = (rates,) * num_classes

    keep = []
    for k in range(num_classes):
        rows = np.flatnonzero(y == k)
        if k in majority or rows.size == 0:
            keep.append(rows)
            continue
        n_keep = max(1, round(rates[k] * rows.size))
        # A per-class generator keeps each class's draw independent of the rest.
        perm = np.random.default_rng((int(seed), k)).permutation(rows.size)
        keep.append(rows[perm[:n_keep]])
    keep = np.sort(np.concatenate(keep))
    return x[keep], y[keep]
