"""GENIU phases: noise prompts (Eq. 7-8), selection (§4.4), Eq. 10 and Alg. 2 tracing."""

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
from geniu_jax.geniu import selection as sel
from geniu_jax.geniu import unlearn as unlearn_lib
from geniu_jax.models import functional as F

from conftest import (TINY_B, TINY_K, TINY_LOWERING, TINY_SHAPE, TINY_WIDTH, normal,
                      pure_leaves, replace_leaf)

_logits = jax.jit(F.classifier_logits, static_argnums=0)
# (loss, grads) of Eq. 10, jitted once per batch shape (eager grads compile op by op).
_loss_and_grad = jax.jit(jax.value_and_grad(unlearn_lib.in_batch_loss), static_argnums=1)


def _snapshot(*states):
  return [pure_leaves(s) for s in states]


def _assert_unchanged(states, snapshots):
  for state, snap in zip(states, snapshots):
    now = pure_leaves(state)
    assert now.keys() == snap.keys()
    for k in snap:
      assert np.array_equal(now[k], snap[k]), f"{k} changed"


def _np_entropy(logits):
  logits = np.asarray(logits, np.float64)
  logp = logits - logits.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  return -(np.exp(logp) * logp).sum(-1)


# --- noise prompts (Eq. 7-8) ------------------------------------------------------

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
  snaps = _snapshot(cls.params, cls.stats)
  labels = prompt_lib.prompt_labels(TINY_K, TINY_B)
  loss0 = float(prompt_lib.prompt_loss(tiny_prompts, labels, clf))

  new, last = prompt_lib.train_prompts(state, clf, TINY_K, opt, steps=10)

  z1 = np.asarray(new.z)
  assert z1.shape == z0.shape == (TINY_K * TINY_B, *TINY_SHAPE)
  for i in range(z0.shape[0]):
    assert np.any(z1[i] != z0[i]), f"prompt {i} was not updated"
  _assert_unchanged((cls.params, cls.stats), snaps)
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


# --- supervision sample selection (§4.4) ------------------------------------------

# Hand-made logits c * onehot(label): the smaller c, the higher the entropy.
# (dataset index, label, c). Class 2 has a single sample (fewer than B=2).
_HAND = [(10, 0, 1.0), (11, 0, 3.0), (12, 0, 0.5), (13, 1, 2.0), (14, 1, 0.2),
         (15, 2, 5.0), (16, 1, 4.0)]


def _hand_batch():
  idx = np.array([h[0] for h in _HAND], np.int32)
  labels = np.array([h[1] for h in _HAND], np.int32)
  logits = np.stack([c * np.eye(3)[y] for _, y, c in _HAND]).astype(np.float32)
  return jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(idx)


def test_entropy_extremes_and_unknown_rule():
  k = 5
  np.testing.assert_allclose(losses.entropy(jnp.zeros(k)), np.log(k), rtol=1e-6)
  assert float(losses.entropy(jnp.array([50.0, 0, 0, 0, 0]))) < 1e-15
  logits = normal(0, (6, k), 3.0)
  np.testing.assert_allclose(losses.batch_entropy(logits), _np_entropy(logits), rtol=1e-5)
  with pytest.raises(ValueError, match="selection rule"):
    sel.selection_scores(logits, "median_entropy")


