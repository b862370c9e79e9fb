"""Shared machinery of the unlearning methods: `geniu_jax/methods/common.py`.

The `Stopwatch` and its bounded executable cache (a repeated signature
reuses the compiled program and reports no new compilation), per-preset
settings and `method_settings`, the host-side data helpers, the injected
optimizers and a few `fit` steps on a toy problem.
"""

from __future__ import annotations

import collections
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from geniu_jax.config import Config
from geniu_jax.methods import common
from geniu_jax.models import functional as F
from geniu_jax.models.vae import VAE

from conftest import TINY_K, TINY_SHAPE, assert_unchanged, snapshot


@pytest.fixture
def executables(monkeypatch):
  """A private, empty executable cache for one test."""
  cache = collections.OrderedDict()
  monkeypatch.setattr(common, "EXECUTABLES", cache)
  return cache


@jax.jit
def _affine(x, a):
  return a * x + 1.0


# --- Stopwatch ------------------------------------------------------------------

def test_stopwatch_compiles_once_per_signature(executables):
  x = jnp.arange(4.0)
  watch = common.Stopwatch()
  np.testing.assert_allclose(watch.run(_affine, x, 2.0), [1.0, 3.0, 5.0, 7.0])
  assert len(executables) == 1
  first_compile = watch.compile_s
  assert first_compile > 0 and watch.needed_s == first_compile
  # Same shapes, another scalar value: the same executable, the value an argument.
  np.testing.assert_allclose(watch.run(_affine, x + 1, 3.0), [4.0, 7.0, 10.0, 13.0])
  assert len(executables) == 1
  assert watch.compile_s == first_compile and watch.needed_s == first_compile

  # A later run needs that compilation but does none of it.
  later = common.Stopwatch()
  np.testing.assert_allclose(later.run(_affine, x, 0.5), [1.0, 1.5, 2.0, 2.5])
  assert later.compile_s == 0.0 and later.needed_s == first_compile
  report = later.report()
  assert report["compile_ms"] == first_compile * 1e3
  assert report["timing"] == "wall minus AOT compile" and "unlearn_ms" in report

  # Another shape, or an array where a Python scalar was, is another program.
  later.run(_affine, jnp.arange(5.0), 2.0)
  later.run(_affine, x, jnp.float32(2.0))
  assert len(executables) == 3
  assert later.compile_s > 0 and later.needed_s > first_compile


def test_stopwatch_cache_is_bounded_and_least_recently_used_goes(executables,
                                                                 monkeypatch):
  monkeypatch.setattr(common, "MAX_EXECUTABLES", 2)
  watch = common.Stopwatch()
  small, middle, large = jnp.zeros(1), jnp.zeros(2), jnp.zeros(3)
  watch.compiled(_affine, small, 1.0)
  watch.compiled(_affine, middle, 1.0)
  watch.compiled(_affine, small, 1.0)       # now the most recently used
  compiled = watch.compile_s
  watch.compiled(_affine, large, 1.0)
  assert len(executables) == 2
  sizes = [sig[1][0][0] for _, sig in executables]
  assert sizes == [(1,), (3,)]
  assert watch.compile_s > compiled
  # The evicted program is compiled again when it is needed again.
  again = common.Stopwatch()
  again.compiled(_affine, middle, 1.0)
  assert again.compile_s > 0 and len(executables) == 2
  assert [sig[1][0][0] for _, sig in executables] == [(3,), (2,)]


def test_init_split_through_a_stopwatch_counts_its_compilation(executables):
  watch = common.Stopwatch()
  model = common.init_split(watch, VAE, TINY_SHAPE, 8, key=jax.random.key(0),
                            lowering="native")
  assert watch.compile_s > 0 and len(executables) == 1
  direct = F.make_generator(TINY_SHAPE, 8, "native", jax.random.key(0))
  assert model.graphdef == direct.graphdef
  for a, b in zip(jax.tree.leaves(model.params), jax.tree.leaves(direct.params)):
    np.testing.assert_array_equal(a, b)


