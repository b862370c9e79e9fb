"""Noise prompts z_k (Eq. 7-8): `geniu_jax/geniu/prompts.py`.

Prompt layout (class fastest), prompt training that never touches the
classifier, the per-prompt loss, dropping forgotten classes and the
all-prompts-correct gate of Alg. 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from geniu_jax.geniu import prompts as prompt_lib
from geniu_jax.models import functional as F

from conftest import (TINY_B, TINY_K, TINY_LOWERING, TINY_SHAPE, TINY_WIDTH, assert_unchanged,
                      normal, replace_leaf, snapshot)

_logits = jax.jit(F.classifier_logits, static_argnums=0)


def test_prompt_labels_are_class_fastest():
  np.testing.assert_array_equal(prompt_lib.prompt_labels(3, 2), [0, 1, 2, 0, 1, 2])
  state = prompt_lib.init_prompts(jax.random.key(0), 3, 2, TINY_SHAPE, optax.adam(0.1))
  assert state.z.shape == (6, *TINY_SHAPE) and state.z.dtype == jnp.float32


def test_train_prompts_updates_every_prompt_and_never_the_classifier(tiny_classifier,
                                                                      tiny_prompts):
  cls = tiny_classifier
  clf = (cls.graphdef, cls.params, cls.stats)
  opt = optax.adam(0.02)
  state = prompt_lib.PromptState(tiny_prompts, opt.init(tiny_prompts))
  z0 = np.asarray(tiny_prompts)
  snaps = snapshot(cls.params, cls.stats)
  labels = prompt_lib.prompt_labels(TINY_K, TINY_B)
  loss0 = float(prompt_lib.prompt_loss(tiny_prompts, labels, clf))

  new, last = prompt_lib.train_prompts(state, clf, TINY_K, opt, steps=10)

  z1 = np.asarray(new.z)
  assert z1.shape == z0.shape == (TINY_K * TINY_B, *TINY_SHAPE)
  for i in range(z0.shape[0]):
    assert np.any(z1[i] != z0[i]), f"prompt {i} was not updated"
  assert_unchanged((cls.params, cls.stats), snaps)
  np.testing.assert_array_equal(np.asarray(tiny_prompts), z0)  # input state intact
  loss1 = float(prompt_lib.prompt_loss(new.z, labels, clf))
  assert np.isfinite(last) and loss1 < float(last) < loss0
  # The Adam state moved along with z (one batched optimizer for all prompts).
  assert int(new.opt_state[0].count) == 10


def test_prompt_loss_is_a_mean_of_independent_per_prompt_losses(tiny_classifier,
                                                                tiny_prompts):
  cls = tiny_classifier
  clf = (cls.graphdef, cls.params, cls.stats)
  labels = prompt_lib.prompt_labels(TINY_K, TINY_B)
  batch = prompt_lib.prompt_loss(tiny_prompts, labels, clf)
  single = jax.jit(jax.vmap(lambda z, y: prompt_lib.prompt_loss(z[None], y[None], clf)))
  per_prompt = single(tiny_prompts, labels)
  np.testing.assert_allclose(batch, per_prompt.mean(), rtol=1e-5)


def test_first_ranks_keeps_whole_ranks_in_class_fastest_order():
  z = jnp.arange(3 * 4, dtype=jnp.float32).reshape(12, 1, 1, 1)   # K = 4 classes, B = 3
  first = prompt_lib.first_ranks(z, 4, 2)
  np.testing.assert_array_equal(np.asarray(first).ravel(), np.arange(8))
  np.testing.assert_array_equal(prompt_lib.prompt_labels(4, 2), [0, 1, 2, 3, 0, 1, 2, 3])
  for bad in (0, 4):
    with pytest.raises(ValueError, match="the checkpoint has 3"):
      prompt_lib.first_ranks(z, 4, bad)


def test_dropping_classes_keeps_the_layout_of_the_others():
  z = jnp.arange(3 * 4, dtype=jnp.float32).reshape(12, 1, 1, 1)   # K = 4, B = 3
  labels = np.tile(np.arange(4), 3)
  once = prompt_lib.drop_classes(z, 4, [], [2])
  np.testing.assert_array_equal(once.ravel(), np.flatnonzero(labels != 2))
  np.testing.assert_array_equal(prompt_lib.stored_labels(4, 9, jnp.asarray([2])),
                                [0, 1, 3] * 3)
  # A later request drops another class; classes already gone are ignored.
  twice = prompt_lib.drop_classes(once, 4, [2], [0, 2])
  np.testing.assert_array_equal(twice.ravel(), np.flatnonzero(~np.isin(labels, [0, 2])))
  np.testing.assert_array_equal(prompt_lib.stored_labels(4, 6, jnp.asarray([2, 0])),
                                [1, 3] * 3)
  np.testing.assert_array_equal(prompt_lib.stored_labels(4, 12), labels)
  present = jax.jit(prompt_lib.present_classes, static_argnums=0)(4, jnp.asarray([3, 1]))
  np.testing.assert_array_equal(present, [0, 2])


def test_prompts_correct_on_a_hand_made_case():
  """K=2, B=2: pick prompts the classifier surely puts in class 0 or class 1."""
  cls = F.make_classifier(2, TINY_SHAPE, TINY_WIDTH, TINY_LOWERING, jax.random.key(3))
  pool = normal(11, (64, *TINY_SHAPE))
  logits = np.asarray(_logits(cls.graphdef, cls.params, cls.stats, pool))
  d = logits[:, 1] - logits[:, 0]
  # Shift class 1's bias so the pool splits in half between the two classes.
  bias = np.asarray(cls.params["head"]["bias"][...]) + np.array([0.0, -np.median(d)])
  params = replace_leaf(cls.params, "['head']['bias']", bias)
  clf = (cls.graphdef, params, cls.stats)
  order = np.argsort(d)
  c0, c1 = order[:2], order[-2:]   # the surest class-0 and class-1 prompts
  check = lambda idx: bool(prompt_lib.prompts_correct(pool[np.array(idx)], clf, 2))
  preds = np.argmax(np.asarray(_logits(cls.graphdef, params, cls.stats, pool)), -1)
  assert np.all(preds[c0] == 0) and np.all(preds[c1] == 1)   # the construction holds
  assert check([c0[0], c1[0], c0[1], c1[1]]) is True          # labels 0, 1, 0, 1
  assert check([c1[0], c0[0], c1[1], c0[1]]) is False         # every prompt wrong
  assert check([c0[0], c1[0], c0[1], c0[1]]) is False         # only the last is wrong