@pytest.mark.parametrize("rule,expected", [
    ("max_entropy", [[12, 10], [14, 13], [15, -1]]),
    ("min_entropy", [[11, 10], [16, 13], [15, -1]]),
])
def test_topb_on_hand_made_logits(rule, expected):
  logits, labels, idx = _hand_batch()
  scores = sel.selection_scores(logits, rule)
  ent = _np_entropy(logits)
  np.testing.assert_allclose(scores, ent if rule == "max_entropy" else -ent, rtol=1e-5)
  topb = sel.update_topb(sel.init_topb(3, 2), scores, labels, idx)
  np.testing.assert_array_equal(topb.indices, expected)
  assert topb.scores[2, 1] == -np.inf and np.all(np.isfinite(topb.scores[:2]))
  # Scores come sorted best first.
  assert np.all(np.diff(np.asarray(topb.scores[:2]), axis=1) <= 0)
  # Prompt order: prompt i -> class i % K, rank i // K; a short class repeats its best.
  e = np.array(expected)
  np.testing.assert_array_equal(sel.supervision_indices(topb),
                                [e[0, 0], e[1, 0], e[2, 0], e[0, 1], e[1, 1], e[2, 0]])
  # B=1 keeps only the best sample of every class.
  top1 = sel.update_topb(sel.init_topb(3, 1), scores, labels, idx)
  np.testing.assert_array_equal(top1.indices[:, 0], e[:, 0])
  np.testing.assert_array_equal(sel.supervision_indices(top1), e[:, 0])


def test_update_topb_two_batches_equal_one_merge_of_their_concatenation():
  rng = np.random.default_rng(0)
  k, b = 4, 3
  scores = jnp.asarray(rng.standard_normal(23), jnp.float32)
  labels = jnp.asarray(rng.integers(0, k, 23), jnp.int32)
  idx = jnp.asarray(rng.permutation(1000)[:23], jnp.int32)
  two = sel.update_topb(sel.init_topb(k, b), scores[:9], labels[:9], idx[:9])
  two = sel.update_topb(two, scores[9:], labels[9:], idx[9:])
  one = sel.update_topb(sel.init_topb(k, b), scores, labels, idx)
  np.testing.assert_array_equal(two.indices, one.indices)
  np.testing.assert_array_equal(two.scores, one.scores)
  # And both are the per-class top-B of a brute force.
  for c in range(k):
    members = np.flatnonzero(np.asarray(labels) == c)
    best = members[np.argsort(-np.asarray(scores)[members])][:b]
    want = np.full(b, -1)
    want[:len(best)] = np.asarray(idx)[best]
    np.testing.assert_array_equal(one.indices[c], want)