# --- settings -------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Settings:
  steps: int = 1
  lr: float = 0.1
  note: str | None = None


_TABLE = {"smoke": _Settings(steps=2), "paper": _Settings(steps=10)}


def test_by_preset_picks_the_presets_entry_or_the_reference():
  assert common.by_preset(Config(preset="smoke"), _TABLE, method=None) is _TABLE["smoke"]
  assert common.by_preset(Config(preset="paper"), _TABLE, _Settings(), method="m") == (
      _Settings(steps=10))
  ref = _Settings(steps=99)
  assert common.by_preset(Config(preset="smoke", baseline_setting="reference"), _TABLE, ref,
                          method=None) is ref
  with pytest.raises(ValueError, match=r"no setting for preset 'cpu' .*\['paper', 'smoke'\]"):
    common.by_preset(Config(preset="cpu"), _TABLE, ref, method=None)
  with pytest.raises(ValueError, match="no `reference` setting"):
    common.by_preset(Config(baseline_setting="reference"), _TABLE, method=None)


def test_by_preset_applies_this_methods_settings_only():
  cfg = Config(preset="smoke", method_settings=(("m.lr", 0.5), ("other.steps", 7)))
  assert common.by_preset(cfg, _TABLE, method="m") == _Settings(steps=2, lr=0.5)
  assert common.by_preset(cfg, _TABLE, method="other") == _Settings(steps=7)
  assert _TABLE["smoke"] == _Settings(steps=2)      # the table is left alone
  ref = common.by_preset(cfg.replace(baseline_setting="reference"), _TABLE,
                         _Settings(steps=99), method="m")
  assert ref == _Settings(steps=99, lr=0.5)


def test_with_method_settings():
  s = _Settings()
  assert common.with_method_settings(s, (("other.steps", 3),), "m") is s
  assert common.with_method_settings(s, (), "m") is s
  assert common.with_method_settings(s, (("m.steps", 3), ("m.note", "x")), "m") == (
      _Settings(steps=3, note="x"))
  assert common.with_method_settings(s, (("m.steps", 3), ("m.steps", 4)), "m").steps == 4
  # An int where a float is expected is a float's value; None sets any field.
  assert common.with_method_settings(s, (("m.lr", 1),), "m").lr == 1
  assert common.with_method_settings(s, (("m.lr", None),), "m").lr is None
  assert s == _Settings()
  with pytest.raises(ValueError, match=r"method 'm' has no setting nope; its settings: lr, "
                                       r"note, steps"):
    common.with_method_settings(s, (("m.nope", 1),), "m")
  with pytest.raises(ValueError, match="m.steps must be a int, got 'many'"):
    common.with_method_settings(s, (("m.steps", "many"),), "m")
  with pytest.raises(ValueError, match="m.lr must be a float, got True"):
    common.with_method_settings(s, (("m.lr", True),), "m")
  with pytest.raises(ValueError, match="m.steps must be a int, got True"):
    common.with_method_settings(s, (("m.steps", True),), "m")
  with pytest.raises(ValueError, match="method 'm' has no settings to set"):
    common.with_method_settings(3, (("m.steps", 1),), "m")
  assert common.with_method_settings(3, (("n.steps", 1),), "m") == 3


# --- host-side data -------------------------------------------------------------

def test_split_data_keeps_the_order_within_each_part():
  y = np.array([0, 3, 1, 3, 2, 1])
  x = np.arange(6) * 10
  xf, yf, xr, yr = common.split_data((x, y), (1, 3))
  np.testing.assert_array_equal(yf, [3, 1, 3, 1])
  np.testing.assert_array_equal(xf, [10, 20, 30, 50])
  np.testing.assert_array_equal(yr, [0, 2])
  np.testing.assert_array_equal(xr, [0, 40])
  xf, yf, xr, yr = common.split_data(([[1.0], [2.0]], [4, 5]), ())
  assert xf.shape == (0, 1) and yf.shape == (0,) and len(yr) == 2


