"""Tests for geniu_jax.geniu.sharpen: sharpened forgotten proxies."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY_K, TINY_SHAPE, normal

from geniu_jax.config import get_config
from geniu_jax.geniu import sharpen as sharpen_lib
from geniu_jax.models import functional as F


def _prob(classifier, x, labels):
  p = jax.nn.softmax(F.classifier_logits(classifier.graphdef, classifier.params,
                                         classifier.stats, x))
  return np.asarray(jnp.take_along_axis(p, labels[:, None], axis=1)[:, 0])


@pytest.mark.parametrize("jit", [False, True])
def test_sharpen_raises_the_probability_until_the_target(tiny_classifier, jit):
  c = tiny_classifier
  x = jnp.clip(normal(3, (6, *TINY_SHAPE), 0.2) + 0.5, 0.0, 1.0)
  labels = jnp.arange(6, dtype=jnp.int32) % TINY_K
  before = _prob(c, x, labels)
  target = float(np.median(before))  # half the images start at or above it

  def run(x):
    return sharpen_lib.sharpen(c.graphdef, c.params, c.stats, x, labels, target=target,
                               step=0.02, steps=40)

  out = jax.jit(run)(x) if jit else run(x)
  after = _prob(c, out, labels)
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
  moving = before < target
  assert moving.any() and np.all(after[moving] > before[moving])
  # An image already at the target is left exactly as it was.
  done = before >= target
  np.testing.assert_array_equal(np.asarray(out)[done], np.asarray(x)[done])


def test_sharpen_jit_equals_eager(tiny_classifier):
  c = tiny_classifier
  x = jnp.clip(normal(4, (4, *TINY_SHAPE), 0.2) + 0.5, 0.0, 1.0)
  labels = jnp.asarray([0, 1, 2, 3], jnp.int32)
  kw = dict(target=0.99, step=0.01, steps=5)
  eager = sharpen_lib.sharpen(c.graphdef, c.params, c.stats, x, labels, **kw)
  jitted = jax.jit(lambda x: sharpen_lib.sharpen(c.graphdef, c.params, c.stats, x, labels,
                                                 **kw))(x)
  np.testing.assert_allclose(np.asarray(eager), np.asarray(jitted), atol=1e-6)


def test_with_sharpened_appends_a_copy_of_each_forgotten_proxy(tiny_classifier):
  c = tiny_classifier
  per_class = 2
  proxies = jnp.clip(normal(5, (TINY_K * per_class, *TINY_SHAPE), 0.2) + 0.5, 0.0, 1.0)
  labels = jnp.tile(jnp.arange(TINY_K, dtype=jnp.int32), per_class)
  forget_mask = labels == 1
  out, out_labels = sharpen_lib.with_sharpened(
      c.graphdef, c.params, c.stats, proxies, labels, forget_mask, target=0.9, step=0.01,
      steps=3, num_forget=per_class)
  assert out.shape == (TINY_K * per_class + per_class, *TINY_SHAPE)
  np.testing.assert_array_equal(np.asarray(out[: len(labels)]), np.asarray(proxies))
  assert np.asarray(out_labels).tolist() == np.asarray(labels).tolist() + [1, 1]


def test_settings_from_config_and_validation():
  assert sharpen_lib.settings_from_config(get_config("paper")) is None
  cfg = get_config("paper", sharpen_target=0.9)
  assert sharpen_lib.settings_from_config(cfg) == (0.9, 0.01, 30)
  for bad in (0.0, 1.0, 1.5, float("nan"), True, "0.9"):
    with pytest.raises(ValueError, match="sharpen_target"):
      get_config("paper", sharpen_target=bad)
