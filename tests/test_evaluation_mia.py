"""Membership-inference attacks (`geniu_jax.evaluation.mia`) on hand-made features.

Members (retained training samples) are made to look memorised: true-class
probability near 1, output entropy near 0. Non-members (test samples) are
spread over lower confidences / higher entropies. Forgotten samples that
look like members must be judged members, ones that look like test samples
non-members.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from geniu_jax.evaluation import mia


def uniform(seed, low, high, n=200) -> np.ndarray:
  return np.random.default_rng(seed).uniform(low, high, n)


def test_true_class_probs_picks_each_samples_label():
  probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.25, 0.5, 0.25]], np.float32)
  got = mia.true_class_probs(probs, np.array([0, 2, 1]))
  assert got.dtype == np.float64
  np.testing.assert_allclose(got, [0.7, 0.6, 0.5], rtol=1e-6)


def test_entropy_is_ln_k_for_uniform_and_zero_for_one_hot():
  probs = np.array([[0.25] * 4, [0.0, 1.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]], np.float32)
  got = mia.entropy(probs)
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got, [math.log(4), 0.0, math.log(2)], rtol=1e-7, atol=0)


# Members confident, non-members spread lower.
MEMBER_CONF = uniform(0, 0.9, 1.0)
TEST_CONF = uniform(1, 0.0, 0.7)


def test_confidence_mia_judges_member_like_forgotten_samples_members():
  still_memorised = uniform(2, 0.95, 1.0, 50)
  efficacy = mia.confidence_mia(MEMBER_CONF, TEST_CONF, still_memorised, seed=0)
  assert efficacy <= 0.05


def test_confidence_mia_judges_test_like_forgotten_samples_non_members():
  forgotten = uniform(3, 0.05, 0.5, 50)
  efficacy = mia.confidence_mia(MEMBER_CONF, TEST_CONF, forgotten, seed=0)
  assert efficacy >= 0.95


def test_confidence_mia_is_a_fraction_of_the_forgotten_samples():
  half_and_half = np.concatenate([uniform(4, 0.95, 1.0, 10), uniform(5, 0.05, 0.5, 10)])
  assert mia.confidence_mia(MEMBER_CONF, TEST_CONF, half_and_half, seed=0) == pytest.approx(0.5)


# Members sure of their answer (low entropy), non-members unsure.
MEMBER_ENTROPY = uniform(6, 0.0, 0.2)
TEST_ENTROPY = uniform(7, 0.6, 2.0)


def test_entropy_mia_judges_member_like_forgotten_samples_members():
  still_memorised = uniform(8, 0.0, 0.1, 50)
  assert mia.entropy_mia(MEMBER_ENTROPY, TEST_ENTROPY, still_memorised, seed=0) >= 0.95


def test_entropy_mia_judges_test_like_forgotten_samples_non_members():
  forgotten = uniform(9, 1.0, 2.0, 50)
  assert mia.entropy_mia(MEMBER_ENTROPY, TEST_ENTROPY, forgotten, seed=0) <= 0.05


def test_attacks_are_deterministic_given_the_seed():
  # Overlapping classes and more members than non-members: the result
  # depends on which members the subsampling keeps.
  members, non_members = uniform(10, 0.3, 1.0, 300), uniform(11, 0.0, 0.8, 60)
  forgotten = uniform(12, 0.0, 1.0, 80)
  for attack in (mia.confidence_mia, mia.entropy_mia):
    first = attack(members, non_members, forgotten, seed=3)
    assert attack(members, non_members, forgotten, seed=3) == first
  by_seed = {mia.confidence_mia(members, non_members, forgotten, seed=s) for s in range(6)}
  assert len(by_seed) > 1, "the seed should choose the balanced subsample"


def test_many_more_members_do_not_bias_the_attacker_towards_member():
  # Indistinguishable features: an attacker fit on 10 members per non-member
  # without balancing calls (nearly) everything a member.
  members, non_members = uniform(13, 0.0, 1.0, 1000), uniform(14, 0.0, 1.0, 100)
  forgotten = uniform(15, 0.0, 1.0, 200)
  assert 0.1 <= mia.confidence_mia(members, non_members, forgotten, seed=0) <= 0.9
  assert 0.1 <= mia.entropy_mia(members, non_members, forgotten, seed=0) <= 0.9


def test_bad_inputs_are_refused():
  with pytest.raises(ValueError):
    mia.confidence_mia(MEMBER_CONF, TEST_CONF, np.array([]), seed=0)
  with pytest.raises(ValueError):
    mia.entropy_mia(MEMBER_ENTROPY[:, None], TEST_ENTROPY, MEMBER_ENTROPY, seed=0)
  with pytest.raises(ValueError):
    mia.entropy_mia(MEMBER_ENTROPY, np.array([0.5, np.nan]), MEMBER_ENTROPY, seed=0)
