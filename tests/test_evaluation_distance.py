"""Output distances to a reference model (`geniu_jax.evaluation.distance`) on hand-made cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from geniu_jax.evaluation import distance


def random_probs(seed, shape) -> np.ndarray:
  logits = np.random.default_rng(seed).standard_normal(shape)
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_identical_outputs_are_exactly_zero_apart():
  p = random_probs(0, (7, 5)).astype(np.float32)
  p[0] = [1, 0, 0, 0, 0]  # exact zeros, as a saturated float32 softmax gives
  assert distance.js_divergence(p, p.copy()) == 0.0
  assert distance.activation_distance(p, p.copy()) == 0.0


def test_disjoint_one_hot_outputs_are_ln2_and_sqrt2_apart():
  p = np.eye(3)[[0, 1, 2, 0]]
  q = np.eye(3)[[1, 2, 0, 2]]
  assert distance.js_divergence(p, q) == pytest.approx(math.log(2), rel=1e-12)
  assert distance.activation_distance(p, q) == pytest.approx(math.sqrt(2), rel=1e-12)


def test_both_are_symmetric_and_average_over_samples():
  p, q = random_probs(1, (6, 4)), random_probs(2, (6, 4))
  assert distance.js_divergence(p, q) == pytest.approx(distance.js_divergence(q, p), rel=1e-12)
  assert distance.activation_distance(p, q) == pytest.approx(
      distance.activation_distance(q, p), rel=1e-12)
  per_sample = distance.js_divergence_per_sample(p, q)
  assert per_sample.shape == (6,)
  assert np.all((per_sample > 0) & (per_sample < math.log(2)))
  assert distance.js_divergence(p, q) == pytest.approx(per_sample.mean(), rel=1e-12)


def test_js_matches_a_hand_computed_value():
  p = np.array([[0.5, 0.5]])
  q = np.array([[1.0, 0.0]])
  # m = (0.75, 0.25): JS = 0.5 KL(p||m) + 0.5 KL(q||m).
  kl_p = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
  kl_q = math.log(1.0 / 0.75)
  assert distance.js_divergence(p, q) == pytest.approx(0.5 * kl_p + 0.5 * kl_q, rel=1e-12)
  assert distance.activation_distance(p, q) == pytest.approx(math.sqrt(0.5), rel=1e-12)


def test_mismatched_shapes_are_refused():
  with pytest.raises(ValueError):
    distance.js_divergence(np.ones((2, 3)) / 3, np.ones((3, 3)) / 3)
  with pytest.raises(ValueError):
    distance.activation_distance(np.ones(3) / 3, np.ones(3) / 3)