def test_supervision_indices_order():
  k, b = 3, 2
  indices = jnp.array([[100 * c + r for r in range(b)] for c in range(k)], jnp.int32)
  topb = sel.TopB(jnp.zeros((k, b)), indices)
  got = np.asarray(sel.supervision_indices(topb))
  assert got.tolist() == [0, 100, 200, 1, 101, 201]
  for i, v in enumerate(got):
    assert v == indices[i % k, i // k]


@pytest.mark.parametrize("rule", ["max_entropy", "min_entropy"])
def test_select_by_pass_matches_numpy_brute_force(tiny_classifier, rule):
  cls = tiny_classifier
  # Spread the softmax so entropies are well separated (no near-ties).
  kernel = np.asarray(cls.params["head"]["kernel"][...]) * 20.0
  params = replace_leaf(cls.params, "['head']['kernel']", kernel)
  clf = (cls.graphdef, params, cls.stats)
  n, b = 37, TINY_B
  x = normal(5, (n, *TINY_SHAPE))
  y = np.random.default_rng(6).integers(0, TINY_K - 1, n).astype(np.int32)
  y[20] = TINY_K - 1   # the last class has a single sample (fewer than B)

  topb = sel.select_by_pass(clf, x, jnp.asarray(y), TINY_K, b, rule, batch_size=8)

  ent = _np_entropy(_logits(cls.graphdef, params, cls.stats, x))
  score = ent if rule == "max_entropy" else -ent
  for c in range(TINY_K):
    members = np.flatnonzero(y == c)
    best = members[np.argsort(-score[members], kind="stable")][:b]
    want = np.full(b, -1)
    want[:len(best)] = best
    np.testing.assert_array_equal(topb.indices[c], want, err_msg=f"class {c}")
    np.testing.assert_allclose(topb.scores[c, :len(best)], score[best], rtol=1e-4,
                               atol=1e-5)
  assert np.asarray(topb.indices).max() < n   # padding rows are never selected


def test_min_entropy_picks_the_opposite_of_max_entropy(tiny_classifier):
  cls = tiny_classifier
  clf = (cls.graphdef, cls.params, cls.stats)
  x = normal(7, (12, *TINY_SHAPE))
  y = jnp.zeros(12, jnp.int32)    # one class, B=1: argmax vs argmin of entropy
  hi = sel.select_by_pass(clf, x, y, TINY_K, 1, "max_entropy", batch_size=12)
  lo = sel.select_by_pass(clf, x, y, TINY_K, 1, "min_entropy", batch_size=12)
  ent = _np_entropy(_logits(cls.graphdef, cls.params, cls.stats, x))
  assert int(hi.indices[0, 0]) == int(np.argmax(ent))
  assert int(lo.indices[0, 0]) == int(np.argmin(ent))
  assert int(hi.indices[0, 0]) != int(lo.indices[0, 0])


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


@pytest.mark.parametrize("margin", [20.0, 40.0, 80.0])
def test_cross_entropy_stays_positive_where_naive_ce_is_zero(margin):
  logits = jnp.array([margin, 0.0, 0.0, 0.0], jnp.float32)
  naive = jax.nn.logsumexp(logits) - logits[0]
  assert float(naive) == 0.0    # the float32 case Eq. 10's 1/CE must survive
  ce = float(losses.cross_entropy(logits, 0))
  assert ce > 0
  np.testing.assert_allclose(ce, np.log1p(3 * np.exp(-margin)), rtol=1e-4)
  assert np.isfinite(1.0 / ce)


@pytest.mark.parametrize("margin", [50.0, 88.0, 89.0, 100.0, 1000.0])
def test_cross_entropy_of_a_very_wrong_prediction_is_finite_with_the_right_gradient(margin):
  """The label's logit far below another one: CE ~ margin, dCE/dlogits = p - onehot.
  (log1p(exp(.)) overflowed here: CE = inf and a NaN gradient from a margin of ~89.)"""
  logits = jnp.array([0.0, margin, 0.0, 0.0], jnp.float32)
  ce, grad = jax.value_and_grad(losses.cross_entropy)(logits, 0)
  np.testing.assert_allclose(ce, margin, rtol=1e-6)
  np.testing.assert_allclose(grad, [-1.0, 1.0, 0.0, 0.0], atol=1e-6)
  inv_grad = jax.grad(lambda l: 1.0 / jnp.maximum(losses.cross_entropy(l, 0),
                                                  unlearn_lib.CE_FLOOR))(logits)
  assert np.all(np.isfinite(inv_grad))


def test_in_batch_loss_gradient_is_finite_once_a_forgotten_proxy_is_far_off(
    tiny_classifier, tiny_prompts):
  cls = tiny_classifier
  params = replace_leaf(cls.params, "['head']['bias']", [0.0, 0.0, 0.0, 120.0])
  loss, grads = _loss_and_grad(params, cls.graphdef, cls.stats, tiny_prompts[:2],
                               jnp.array([0, 3]), jnp.array([True, False]))
  assert np.isfinite(float(loss)) and float(loss) > 0
  for k, g in pure_leaves(grads).items():
    assert np.all(np.isfinite(g)), k


def test_cross_entropy_matches_optax_on_ordinary_logits():
  logits = normal(3, (16, 10), 4.0)
  labels = jnp.asarray(np.random.default_rng(4).integers(0, 10, 16), jnp.int32)
  np.testing.assert_allclose(losses.batch_cross_entropy(logits, labels),
                             optax.softmax_cross_entropy_with_integer_labels(logits, labels),
                             rtol=1e-5, atol=1e-6)


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
  snaps = _snapshot(cls.params, cls.stats)

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
  _assert_unchanged((cls.params, cls.stats), snaps)
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
