"""In-batch tuning objectives other than Eq. 10 (`unlearn.Objective`)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geniu_jax.config import Config, get_config
from geniu_jax.geniu import prompts as prompt_lib
from geniu_jax.geniu import unlearn as unlearn_lib
from geniu_jax.geniu.losses import batch_cross_entropy

from conftest import TINY_B, TINY_K

TEACHER_MARGIN = unlearn_lib.Objective("teacher", "margin", 2.0)


def _logit_grads(logits, labels, mask, objective, teacher=None, forgotten=None):
  return jax.grad(lambda l: unlearn_lib.loss_from_logits(
      l, labels, mask, objective=objective, teacher=teacher, forgotten=forgotten))(logits)


def _case():
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(6, 4)) * 2, jnp.float32)
  labels = jnp.array([0, 1, 2, 3, 0, 3], jnp.int32)
  forget = jnp.array([3], jnp.int32)
  return logits, labels, forget, unlearn_lib.forget_mask_for(labels, forget)


def test_default_objective_is_eq10():
  logits, labels, _, mask = _case()
  ce = batch_cross_entropy(logits, labels)
  want = jnp.sum(jnp.where(mask, 1.0 / (ce + unlearn_lib.CE_FLOOR), ce))
  np.testing.assert_allclose(unlearn_lib.loss_from_logits(logits, labels, mask), want,
                             rtol=1e-6)
  assert unlearn_lib.Objective() == unlearn_lib.EQ10


def test_teacher_targets_drop_the_forgotten_classes_and_keep_the_rest_in_proportion():
  logits, _, forget, _ = _case()
  forgotten = unlearn_lib.forgotten_classes(forget, 4)
  np.testing.assert_array_equal(forgotten, [False, False, False, True])
  t = np.asarray(unlearn_lib.teacher_targets(logits, forgotten))
  np.testing.assert_allclose(t.sum(-1), 1.0, rtol=1e-6)
  assert np.all(t[:, 3] == 0.0)
  p = np.asarray(jax.nn.softmax(logits))[:, :3]
  np.testing.assert_allclose(t[:, :3], p / p.sum(-1, keepdims=True), rtol=1e-5)


def test_teacher_retained_term_pulls_only_towards_the_original_minus_forgotten():
  """At the teacher's own logits the retained gradient is softmax - target: zero on
  the retained classes' proportions except for the forgotten class's mass."""
  logits, labels, forget, mask = _case()
  forgotten = unlearn_lib.forgotten_classes(forget, 4)
  teacher = unlearn_lib.teacher_targets(logits, forgotten)
  g = np.asarray(_logit_grads(logits, labels, mask,
                              unlearn_lib.Objective("teacher", "inv_ce"), teacher, forgotten))
  p = np.asarray(jax.nn.softmax(logits))
  kept = ~np.asarray(mask)
  np.testing.assert_allclose(g[kept], (p - np.asarray(teacher))[kept], atol=1e-6)
  # Gradient descent lowers the forgotten logit on retained proxies too ...
  assert np.all(g[kept, 3] > 0)
  # ... and, where the original disagrees with the label, pulls the label's logit
  # up less than label CE does (its gradient there is p - onehot).
  wrong = kept & (p.argmax(-1) != np.asarray(labels))
  assert wrong.any(), "precondition: some retained proxy is misclassified"
  g_label = np.asarray(_logit_grads(logits, labels, mask, unlearn_lib.EQ10))
  rows = np.flatnonzero(wrong)
  cols = np.asarray(labels)[rows]
  assert np.all(g[rows, cols] > g_label[rows, cols] + 0.1)


@pytest.mark.parametrize("margin", [0.0, 2.0, 5.0])
def test_margin_forget_loss_pushes_until_the_margin_and_then_fades(margin):
  labels = jnp.array([3], jnp.int32)
  mask = jnp.array([True])
  forgotten = jnp.array([False, False, False, True])
  objective = unlearn_lib.Objective("label", "margin", margin)

  def grad_at(gap):   # forgotten logit `gap` above the retained ones (all equal)
    logits = jnp.array([[0.0, 0.0, 0.0, gap]])
    return np.asarray(_logit_grads(logits, labels, mask, objective, forgotten=forgotten))[0]

  near = grad_at(1.0)
  assert near[3] > 0.4 and np.all(near[:3] < 0)          # descent lowers f, raises the rest
  np.testing.assert_allclose(near.sum(), 0.0, atol=1e-6)  # shift invariance of the logits
  far = grad_at(-margin - jnp.log(3.0) - 12.0)             # f already `margin` + 12 below
  assert 0 < far[3] < 1e-5
  # 1/CE's push fades once the proxy has left its class; the margin's does not yet.
  left = jnp.array([[0.0, 0.0, 0.0, -4.0]])
  inv = np.asarray(_logit_grads(left, labels, mask, unlearn_lib.EQ10))[0]
  mar = np.asarray(_logit_grads(left, labels, mask, unlearn_lib.Objective("label", "margin", 5.0),
                                forgotten=forgotten))[0]
  assert mar[3] > 5 * inv[3] > 0


def test_unknown_objective_fields_are_rejected():
  with pytest.raises(ValueError, match="retained target"):
    unlearn_lib.Objective("soft", "inv_ce").check()
  with pytest.raises(ValueError, match="forget loss"):
    unlearn_lib.Objective("label", "hinge").check()
  with pytest.raises(ValueError, match="forget_loss"):  # a Config refuses it on construction
    Config(forget_loss="hinge")


def test_objective_from_config_and_old_checkpoints_restore_eq10():
  assert unlearn_lib.objective_from_config(get_config("paper")) == unlearn_lib.EQ10
  cfg = Config(retain_target="teacher", forget_loss="margin", forget_margin=3.0)
  assert unlearn_lib.objective_from_config(cfg) == unlearn_lib.Objective("teacher", "margin", 3.0)
  # The margin only matters for the margin loss (so equal objectives compare equal).
  assert unlearn_lib.objective_from_config(
      Config(retain_target="teacher", forget_margin=7.0)).margin == 0.0
  # A config stored before these fields existed restores as Eq. 10.
  old = {k: v for k, v in get_config("cpu").to_dict().items()
         if k not in ("retain_target", "forget_loss", "forget_margin")}
  assert unlearn_lib.objective_from_config(Config.from_dict(old)) == unlearn_lib.EQ10
  fields = {f.name for f in dataclasses.fields(Config)}
  assert {"retain_target", "forget_loss", "forget_margin"} <= fields


def test_in_batch_tuning_with_teacher_and_margin_forgets_the_proxies(tiny_classifier,
                                                                    tiny_prompts):
  cls = tiny_classifier
  labels = prompt_lib.prompt_labels(TINY_K, TINY_B)
  forget = jnp.array([1], jnp.int32)
  params, info = unlearn_lib.in_batch_tuning(
      cls.params, cls.graphdef, cls.stats, tiny_prompts, labels, forget, rounds=8, lr=0.01,
      objective=TEACHER_MARGIN)
  assert int(info.rounds_run) == 8 and np.all(np.isfinite(info.loss))
  assert float(info.forget_prob[-1]) < float(info.forget_prob[0])
  # The loss trace is the new objective's, not Eq. 10's.
  eq10 = unlearn_lib.in_batch_loss(cls.params, cls.graphdef, cls.stats, tiny_prompts, labels,
                                   unlearn_lib.forget_mask_for(labels, forget))
  assert not np.isclose(float(info.loss[0]), float(eq10), rtol=1e-3)
  assert any(not np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(params), jax.tree.leaves(cls.params)))
