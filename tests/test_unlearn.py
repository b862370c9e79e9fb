"""GENIU's unlearning phase (Alg. 2): `geniu_jax/geniu/unlearn.py`.

Eq. 10 (sum_retained CE + sum_forgotten 1/CE): gradient signs, finiteness at
huge margins and the direction of a descent step; in-batch tuning and its
stop rule; `unlearn` / `make_unlearn_fn`: one trace, BatchNorm statistics
kept, classes dropped by an earlier request stay forgotten.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from geniu_jax.geniu import losses
from geniu_jax.geniu.generator import make_proxies
from geniu_jax.geniu import prompts as prompt_lib
from geniu_jax.geniu import unlearn as unlearn_lib
from geniu_jax.models import functional as F

from conftest import (TINY_B, TINY_K, TINY_SHAPE, assert_unchanged, normal, pure_leaves,
                      replace_leaf, snapshot)

_logits = jax.jit(F.classifier_logits, static_argnums=0)
# (loss, grads) of Eq. 10, jitted once per batch shape (eager grads compile op by op).
_loss_and_grad = jax.jit(jax.value_and_grad(unlearn_lib.in_batch_loss), static_argnums=1)


# --- Eq. 10: sum_retained CE + sum_forgotten 1/CE ---------------------------------

@pytest.mark.parametrize("forgotten", [True, False])
def test_in_batch_loss_gradient_signs_on_the_logits(tiny_classifier, tiny_prompts, forgotten):
  """The head bias adds to the logits, so its gradient IS the logit gradient."""
  cls = tiny_classifier
  y = 2
  _, g = _loss_and_grad(cls.params, cls.graphdef, cls.stats, tiny_prompts[:1],
                        jnp.array([y]), jnp.array([forgotten]))
  gb = np.asarray(g["head"]["bias"][...])
  others = np.delete(gb, y)
  if forgotten:   # descent lowers the own logit, raises the others: CE goes up
    assert gb[y] > 0 and np.all(others < 0)
  else:           # ordinary CE: descent raises the own logit
    assert gb[y] < 0 and np.all(others > 0)
  np.testing.assert_allclose(gb.sum(), 0.0, atol=1e-5 * np.abs(gb).max())


def test_sgd_step_on_eq10_raises_forgotten_ce_and_lowers_retained_ce(tiny_classifier,
                                                                      tiny_prompts):
  cls = tiny_classifier
  labels = prompt_lib.prompt_labels(TINY_K, TINY_B)
  mask = unlearn_lib.forget_mask_for(labels, jnp.array([1]))
  np.testing.assert_array_equal(mask, np.asarray(labels) == 1)
  m, eta = np.asarray(mask), 1e-3

  def ce_of(params, x, y):
    return losses.batch_cross_entropy(F.classifier_logits(cls.graphdef, params, cls.stats, x), y)

  def step(params, x, y, fm):
    loss, g = jax.value_and_grad(unlearn_lib.in_batch_loss)(
        params, cls.graphdef, cls.stats, x, y, fm)
    new = jax.tree.map(lambda p, d: p - eta * d, params, g)
    new_loss = unlearn_lib.in_batch_loss(new, cls.graphdef, cls.stats, x, y, fm)
    return ce_of(params, x, y), ce_of(new, x, y), loss, new_loss

  # Each proxy alone: Eq. 10 is CE (retained) or 1/CE (forgotten) of that proxy, so a
  # small descent step must move its CE in the stated direction.
  per_proxy = jax.jit(jax.vmap(step, in_axes=(None, 0, 0, 0)))
  before, after, _, _ = per_proxy(cls.params, tiny_prompts[:, None], labels[:, None],
                                  mask[:, None])
  delta = np.asarray(after - before)[:, 0]
  assert np.all(delta[m] > 0), delta
  assert np.all(delta[~m] < 0), delta

  # The whole mini-batch (Alg. 2's one batch): the loss falls, every forgotten proxy's
  # CE rises and the retained CE falls in total (single retained proxies may not).
  before, after, loss, new_loss = jax.jit(step)(cls.params, tiny_prompts, labels, mask)
  delta = np.asarray(after - before)
  assert float(new_loss) < float(loss)
  assert np.all(delta[m] > 0), delta
  assert delta[~m].sum() < 0, delta


def test_in_batch_loss_gradient_is_finite_once_a_forgotten_proxy_is_far_off(
    tiny_classifier, tiny_prompts):
  cls = tiny_classifier
  params = replace_leaf(cls.params, "['head']['bias']", [0.0, 0.0, 0.0, 120.0])
  loss, grads = _loss_and_grad(params, cls.graphdef, cls.stats, tiny_prompts[:2],
                               jnp.array([0, 3]), jnp.array([True, False]))
  assert np.isfinite(float(loss)) and float(loss) > 0
  for k, g in pure_leaves(grads).items():
    assert np.all(np.isfinite(g)), k


def test_in_batch_loss_is_finite_for_a_huge_margin(tiny_classifier, tiny_prompts):
  cls = tiny_classifier
  y = 3
  bias = 80.0 * np.eye(TINY_K)[y]       # every proxy is class 3 by a margin of ~80
  params = replace_leaf(cls.params, "['head']['bias']", bias)
  proxies, labels = tiny_prompts[:2], jnp.array([y, y])
  mask = jnp.array([True, False])
  logits = _logits(cls.graphdef, params, cls.stats, proxies)
  assert float(jnp.min(logits[:, y] - jnp.delete(logits, y, axis=1).max(1))) > 60
  loss, grads = _loss_and_grad(params, cls.graphdef, cls.stats, proxies, labels, mask)
  assert np.isfinite(float(loss))
  assert float(loss) >= 0.49 / unlearn_lib.CE_FLOOR    # 1/(CE + floor), CE ~ 0
  for k, g in pure_leaves(grads).items():
    assert np.all(np.isfinite(g)), k


def test_confidently_classified_forgotten_proxy_still_gets_a_gradient(tiny_classifier,
                                                                      tiny_prompts):
  cls = tiny_classifier
  y = 3
  params = replace_leaf(cls.params, "['head']['bias']", 20.0 * np.eye(TINY_K)[y])
  _, grads = _loss_and_grad(params, cls.graphdef, cls.stats, tiny_prompts[:1],
                             jnp.array([y]), jnp.array([True]))
  gb = np.asarray(grads["head"]["bias"][...])
  assert np.all(np.isfinite(gb)) and gb[y] > 0


def _expected_stop(info, acc0, threshold):
  """Rounds a stop rule should run, read off a no-stop run's trace (None: never stops)."""
  fp = np.asarray(info.forget_prob)            # [r] = after r rounds, r = 0 the original
  ok = np.asarray(info.retain_proxy_acc) >= acc0
  hits = np.flatnonzero(ok[1:] & (fp[1:] <= threshold))
  return (int(hits[0]) + 1 if hits.size else None), fp, ok


