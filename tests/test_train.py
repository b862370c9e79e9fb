"""Table 11's noise-start threshold and the sanity checks of the training phase.

Tiny problems (8x8 images, K=4, width 0.0625, native lowering) keep every
training run to a few seconds on two CPU cores.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geniu_jax import checkpoint as ckpt_lib
from geniu_jax import runs
from geniu_jax.config import get_config
from geniu_jax.geniu import train as train_lib

from conftest import (TINY_B, TINY_K, TINY_LOWERING, TINY_SHAPE, TINY_WIDTH, pure_leaves,
                      replace_leaf, spy_on_training)


def quadrant_data(labels: np.ndarray, seed: int) -> np.ndarray:
  """8x8 images whose bright quadrant is the label: learnable in a few steps."""
  rng = np.random.default_rng(seed)
  x = rng.uniform(0.0, 0.3, (len(labels), *TINY_SHAPE)).astype(np.float32)
  for i, k in enumerate(labels):
    x[i, (k // 2) * 4:(k // 2) * 4 + 4, (k % 2) * 4:(k % 2) * 4 + 4, 0] += 0.7
  return x


def tiny_cfg(**overrides):
  return get_config("smoke", width=TINY_WIDTH, lowering=TINY_LOWERING,
                    proxies_per_class=TINY_B, batch_size=16, **overrides)


@pytest.fixture
def spies(monkeypatch):
  return spy_on_training(monkeypatch)


# --- training runs (t unreachable: see test_cli_lifecycle's tiny `geniu train`) ---

def test_threshold_starts_the_noise_training_at_the_first_epoch_reaching_it(spies):
  y = np.random.default_rng(2).permutation(np.arange(64) % TINY_K).astype(np.int32)
  x = quadrant_data(y, 3)
  t = 0.5
  cfg = tiny_cfg(epochs=4, noise_start_acc=t, prompt_lr=0.1, generator_steps=3)
  result = train_lib.train(cfg, x, y, TINY_K, log=None)

  acc = [row["train_acc"] for row in result.history]
  started = [row["noise_started"] for row in result.history]
  assert acc[0] < t <= max(acc), f"precondition: the threshold is crossed later ({acc})"
  # On from the first epoch whose accuracy reaches t, for every later epoch.
  assert started == [max(acc[:i + 1]) >= t for i in range(len(acc))]
  assert spies["aux_calls"] == sum(started)
  opened = [row["prompts_correct"] for row in result.history]
  assert not any(o and not s for o, s in zip(opened, started))
  assert result.checks == {"generator_epochs": sum(opened), "unpredicted_classes": [],
                           "warnings": []}
  assert result.checks["generator_epochs"] >= 1, "precondition: the gate opens"
  initial = spies["initial_generator"][0]
  trained = pure_leaves(result.generator.params)
  assert any(not np.array_equal(trained[k], initial[k]) for k in initial)


def test_train_step_counts_the_argmax_predictions_of_its_batch(tiny_classifier):
  cls = tiny_classifier
  opt = train_lib.classifier_optimizer(tiny_cfg(), 1)
  # A head bias that outvotes every input: all 12 samples are predicted as class 2.
  # Copies: the step donates its state and the fixture is shared.
  params = replace_leaf(jax.tree.map(jnp.copy, cls.params), "['head']['bias']",
                        [0.0, 0.0, 1e3, 0.0])
  state = train_lib.ClassifierState(params, jax.tree.map(jnp.copy, cls.stats),
                                    opt.init(params))
  x = jnp.asarray(np.random.default_rng(4).uniform(0, 1, (12, *TINY_SHAPE)), jnp.float32)
  y = jnp.zeros(12, jnp.int32)
  step = train_lib.make_train_step(cls.graphdef, opt, None, None, TINY_K)
  *_, correct, counts = step(state, None, None, x, y, jnp.arange(12, dtype=jnp.int32))
  np.testing.assert_array_equal(counts, [0, 0, 12, 0])
  assert int(correct) == 0


# --- the checks themselves --------------------------------------------------------

def _rows(*gates, started=None):
  started = started or [True] * len(gates)
  return [{"epoch": i + 1, "train_acc": 0.1 * (i + 1), "prompts_correct": g,
           "noise_started": s} for i, (g, s) in enumerate(zip(gates, started))]


def test_training_checks_name_the_cause_and_a_remedy():
  closed = train_lib.training_checks(_rows(False, False), np.array([3, 1, 2]), geniu=True)
  assert closed["generator_epochs"] == 0 and closed["unpredicted_classes"] == []
  assert closed["warnings"] == [
      "the generator never trained: no epoch had every noise prompt classified correctly "
      "(too few classifier steps for a small dataset? add --epochs)"]
  waited = train_lib.training_checks(_rows(False, False, started=[False, False]), None,
                                     geniu=True, noise_start_acc=0.7)
  assert "never reached the noise start threshold 0.7 (best 0.200" in waited["warnings"][0]
  assert "--noise-start-acc" in waited["warnings"][0]
  # Started but the gate stayed shut: the threshold is not the cause.
  gate = train_lib.training_checks(_rows(False, False, started=[False, True]), None,
                                   geniu=True, noise_start_acc=0.2)
  assert "no epoch had every noise prompt" in gate["warnings"][0]
  fine = train_lib.training_checks(_rows(False, True, True), np.array([5, 5]), geniu=True)
  assert fine == {"generator_epochs": 2, "unpredicted_classes": [], "warnings": []}
  plain = train_lib.training_checks([{"epoch": 1, "train_acc": 0.5}], np.array([0, 4, 0, 1]),
                                    geniu=False)
  assert plain["generator_epochs"] is None and plain["unpredicted_classes"] == [0, 2]
  assert len(plain["warnings"]) == 1
  assert plain["warnings"][0].startswith("the classifier predicted no training sample as "
                                         "class 0, 2 in its last epoch")


def test_generator_epochs_from_checkpoint_metadata():
  hist = [{"prompts_correct": False}, {"prompts_correct": True}, {"prompts_correct": True}]
  assert ckpt_lib.generator_epochs({"checks": {"generator_epochs": 0}, "history": hist}) == 0
  assert ckpt_lib.generator_epochs({"history": hist}) == 2            # before "checks"
  assert ckpt_lib.generator_epochs({"history": hist[:1]}) == 0
  assert ckpt_lib.generator_epochs({"history": [{"loss": 1.0}]}) is None   # geniu=False
  assert ckpt_lib.generator_epochs({}) is None                        # says nothing


@pytest.mark.parametrize("with_checks", [True, False])
def test_save_run_stores_the_checks(tmp_path, tiny_classifier, tiny_generator, tiny_prompts,
                                    with_checks):
  cfg = tiny_cfg()
  hist = _rows(False, False)
  checks = train_lib.training_checks(hist, np.array([1, 0, 1, 1]), geniu=True)
  result = train_lib.TrainResult(tiny_classifier, tiny_generator, tiny_prompts, hist, None,
                                 checks if with_checks else None)
  y = np.arange(8) % TINY_K
  data = runs.TrainingData(np.zeros((8, *TINY_SHAPE), np.float32), y, None, None, TINY_K,
                           "arrays", (3,), np.bincount(y))
  meta = ckpt_lib.read_metadata(runs.save_run(str(tmp_path / "ck"), cfg, data, result))
  # Without checks (e.g. `sweep.train_many` results) they come from the history alone.
  expected = checks if with_checks else train_lib.training_checks(hist, None, geniu=True)
  assert meta["checks"] == expected
  assert ckpt_lib.generator_epochs(meta) == 0


@pytest.mark.parametrize("n_images,n_labels", [(0, 0), (4, 3)])
def test_train_refuses_an_empty_or_mislabelled_split(n_images, n_labels):
  cfg = get_config("smoke")
  x = np.zeros((n_images, *TINY_SHAPE), np.float32)
  y = np.zeros((n_labels,), np.int32)
  with pytest.raises(ValueError, match="training split"):
    train_lib.train(cfg, x, y, TINY_K)


def test_train_key_defaults_to_the_config_seed_and_names_the_run():
  labels = np.repeat(np.arange(TINY_K), 8)
  x = quadrant_data(labels, 0)
  cfg = tiny_cfg(epochs=1, seed=3)

  def params(**kw):
    r = train_lib.train(cfg, x, labels, TINY_K, geniu=False, log=None, **kw)
    return jax.tree.leaves(r.classifier.params)

  default, same, other = params(), params(key=jax.random.key(3)), params(key=jax.random.key(4))
  assert all(np.array_equal(a, b) for a, b in zip(default, same))
  assert not all(np.array_equal(a, b) for a, b in zip(default, other))
  assert list(train_lib.key_streams(jax.random.key(0))) == list(train_lib.KEY_STREAMS)
