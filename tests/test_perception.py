"""Tests for geniu_jax.perception: Table 2's D_KL(p_obs || p_ref) and each method's noise."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import (TINY_B, TINY_K, TINY_SHAPE, TINY_WIDTH, normal, replace_leaf)
from geniu_jax import perception as P
from geniu_jax.config import get_config
from geniu_jax.methods import gkt as gkt_lib
from geniu_jax.methods import unsir as unsir_lib

MAJORITY = TINY_K - 1


def test_kl_divergence_zero_positive_and_finite():
  p = jnp.array([0.7, 0.2, 0.1, 0.0])
  q = jnp.array([0.1, 0.1, 0.1, 0.7])
  assert float(P.kl_divergence(p, p)) == 0.0
  assert float(P.kl_divergence(p, q)) > 0.0 and float(P.kl_divergence(q, p)) > 0.0
  # p_ref exactly 0 where p_obs has mass: capped by the floor, not inf.
  one_hot = jnp.array([0.0, 0.0, 0.0, 1.0])
  kl = float(P.kl_divergence(one_hot, p))
  assert np.isfinite(kl)
  np.testing.assert_allclose(kl, -np.log(P.PROB_FLOOR), rtol=1e-6)
  np.testing.assert_allclose(float(jax.jit(P.kl_divergence)(p, q)),
                             float(P.kl_divergence(p, q)), rtol=1e-6)


@pytest.fixture(scope="module")
def sharp(tiny_classifier):
  """The tiny classifier with a scaled head: confident, with exact zero probabilities,
  and inputs split by its argmax into majority-like and other-class sets."""
  head = np.asarray(tiny_classifier.params["head"]["kernel"][...])
  model = tiny_classifier._replace(
      params=replace_leaf(tiny_classifier.params, "['head']['kernel']", head * 300))
  x = normal(5, (512, *TINY_SHAPE), 2.0)
  pred = np.argmax(np.asarray(P.probabilities(model, x)), -1)
  top = np.bincount(pred).argmax()
  mine, others = np.asarray(x)[pred == top], np.asarray(x)[pred != top]
  assert len(mine) > 64 and len(others) > 8
  return model, mine[:64], mine[64:], others


def test_perception_kl_orders_noise_by_majority_features(sharp):
  model, reference, majority_like, other = sharp
  probs = np.asarray(P.probabilities(model, jnp.asarray(reference)))
  assert (probs == 0).any()  # the floor is exercised
  same = float(P.perception_kl(model, reference, reference))
  near = float(P.perception_kl(model, majority_like, reference))
  far = float(P.perception_kl(model, other, reference))
  assert same == 0.0
  assert 0.0 < near < far and np.isfinite(far)
  np.testing.assert_allclose(P.perception(model, reference), probs.mean(0), rtol=1e-6)


def test_perception_kl_jit_and_chunking_match(sharp):
  model, reference, _, other = sharp
  eager = float(P.perception_kl(model, other, reference))
  jitted = float(jax.jit(P.perception_kl, static_argnames="batch_size")(model, other, reference))
  chunked = float(jax.jit(P.perception_kl, static_argnames="batch_size")(
      model, other, reference, batch_size=16))
  np.testing.assert_allclose(jitted, eager, rtol=1e-5)
  np.testing.assert_allclose(chunked, eager, rtol=1e-5)


def test_table2_noise_of_every_method(tiny_classifier, tiny_generator, tiny_prompts):
  cfg = get_config("smoke", lowering="native", width=TINY_WIDTH, proxies_per_class=TINY_B)
  gkt = dataclasses.replace(gkt_lib.PRESETS["smoke"], pseudo_batches=2, batch_size=16,
                            student_steps=2)
  unsir = dataclasses.replace(unsir_lib.PRESETS["smoke"], noise_batch=4, noise_steps=2)
  forget = (MAJORITY,)
  noises = P.table2_noise(tiny_classifier, forget, cfg, key=jax.random.key(0),
                          image_shape=TINY_SHAPE, artifacts=(tiny_generator, tiny_prompts),
                          gkt_settings=gkt, unsir_settings=unsir, sample_batches=2)
  assert set(noises) == set(P.TABLE2_METHODS)
  geniu = noises["geniu"]
  assert geniu.x.shape == ((TINY_K - 1) * TINY_B, *TINY_SHAPE) and geniu.of == "retained"
  assert MAJORITY not in geniu.classes
  g = noises["gkt"]
  assert g.info["samples"] == 2 * 16 and len(g.x) == g.info["retained_samples"]
  assert g.of == "retained" and MAJORITY not in g.classes
  u = noises["unsir"]
  assert u.of == "forgotten" and u.x.shape == (4, *TINY_SHAPE)
  np.testing.assert_array_equal(u.classes, MAJORITY)

  reference = normal(9, (20, *TINY_SHAPE))
  rows = P.table2(tiny_classifier, reference, noises, batch_size=8)
  for name in ("geniu", "unsir"):
    assert np.isfinite(rows[name]["kl"]) and rows[name]["kl"] >= 0.0
  assert rows["gkt"]["samples"] == len(g.x)
  assert set(rows["geniu"]["kl_per_class"]) == set(range(TINY_K - 1))
  with pytest.raises(ValueError, match="no Table 2 noise"):
    P.table2_noise(tiny_classifier, forget, cfg, key=jax.random.key(0), image_shape=TINY_SHAPE,
                   methods=("ir",))
