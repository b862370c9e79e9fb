"""Supervision sample selection (§4.4): `geniu_jax/geniu/selection.py`.

The entropy rules (per-class top-B on hand-made logits and against a numpy
brute force, batch merging, prompt order) and the `random` rule (Table 10's
control): uniform, reproducible, wired into training.

    python -m pytest tests/test_selection.py -q    # ~1 min on 2 busy CPU cores
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geniu_jax.config import get_config
from geniu_jax.geniu import selection as sel
from geniu_jax.geniu import train as train_lib
from geniu_jax.geniu.losses import batch_entropy
from geniu_jax.models import functional as F

from conftest import (TINY_B, TINY_K, TINY_LOWERING, TINY_SHAPE, TINY_WIDTH, normal,
                      np_entropy, replace_leaf)

_logits = jax.jit(F.classifier_logits, static_argnums=0)


def test_random_scores_are_uniform_and_ignore_the_entropy():
  logits = normal(0, (20000, 10), 3.0)
  scores = np.asarray(sel.selection_scores(logits, "random"))
  assert scores.min() >= 0.0 and scores.max() < 1.0
  counts, _ = np.histogram(scores, 10, (0.0, 1.0))
  # 2000 expected per bin; 5 sigma of a binomial is ~210.
  assert np.all(np.abs(counts - 2000) < 210), counts
  assert abs(np.corrcoef(scores, np.asarray(batch_entropy(logits)))[0, 1]) < 0.03
  # A function of the logits: the same logits score the same, others do not.
  np.testing.assert_array_equal(sel.selection_scores(logits, "random"), scores)
  nudged = np.asarray(sel.selection_scores(logits.at[:, 3].add(1e-5), "random"))
  assert np.mean(nudged == scores) < 0.01


def test_random_top_b_is_a_uniform_subset_of_the_class():
  """Over many logit draws every member of a class is picked B/m of the time."""
  k, b, draws = 3, 2, 3000
  labels = jnp.asarray(np.arange(24) % k, jnp.int32)   # m = 8 members per class
  idx = jnp.arange(100, 124, dtype=jnp.int32)

  @jax.jit
  def choose(logits):
    scores = sel.selection_scores(logits, "random")
    # Two batches, as the train step merges them.
    topb = sel.update_topb(sel.init_topb(k, b), scores[:10], labels[:10], idx[:10])
    return sel.update_topb(topb, scores[10:], labels[10:], idx[10:]).indices

  chosen = np.asarray(jax.vmap(choose)(normal(1, (draws, 24, k), 2.0)))   # [draws, K, B]
  for c in range(k):
    picks = chosen[:, c]
    assert np.all(picks[:, 0] != picks[:, 1])
    assert np.all((picks - 100) % k == c)   # only members of the class
    members, counts = np.unique(picks, return_counts=True)
    assert len(members) == 8
    # Expected draws * B / m = 750; sd = sqrt(draws * p * (1 - p)) ~ 24.
    assert np.all(np.abs(counts - 750) < 120), (c, counts)


def test_select_by_pass_random_draws_distinct_members_reproducibly(tiny_classifier):
  cls = tiny_classifier
  clf = (cls.graphdef, cls.params, cls.stats)
  n = 200
  x = normal(5, (n, *TINY_SHAPE))
  y = np.random.default_rng(6).integers(0, TINY_K, n).astype(np.int32)

  def select(model, rule="random"):
    return np.asarray(sel.select_by_pass(model, x, jnp.asarray(y), TINY_K, TINY_B, rule,
                                         batch_size=64).indices)

  chosen = select(clf)
  for c in range(TINY_K):
    assert np.all(y[chosen[c]] == c) and len(set(chosen[c])) == TINY_B
  np.testing.assert_array_equal(select(clf), chosen)
  # Another model (another seed, or a later epoch) draws other samples.
  kernel = np.asarray(cls.params["head"]["kernel"][...]) + 0.01
  other = (cls.graphdef, replace_leaf(cls.params, "['head']['kernel']", kernel), cls.stats)
  assert not np.array_equal(select(other), chosen)
  assert not np.array_equal(select(clf, "max_entropy"), chosen)


@pytest.fixture
def chosen_indices(monkeypatch):
  """Every supervision set the training phase feeds its generator, per run."""
  runs: list[list[np.ndarray]] = []
  real = sel.supervision_indices

  def spying(topb):
    idx = real(topb)
    jax.debug.callback(lambda v: runs[-1].append(np.asarray(v)), idx)
    return idx

  monkeypatch.setattr(sel, "supervision_indices", spying)

  def train(source: str, seed: int):
    runs.append([])
    cfg = get_config("smoke", width=TINY_WIDTH, lowering=TINY_LOWERING,
                     proxies_per_class=TINY_B, batch_size=16, epochs=6, generator_steps=2,
                     seed=seed, selection="random", selection_source=source)
    labels = np.arange(96) % TINY_K
    # Bright quadrant = label: the prompts are classified correctly within an
    # epoch, so the generator (and the selection) trains.
    x = np.random.default_rng(0).uniform(0.0, 0.3, (96, *TINY_SHAPE)).astype(np.float32)
    for i, k in enumerate(labels):
      x[i, (k // 2) * 4:(k // 2) * 4 + 4, (k % 2) * 4:(k % 2) * 4 + 4, 0] += 0.7
    train_lib.train(cfg, x, labels.astype(np.int32), TINY_K, log=None)
    return labels, runs[-1]

  return train


@pytest.mark.parametrize("source", ["epoch", "pass"])
def test_training_draws_reproducibly_from_the_seed(chosen_indices, source):
  labels, first = chosen_indices(source, seed=0)
  assert first, "the generator never trained, so nothing was selected"
  for idx in first:
    # Prompt i supervises class i % K with distinct samples of that class.
    np.testing.assert_array_equal(labels[idx], np.arange(TINY_K * TINY_B) % TINY_K)
    assert len(set(idx.tolist())) == len(idx)
  # The draw changes from epoch to epoch (the logits it is keyed by do)...
  assert not all(np.array_equal(first[0], idx) for idx in first[1:])
  # ... and a run with the same seed draws the same samples.
  _, again = chosen_indices(source, seed=0)
  assert len(again) == len(first)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)


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



@pytest.mark.parametrize("rule,expected", [
    ("max_entropy", [[12, 10], [14, 13], [15, -1]]),
    ("min_entropy", [[11, 10], [16, 13], [15, -1]]),
])
def test_topb_on_hand_made_logits(rule, expected):
  logits, labels, idx = _hand_batch()
  scores = sel.selection_scores(logits, rule)
  ent = np_entropy(logits)
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

  ent = np_entropy(_logits(cls.graphdef, params, cls.stats, x))
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
  ent = np_entropy(_logits(cls.graphdef, cls.params, cls.stats, x))
  assert int(hi.indices[0, 0]) == int(np.argmax(ent))
  assert int(lo.indices[0, 0]) == int(np.argmin(ent))
  assert int(hi.indices[0, 0]) != int(lo.indices[0, 0])
