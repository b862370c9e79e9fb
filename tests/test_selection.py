"""The `random` supervision selection (Table 10's control): uniform, reproducible, wired in.

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

from conftest import TINY_B, TINY_K, TINY_LOWERING, TINY_SHAPE, TINY_WIDTH, normal, replace_leaf


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
