"""Tests for the `gkt_vae` method (Table 3): per-class noise selection and an end-to-end run."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY_B, TINY_K, TINY_SHAPE, TINY_WIDTH
from geniu_jax.config import get_config
from geniu_jax.methods import gkt as gkt_lib
from geniu_jax.methods import gkt_vae as gkt_vae_lib
from geniu_jax.methods import registry
from geniu_jax.methods.registry import Access, AccessError
from geniu_jax.models import functional as F

FORGET = (TINY_K - 1,)


def test_pick_per_class_prefers_assigned_samples_and_falls_back():
  probs = jnp.array([[0.90, 0.05, 0.05],   # 0: class 0
                     [0.60, 0.32, 0.08],   # 1: class 0
                     [0.20, 0.70, 0.10],   # 2: class 1, the second best for class 2
                     [0.50, 0.45, 0.05],   # 3: class 0, the best unassigned for class 1
                     [0.55, 0.01, 0.44]])  # 4: class 0, the best for class 2 (none assigned)
  idx, assigned = gkt_vae_lib.pick_per_class(probs, 2)
  np.testing.assert_array_equal(assigned, [4, 1, 0])
  # Class-fastest: rank 0 of classes 0, 1, 2, then rank 1 of each.
  np.testing.assert_array_equal(np.asarray(idx).reshape(2, 3), [[0, 2, 4], [1, 3, 2]])
  jitted, _ = jax.jit(gkt_vae_lib.pick_per_class, static_argnums=1)(probs, 2)
  np.testing.assert_array_equal(jitted, idx)


def test_gkt_vae_is_registered_with_artifacts_only(tiny_classifier):
  assert registry.METHODS["gkt_vae"].access == {Access.MODEL, Access.ARTIFACTS}
  cfg = get_config("smoke", lowering="native", width=TINY_WIDTH, proxies_per_class=TINY_B)
  with pytest.raises(AccessError, match="none was provided"):
    registry.run_method("gkt_vae", cfg, jax.random.key(0), classifier=tiny_classifier,
                        forget=FORGET, num_classes=TINY_K, image_shape=TINY_SHAPE)


def test_gkt_vae_end_to_end(tiny_classifier, tiny_generator, tiny_prompts):
  cfg = get_config("smoke", lowering="native", width=TINY_WIDTH, proxies_per_class=TINY_B)
  available = registry.inputs_from(artifacts=(tiny_generator, tiny_prompts))
  model, info = registry.run_method("gkt_vae", cfg, jax.random.key(0),
                                    classifier=tiny_classifier, forget=FORGET,
                                    num_classes=TINY_K, image_shape=TINY_SHAPE, **available)
  assert isinstance(model, F.SplitModel)
  assert jax.tree.structure(model.params) == jax.tree.structure(tiny_classifier.params)
  for got, want in zip(jax.tree.leaves(model.params), jax.tree.leaves(tiny_classifier.params)):
    assert got.shape == want.shape and np.all(np.isfinite(got))
  assert model.stats is tiny_classifier.stats  # in-batch tuning keeps BatchNorm statistics
  smoke = gkt_lib.PRESETS["smoke"]
  samples = gkt_lib.SAMPLE_BATCHES["smoke"] * smoke.batch_size
  assert info["samples"] == samples and sum(info["assigned_per_class"]) == samples
  assert info["classes_without_samples"] == [
      k for k in range(TINY_K) if info["assigned_per_class"][k] == 0]
  assert len(info["noise_own_prob"]) == TINY_K
  assert 0 < info["rounds_run"] <= cfg.unlearn_rounds
  assert info["pseudo_batches"] == smoke.pseudo_batches and "gkt_generator_loss" in info
  assert info["unlearn_ms"] > 0 and info["compile_ms"] >= 0