def _retained_acc(cls, proxies, labels, mask):
  logits = np.asarray(_logits(cls.graphdef, cls.params, cls.stats, proxies))
  y = np.asarray(labels)
  return np.mean(np.argmax(logits, -1)[~mask] == y[~mask])


def test_in_batch_tuning_runs_every_round_without_a_stop_rule_and_stops_on_the_forget_prob(
    tiny_classifier, tiny_prompts):
  """No stop rule: every round runs. With a threshold, tuning stops after the first
  round that meets it, which we read off the full run's own trace."""
  cls = tiny_classifier
  labels = prompt_lib.prompt_labels(TINY_K, TINY_B)
  forget = jnp.array([1], jnp.int32)
  mask = np.asarray(labels) == 1
  rounds, lr = 6, 0.01
  snaps = snapshot(cls.params, cls.stats)

  params_all, full = unlearn_lib.in_batch_tuning(
      cls.params, cls.graphdef, cls.stats, tiny_prompts, labels, forget, rounds=rounds,
      lr=lr, stop_forget_prob=None)
  assert int(full.rounds_run) == rounds
  assert full.loss.shape == (rounds,) and np.all(np.isfinite(full.loss))
  for trace in (full.forget_prob, full.retain_proxy_acc):
    assert trace.shape == (rounds + 1,) and np.all(np.isfinite(trace))
  loss0 = unlearn_lib.in_batch_loss(cls.params, cls.graphdef, cls.stats, tiny_prompts,
                                    labels, jnp.asarray(mask))
  np.testing.assert_allclose(full.loss[0], loss0, rtol=1e-4)
  assert float(full.forget_prob[-1]) < float(full.forget_prob[0])
  assert_unchanged((cls.params, cls.stats), snaps)
  assert any(not np.array_equal(a, b) for a, b in
             zip(pure_leaves(params_all).values(), snaps[0].values()))

  acc0 = _retained_acc(cls, tiny_prompts, labels, mask)
  threshold = float(full.forget_prob[rounds // 2]) * (1 + 1e-3) + 1e-7
  expected, fp, ok = _expected_stop(full, acc0, threshold)
  assert expected is not None and expected < rounds, "precondition: the rule stops early"
  assert np.any(ok[1:expected] & (fp[1:expected] > threshold)), (
      "precondition: the forget-prob condition is what delays the stop")

  _, early = unlearn_lib.in_batch_tuning(
      cls.params, cls.graphdef, cls.stats, tiny_prompts, labels, forget, rounds=rounds,
      lr=lr, stop_forget_prob=threshold)
  run = int(early.rounds_run)
  assert run == expected
  np.testing.assert_allclose(early.forget_prob[:run + 1], full.forget_prob[:run + 1],
                             rtol=1e-4)
  np.testing.assert_allclose(early.loss[:run], full.loss[:run], rtol=1e-4)
  assert np.all(np.isnan(early.loss[run:])) and np.all(np.isnan(early.forget_prob[run + 1:]))
  assert float(early.forget_prob[run]) <= threshold


def test_in_batch_tuning_equals_repeated_tuning_steps(tiny_classifier, tiny_prompts):
  """The fused loop (checks read off the gradient's forward) is plain Adam on Eq. 10."""
  cls = tiny_classifier
  labels = prompt_lib.prompt_labels(TINY_K, TINY_B)
  mask = jnp.asarray(np.asarray(labels) == 2)
  rounds, lr = 4, 0.01
  tuned, info = unlearn_lib.in_batch_tuning(
      cls.params, cls.graphdef, cls.stats, tiny_prompts, labels, jnp.array([2], jnp.int32),
      rounds=rounds, lr=lr)
  optimizer = optax.adam(lr)
  params, opt_state, losses = cls.params, optimizer.init(cls.params), []
  for _ in range(rounds):
    params, opt_state, loss = unlearn_lib.tuning_step(
        params, opt_state, cls.graphdef, cls.stats, tiny_prompts, labels, mask, optimizer)
    losses.append(float(loss))
  np.testing.assert_allclose(info.loss, losses, rtol=1e-4)
  for k, v in pure_leaves(params).items():
    np.testing.assert_allclose(pure_leaves(tuned)[k], v, rtol=1e-4, atol=1e-6, err_msg=k)
  final = _logits(cls.graphdef, params, cls.stats, tiny_prompts)
  fp, acc = unlearn_lib.proxy_checks(final, labels, mask)
  np.testing.assert_allclose(info.forget_prob[rounds], fp, rtol=1e-4)
  np.testing.assert_allclose(info.retain_proxy_acc[rounds], acc)


def test_in_batch_tuning_stop_rule_also_waits_for_retained_accuracy(tiny_classifier):
  """Proxies labelled with the classifier's own predictions (retained accuracy 1 before
  tuning); a large step first breaks the retained proxies, so the stop must wait."""
  cls = tiny_classifier
  proxies = normal(2, (16, *TINY_SHAPE))
  preds = np.argmax(np.asarray(_logits(cls.graphdef, cls.params, cls.stats, proxies)), -1)
  forget_class = int(np.bincount(preds).argmax())
  assert 0 < np.sum(preds != forget_class), "precondition: some retained proxies"
  labels = jnp.asarray(preds, jnp.int32)
  forget = jnp.array([forget_class], jnp.int32)
  rounds, lr, threshold = 8, 0.03, 0.01
  mask = preds == forget_class
  acc0 = _retained_acc(cls, proxies, labels, mask)
  assert acc0 == 1.0

  _, full = unlearn_lib.in_batch_tuning(cls.params, cls.graphdef, cls.stats, proxies,
                                        labels, forget, rounds=rounds, lr=lr)
  assert np.all(np.isfinite(full.loss)) and np.all(np.isfinite(full.forget_prob))
  expected, fp, ok = _expected_stop(full, acc0, threshold)
  assert expected is not None and expected < rounds, "precondition: the rule stops early"
  assert np.any(~ok[1:expected] & (fp[1:expected] <= threshold)), (
      "precondition: the retained-accuracy condition is what delays the stop")

  _, early = unlearn_lib.in_batch_tuning(cls.params, cls.graphdef, cls.stats, proxies,
                                         labels, forget, rounds=rounds, lr=lr,
                                         stop_forget_prob=threshold)
  assert int(early.rounds_run) == expected


# --- Alg. 2: tracing and BatchNorm statistics --------------------------------------

def test_unlearn_traces_once_and_keeps_batchnorm_stats(tiny_classifier, tiny_generator,
                                                       tiny_prompts):
  cls, gen = tiny_classifier, tiny_generator
  chex.clear_trace_counter()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def run(cls_params, cls_stats, gen_params, prompts, forget):
    tuned, info = unlearn_lib.unlearn(
        F.SplitModel(cls.graphdef, cls_params, cls_stats),
        F.SplitModel(gen.graphdef, gen_params, None), prompts, forget, rounds=2, lr=1e-3)
    return tuned.params, tuned.stats, info

  stats0 = pure_leaves(cls.stats)
  outs = []
  for i, forget in enumerate([[1], [1], [1], [2]]):
    scale = 1.0 + 0.5 * i
    params = jax.tree.map(lambda p: p * scale, cls.params)
    out = run(params, cls.stats, gen.params, tiny_prompts * scale,
              jnp.asarray(forget, jnp.int32))
    outs.append(out)
    tuned_stats = pure_leaves(out[1])
    assert tuned_stats.keys() == stats0.keys()
    for k in stats0:
      assert np.array_equal(tuned_stats[k], stats0[k]), f"{k} changed by unlearning"
    assert int(out[2].rounds_run) == 2
  assert run._cache_size() == 1
  # Different values really went through (not a stale cached result).
  heads = [np.asarray(o[0]["head"]["kernel"][...]) for o in outs]
  assert not np.allclose(heads[0], heads[1]) and not np.allclose(heads[2], heads[3])
  # A different shape (two forgotten classes) does retrace, and chex notices.
  with pytest.raises(AssertionError):
    run(cls.params, cls.stats, gen.params, tiny_prompts, jnp.asarray([1, 2], jnp.int32))


@pytest.mark.parametrize("jit", [False, True])
def test_unlearn_keeps_a_dropped_class_forgotten_without_its_prompts(tiny_classifier,
                                                                      tiny_generator,
                                                                      tiny_prompts, jit):
  """Class 3's prompts were dropped when it was forgotten; a request for class 1
  tunes on the other classes' proxies with both classes forgotten."""
  cls, gen = tiny_classifier, tiny_generator
  keep = np.asarray(prompt_lib.prompt_labels(TINY_K, TINY_B)) != 3
  prompts = tiny_prompts[keep]
  objective = unlearn_lib.Objective("teacher", "margin", 2.0)
  fn = unlearn_lib.make_unlearn_fn(cls.graphdef, gen.graphdef, rounds=3, lr=1e-3,
                                   objective=objective)
  if not jit:
    fn = fn.__wrapped__
  params, info = fn(cls.params, cls.stats, gen.params, prompts, jnp.asarray([1], jnp.int32),
                    jnp.asarray([3], jnp.int32))
  proxies = make_proxies(gen.graphdef, gen.params, prompts)
  labels = jnp.tile(jnp.asarray([0, 1, 2], jnp.int32), TINY_B)
  expected, ref = unlearn_lib.in_batch_tuning(cls.params, cls.graphdef, cls.stats, proxies,
                                              labels, jnp.asarray([1, 3], jnp.int32),
                                              rounds=3, lr=1e-3, objective=objective)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(info.forget_prob, ref.forget_prob, rtol=1e-5)


def test_make_unlearn_fn_compiles_once_for_equal_shapes(tiny_classifier, tiny_generator,
                                                        tiny_prompts):
  cls, gen = tiny_classifier, tiny_generator
  fn = unlearn_lib.make_unlearn_fn(cls.graphdef, gen.graphdef, rounds=3, lr=1e-3,
                                   stop_forget_prob=None)
  results = []
  for i, forget in enumerate([0, 0, 0, 3]):
    out = fn(cls.params, cls.stats, gen.params, tiny_prompts + 0.1 * i,
             jnp.asarray([forget], jnp.int32))
    results.append(out)
    assert int(out[1].rounds_run) == 3
  assert fn._cache_size() == 1
  # Equal inputs give equal outputs; the forgotten class matters.
  again = fn(cls.params, cls.stats, gen.params, tiny_prompts, jnp.asarray([0], jnp.int32))
  np.testing.assert_array_equal(again[1].loss, results[0][1].loss)
  other = fn(cls.params, cls.stats, gen.params, tiny_prompts, jnp.asarray([3], jnp.int32))
  assert not np.allclose(other[1].loss, again[1].loss)
  assert fn._cache_size() == 1


# --- the objectives on hand-made logits, with and without jit -----------------------

_LOG2, _LOG3 = float(np.log(2.0)), float(np.log(3.0))


class HandComputedObjectivesTest(chex.TestCase):
  """Eq. 10, the teacher targets and the margin loss on logits with a known softmax."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_teacher_targets_renormalise_over_the_retained_classes(self):
    logits = jnp.array([[_LOG2, 0.0, 0.0, 5.0], [0.0, 0.0, 0.0, -3.0]], jnp.float32)
    forgotten = jnp.array([False, False, False, True])
    got = self.variant(unlearn_lib.teacher_targets)(logits, forgotten)
    np.testing.assert_allclose(got, [[0.5, 0.25, 0.25, 0.0], [1 / 3, 1 / 3, 1 / 3, 0.0]],
                               rtol=1e-6, atol=1e-7)

  @chex.variants(with_jit=True, without_jit=True)
  def test_margin_loss(self):
    # Class 2 forgotten. Row 0: own logit 0, retained logsumexp log 2 -> softplus(0).
    # Row 1: own log 2, retained logsumexp log 5 -> softplus(log 4/5) = log 9/5.
    logits = jnp.array([[0.0, 0.0, 0.0], [np.log(4.0), 0.0, _LOG2]], jnp.float32)
    labels = jnp.array([2, 2], jnp.int32)
    forgotten = jnp.array([False, False, True])
    got = self.variant(unlearn_lib.margin_loss)(logits, labels, forgotten, _LOG2)
    np.testing.assert_allclose(got, [_LOG2, np.log(9 / 5)], rtol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_loss_from_logits_is_eq10(self):
    # Retained row: CE = log 2. Forgotten row (uniform over 3): 1 / (log 3 + floor).
    logits = jnp.array([[_LOG2, 0.0, 0.0], [0.0, 0.0, 0.0]], jnp.float32)
    labels = jnp.array([0, 1], jnp.int32)
    mask = jnp.array([False, True])
    loss = self.variant(unlearn_lib.loss_from_logits)
    np.testing.assert_allclose(loss(logits, labels, mask),
                               _LOG2 + 1 / (_LOG3 + unlearn_lib.CE_FLOOR), rtol=1e-6)
    np.testing.assert_allclose(loss(logits, labels, mask, 0.5), _LOG2 + 1 / (_LOG3 + 0.5),
                               rtol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_loss_from_logits_with_teacher_and_margin(self):
    # Retained row: CE of the uniform softmax to the teacher (1/2, 1/2, 0) = log 3.
    # Forgotten row (class 2, margin log 2): softplus(log 2 + 0 - log 2) = log 2.
    objective = unlearn_lib.Objective("teacher", "margin", _LOG2)
    logits = jnp.zeros((2, 3), jnp.float32)
    teacher = jnp.array([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]], jnp.float32)
    forgotten = jnp.array([False, False, True])

    def loss(logits, labels, mask, teacher, forgotten):
      return unlearn_lib.loss_from_logits(logits, labels, mask, objective=objective,
                                          teacher=teacher, forgotten=forgotten)

    got = self.variant(loss)(logits, jnp.array([0, 2], jnp.int32), jnp.array([False, True]),
                             teacher, forgotten)
    np.testing.assert_allclose(got, _LOG3 + _LOG2, rtol=1e-6)


def test_tuning_step_takes_the_objective_of_the_main_loop(tiny_classifier):
  """One `tuning_step` with the teacher/margin objective is the first round of
  `in_batch_tuning` with it (same loss code, `loss_from_logits`)."""
  c = tiny_classifier
  proxies = normal(5, (6, *TINY_SHAPE))
  labels = jnp.array([0, 1, 2, 3, 3, 2], jnp.int32)
  forget = jnp.array([3], jnp.int32)
  objective = unlearn_lib.Objective("teacher", "margin", 2.0)
  mask, forgotten, teacher = unlearn_lib._tuning_targets(c.params, c.graphdef, c.stats,
                                                         proxies, labels, forget, objective)
  opt = optax.adam(1e-3)
  stepped, _, loss = unlearn_lib.tuning_step(
      c.params, opt.init(c.params), c.graphdef, c.stats, proxies, labels, mask, opt,
      objective=objective, teacher=teacher, forgotten=forgotten)
  looped, info = unlearn_lib.in_batch_tuning(c.params, c.graphdef, c.stats, proxies, labels,
                                             forget, rounds=1, lr=1e-3, objective=objective)
  np.testing.assert_allclose(loss, info.loss[0], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(stepped), jax.tree.leaves(looped)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