def test_subsample_per_class_counts_and_determinism():
  y = np.repeat(np.arange(4), [5, 1, 3, 8])
  x = np.arange(len(y)) * 2
  xs, ys = common.subsample_per_class(x, y, 3, np.random.default_rng(0))
  assert [int((ys == k).sum()) for k in range(4)] == [3, 1, 3, 3]
  # Samples keep their label and their order in the input.
  np.testing.assert_array_equal(y[xs // 2], ys)
  assert np.all(np.diff(xs) > 0)
  again = common.subsample_per_class(x, y, 3, np.random.default_rng(0))
  np.testing.assert_array_equal(again[0], xs)
  draws = {tuple(common.subsample_per_class(x, y, 3, np.random.default_rng(s))[0])
           for s in range(5)}
  assert len(draws) > 1
  # Capped by what exists: everything, in order.
  xs, ys = common.subsample_per_class(x, y, 100, np.random.default_rng(1))
  np.testing.assert_array_equal(xs, x)


def test_host_rng_follows_the_key():
  a = common.host_rng(jax.random.key(3)).integers(0, 2**31, 8)
  b = common.host_rng(jax.random.key(3)).integers(0, 2**31, 8)
  c = common.host_rng(jax.random.key(4)).integers(0, 2**31, 8)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  folded = common.host_rng(jax.random.fold_in(jax.random.key(3), 1)).integers(0, 2**31, 8)
  assert not np.array_equal(a, folded)


@pytest.mark.parametrize("n,batch_size,epochs", [(10, 4, 3), (8, 4, 2), (3, 16, 2),
                                                 (5, 5, 1)])
def test_epoch_batches(n, batch_size, epochs):
  batches = common.epoch_batches(n, batch_size, epochs, np.random.default_rng(0))
  batch = min(batch_size, n)
  steps = -(-n // batch)
  assert batches.shape == (epochs * steps, batch)
  for e in range(epochs):
    flat = batches[e * steps:(e + 1) * steps].ravel()
    # A permutation of every index, topped up from its own start.
    np.testing.assert_array_equal(np.sort(flat[:n]), np.arange(n))
    np.testing.assert_array_equal(flat[n:], flat[:steps * batch - n])
  again = common.epoch_batches(n, batch_size, epochs, np.random.default_rng(0))
  np.testing.assert_array_equal(again, batches)


def test_epoch_batches_differ_between_epochs_and_none_for_no_epochs():
  batches = common.epoch_batches(50, 10, 2, np.random.default_rng(0))
  assert not np.array_equal(batches[:5], batches[5:])
  empty = common.epoch_batches(50, 10, 0, np.random.default_rng(0))
  assert empty.shape == (0, 10)


# --- optimizers and fit ---------------------------------------------------------

def test_make_optimizer_kinds_and_injected_hyperparameters():
  adam = common.make_optimizer("adam", learning_rate=0.01)
  params = {"w": jnp.array([1.0, -2.0])}
  assert float(adam.init(params).hyperparams["learning_rate"]) == pytest.approx(0.01)
  sgd = common.make_optimizer("sgd", learning_rate=0.1, momentum=0.9, weight_decay=0.01)
  state = sgd.init(params)
  assert {k: float(v) for k, v in state.hyperparams.items()} == pytest.approx(
      {"learning_rate": 0.1, "momentum": 0.9, "weight_decay": 0.01})
  assert {k: float(v) for k, v in common.make_optimizer(
      "sgd", learning_rate=0.1).init(params).hyperparams.items()} == pytest.approx(
          {"learning_rate": 0.1, "momentum": 0.0, "weight_decay": 0.0})
  with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
    common.make_optimizer("rmsprop", learning_rate=0.1)


def test_sgd_is_torchs_momentum_and_weight_decay():
  # torch.optim.SGD: g += wd * w; buf = mu * buf + g; w -= lr * buf.
  lr, mu, wd = 0.1, 0.9, 0.01
  sgd = common.make_optimizer("sgd", learning_rate=lr, momentum=mu, weight_decay=wd)
  w = np.array([1.0, -2.0])
  grads = [np.array([0.5, 0.25]), np.array([-1.0, 2.0])]
  params = {"w": jnp.asarray(w, jnp.float32)}
  state = sgd.init(params)
  buf = np.zeros(2)
  for g in grads:
    updates, state = sgd.update({"w": jnp.asarray(g, jnp.float32)}, state, params)
    params = optax.apply_updates(params, updates)
    buf = mu * buf + g + wd * w
    w = w - lr * buf
  np.testing.assert_allclose(params["w"], w, rtol=1e-6)


def test_the_state_carries_the_hyperparameters():
  # fit_step's optimizer is built with learning rate 0: the state's rate rules.
  params = {"w": jnp.array([1.0])}
  zero = common.make_optimizer("sgd", learning_rate=0.0)
  state = common.make_optimizer("sgd", learning_rate=0.5).init(params)
  updates, _ = zero.update({"w": jnp.array([2.0])}, state, params)
  np.testing.assert_allclose(updates["w"], [-1.0])


def _toy_data(n=16, seed=0):
  """8x8 images whose bright quadrant is the label (K=4)."""
  rng = np.random.default_rng(seed)
  y = np.arange(n) % TINY_K
  x = rng.uniform(0.0, 0.3, (n, *TINY_SHAPE)).astype(np.float32)
  for i, k in enumerate(y):
    x[i, (k // 2) * 4:(k // 2) * 4 + 4, (k % 2) * 4:(k % 2) * 4 + 4, 0] += 0.7
  return x, y.astype(np.int32)


def test_fit_lowers_the_loss_with_one_program(tiny_classifier, executables):
  cls = tiny_classifier
  x, y = _toy_data()
  snaps = snapshot(cls.params, cls.stats)
  batches = np.tile(np.arange(16), (6, 1))
  watch = common.Stopwatch()
  model, info = common.fit(watch, cls, x, y, batches, kind="adam", learning_rate=1e-2)
  losses = info["losses"]
  assert len(losses) == 6 and all(np.isfinite(losses))
  assert losses[-1] < losses[0]
  # The first loss is the initial model's train-mode cross-entropy.
  logits, _ = jax.jit(F.classifier_apply, static_argnums=(0, 4))(
      cls.graphdef, cls.params, cls.stats, jnp.asarray(x), True)
  first = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(y)).mean()
  np.testing.assert_allclose(losses[0], first, rtol=1e-4)
  assert (jax.tree_util.tree_structure(info["first_grads"])
          == jax.tree_util.tree_structure(cls.params))
  assert model.graphdef == cls.graphdef
  assert_unchanged((cls.params, cls.stats), snaps)
  assert watch.compile_s > 0 and len(executables) == 1

  # Another learning rate: the same compiled step (the rate is an argument);
  # a rate of 0 leaves the parameters where they were, not the statistics.
  again = common.Stopwatch()
  frozen, _ = common.fit(again, cls, x, y, batches[:2], kind="adam", learning_rate=0.0)
  assert again.compile_s == 0.0 and again.needed_s == watch.needed_s
  assert len(executables) == 1
  assert_unchanged((frozen.params,), snapshot(cls.params))
  with pytest.raises(AssertionError):
    assert_unchanged((frozen.stats,), snapshot(cls.stats))


def test_fit_of_no_batches_returns_the_model():
  cls = F.SplitModel(None, {"w": jnp.zeros(2)}, {})
  model, info = common.fit(common.Stopwatch(), cls, np.zeros((0, 1)), np.zeros(0),
                           np.zeros((0, 4), np.int64), kind="sgd", learning_rate=0.1)
  assert info == {"losses": [], "first_grads": None}
  assert model.params is cls.params
