"""Tests for geniu_jax.geniu.sharpen: sharpened proxies in the tuning batch."""

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


def test_sharpen_stops_early_with_the_images_of_every_step(tiny_classifier):
  """The loop ends at the first step that moves nothing: the result is that of
  running all `steps` steps (a fixed-length scan of the same step)."""
  c = tiny_classifier
  x = jnp.clip(normal(6, (6, *TINY_SHAPE), 0.2) + 0.5, 0.0, 1.0)
  labels = jnp.arange(6, dtype=jnp.int32) % TINY_K
  step, steps = 0.05, 200
  # A target every image reaches (a random tiny model saturates early): just
  # below the least probability that many steps toward an unreachable one give.
  reach = _prob(c, sharpen_lib.sharpen(c.graphdef, c.params, c.stats, x, labels, target=1.0,
                                       step=step, steps=steps), labels)
  target = 0.999 * float(reach.min())
  assert (_prob(c, x, labels) < target).any()

  def log_prob(x):
    logp = jax.nn.log_softmax(F.classifier_logits(c.graphdef, c.params, c.stats, x))
    return jnp.take_along_axis(logp, labels[:, None], axis=1)[:, 0]

  @jax.jit
  def every_step(x):
    def body(x, _):
      logp, vjp = jax.vjp(log_prob, x)
      (grad,) = vjp(jnp.ones_like(logp))
      moving = (jnp.exp(logp) < target)[:, None, None, None]
      return jnp.where(moving, jnp.clip(x + step * jnp.sign(grad), 0.0, 1.0), x), moving.any()
    return jax.lax.scan(body, x, None, length=steps)

  want, moved = every_step(x)
  assert not bool(moved[-1])  # the target is reached well before the last step
  got = jax.jit(lambda x: sharpen_lib.sharpen(c.graphdef, c.params, c.stats, x, labels,
                                              target=target, step=step, steps=steps))(x)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def _batch(per_class=2, seed=5):
  proxies = jnp.clip(normal(seed, (TINY_K * per_class, *TINY_SHAPE), 0.2) + 0.5, 0.0, 1.0)
  return proxies, jnp.tile(jnp.arange(TINY_K, dtype=jnp.int32), per_class)


def test_tuning_batch_forgotten_mode_appends_a_copy_of_each_forgotten_proxy(tiny_classifier):
  c = tiny_classifier
  proxies, labels = _batch()
  out, out_labels = sharpen_lib.tuning_batch(
      c.graphdef, c.params, c.stats, proxies, labels, jnp.asarray([1], jnp.int32),
      sharpen_lib.Sharpening(0.9, 0.01, 3, "forgotten"))
  assert out.shape == (len(labels) + 2, *TINY_SHAPE)
  np.testing.assert_array_equal(np.asarray(out[: len(labels)]), np.asarray(proxies))
  assert np.asarray(out_labels).tolist() == np.asarray(labels).tolist() + [1, 1]


@pytest.mark.parametrize("jit", [False, True])
def test_tuning_batch_all_mode_turns_every_proxy_and_anchors_the_retained(tiny_classifier, jit):
  c = tiny_classifier
  proxies, labels = _batch()
  forget = jnp.asarray([1, 3], jnp.int32)
  sharpening = sharpen_lib.Sharpening(0.99, 0.02, 20, "all")

  def run(proxies, labels, forget):
    return sharpen_lib.tuning_batch(c.graphdef, c.params, c.stats, proxies, labels, forget,
                                    sharpening)

  out, out_labels = (jax.jit(run) if jit else run)(proxies, labels, forget)
  m = len(labels)
  kept = ~np.isin(np.asarray(labels), [1, 3])
  assert out.shape == (m + m + kept.sum(), *TINY_SHAPE)
  np.testing.assert_array_equal(np.asarray(out[:m]), np.asarray(proxies))
  toward = np.asarray(out_labels[m:2 * m])
  # Forgotten proxies keep their class; retained ones take the forgotten classes in turn.
  assert np.all(np.isin(toward, [1, 3]))
  np.testing.assert_array_equal(toward[~kept], np.asarray(labels)[~kept])
  assert set(toward[kept].tolist()) == {1, 3}
  # Anchors: the retained proxies, in order, labelled with their own class.
  np.testing.assert_array_equal(np.asarray(out_labels[2 * m:]), np.asarray(labels)[kept])
  # Turned copies moved toward their new class; anchors toward their own.
  before = _prob(c, proxies, jnp.asarray(toward))
  after = _prob(c, out[m:2 * m], jnp.asarray(toward))
  assert np.all(after >= before - 1e-6) and np.any(after > before)
  anchor_before = _prob(c, proxies[kept], labels[kept])
  anchor_after = _prob(c, out[2 * m:], labels[kept])
  assert np.all(anchor_after >= anchor_before - 1e-6)


@pytest.mark.parametrize("jit", [False, True])
def test_tuning_batch_turns_retained_proxies_toward_dropped_classes_too(tiny_classifier, jit):
  """Class 3 was forgotten earlier and its prompts dropped; class 1 is forgotten now."""
  c = tiny_classifier
  proxies, labels = _batch()
  keep = np.asarray(labels) != 3
  proxies, labels = proxies[keep], labels[keep]          # the layout of classes 0, 1, 2
  sharpening = sharpen_lib.Sharpening(0.99, 0.02, 5, "all")

  def run(proxies, labels, forget, dropped):
    return sharpen_lib.tuning_batch(c.graphdef, c.params, c.stats, proxies, labels, forget,
                                    sharpening, dropped)

  out, out_labels = (jax.jit(run) if jit else run)(
      proxies, labels, jnp.asarray([1], jnp.int32), jnp.asarray([3], jnp.int32))
  m, retained = len(labels), np.asarray(labels) != 1
  assert out.shape == (2 * m + retained.sum(), *TINY_SHAPE)
  toward = np.asarray(out_labels[m:2 * m])
  np.testing.assert_array_equal(toward[~retained], 1)
  assert set(toward[retained].tolist()) == {1, 3}
  np.testing.assert_array_equal(np.asarray(out_labels[2 * m:]), np.asarray(labels)[retained])


def test_tuning_batch_without_sharpening_is_the_papers_batch(tiny_classifier):
  c = tiny_classifier
  proxies, labels = _batch()
  out, out_labels = sharpen_lib.tuning_batch(c.graphdef, c.params, c.stats, proxies, labels,
                                             jnp.asarray([1], jnp.int32), None)
  assert out is proxies and out_labels is labels


def test_from_config_and_validation():
  assert sharpen_lib.from_config(get_config("paper")) is None
  cfg = get_config("paper", sharpen_target=0.9)
  assert sharpen_lib.from_config(cfg) == (0.9, 0.01, 30, "forgotten")
  cfg = get_config("paper", sharpen_target=0.9, sharpen_mode="all")
  assert sharpen_lib.from_config(cfg).mode == "all"
  for bad in (0.0, 1.0, 1.5, float("nan"), True, "0.9"):
    with pytest.raises(ValueError, match="sharpen_target"):
      get_config("paper", sharpen_target=bad)
  with pytest.raises(ValueError, match="sharpen_mode"):
    get_config("paper", sharpen_mode="some")
