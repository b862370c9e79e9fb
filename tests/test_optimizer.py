"""The classifier's optimizer (geniu.optimizer): one-cycle, plateau, clipping."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from geniu_jax import runs
from geniu_jax.config import Config
from geniu_jax.geniu import optimizer as opt_lib
from geniu_jax.geniu import train as train_lib

from conftest import TINY_K
from test_train import quadrant_data, tiny_cfg


def _torch_plateau(losses, lr, factor=0.5, patience=3, rtol=1e-4):
  """torch.optim.lr_scheduler.ReduceLROnPlateau(mode="min", threshold_mode="rel"),
  written out: the rate of every epoch after stepping on `losses` one by one."""
  best, bad, rates = float("inf"), 0, []
  for loss in losses:
    if loss < best * (1 - rtol):
      best, bad = loss, 0
    else:
      bad += 1
    if bad > patience:
      lr, bad = lr * factor, 0
    rates.append(lr)
  return rates


@pytest.mark.parametrize("losses", [
    [1.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9],
    [1.0, 0.8, 0.81, 0.79, 0.80, 0.80, 0.80, 0.80, 0.5, 0.6, 0.6, 0.6, 0.6, 0.6],
    [2.0] * 12])
def test_plateau_rule_matches_torch_reduce_lr_on_plateau(losses):
  cfg = Config(lr_schedule="plateau", lr=0.01)
  opt = opt_lib.classifier_optimizer(cfg, 100)
  opt_state = opt.init({"w": jnp.zeros(3)})
  plateau, rates = opt_lib.plateau_init(), []
  for loss in losses:
    plateau, opt_state = opt_lib.plateau_step(cfg, plateau, opt_state, loss)
    rates.append(float(opt_state.hyperparams["learning_rate"]))
  np.testing.assert_allclose(rates, _torch_plateau(losses, 0.01), rtol=1e-6)


def test_one_cycle_is_coupled_adam_on_the_one_cycle_schedule():
  cfg = Config(lr=0.01, weight_decay=1e-4)
  params = {"w": jnp.linspace(-1.0, 1.0, 5)}
  want_opt = optax.chain(optax.add_decayed_weights(1e-4), optax.scale_by_adam(),
                         optax.scale_by_learning_rate(optax.cosine_onecycle_schedule(20, 0.01)))
  got_opt = opt_lib.classifier_optimizer(cfg, 20)
  got_state, want_state = got_opt.init(params), want_opt.init(params)
  for step in range(5):
    grads = {"w": jnp.sin(params["w"] * (step + 1))}
    got, got_state = got_opt.update(grads, got_state, params)
    want, want_state = want_opt.update(grads, want_state, params)
    np.testing.assert_array_equal(got["w"], want["w"])


def test_gradient_values_are_clipped_before_the_decay():
  cfg = Config(lr=1.0, weight_decay=0.5, grad_clip_value=0.1)
  params = {"w": jnp.asarray([2.0, 2.0, 0.0])}
  grads = {"w": jnp.asarray([5.0, -5.0, 0.05])}
  # Adam's first step divides by |g| and hides the scale; sgd-like check on
  # the parts before it: clip then add 0.5 * w.
  clipped = optax.chain(optax.clip(0.1), optax.add_decayed_weights(0.5))
  got, _ = clipped.update(grads, clipped.init(params), params)
  np.testing.assert_allclose(got["w"], [0.1 + 1.0, -0.1 + 1.0, 0.05])
  opt = opt_lib.classifier_optimizer(cfg, 10)
  want = optax.chain(optax.clip(0.1), optax.add_decayed_weights(0.5), optax.scale_by_adam(),
                     optax.scale_by_learning_rate(optax.cosine_onecycle_schedule(10, 1.0)))
  a, _ = opt.update(grads, opt.init(params), params)
  b, _ = want.update(grads, want.init(params), params)
  np.testing.assert_array_equal(a["w"], b["w"])


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_config_rejects_a_bad_clip_value(bad):
  with pytest.raises(ValueError, match="grad_clip_value"):
    Config(grad_clip_value=bad)


def test_plateau_training_steps_on_the_validation_loss():
  labels = np.repeat(np.arange(TINY_K), 16)
  x, y = quadrant_data(labels, 0), labels
  x_val, y_val = quadrant_data(np.arange(TINY_K).repeat(4), 1), np.arange(TINY_K).repeat(4)
  cfg = tiny_cfg(lr_schedule="plateau", grad_clip_value=0.1, epochs=3)
  result = train_lib.train(cfg, x, y, TINY_K, geniu=False, log=None,
                           validation=(x_val, y_val))
  rows = result.history
  assert [r["lr"] for r in rows][0] == pytest.approx(cfg.lr)
  model = result.classifier
  # The last row's loss is the trained model's validation loss.
  assert rows[-1]["val_loss"] == pytest.approx(
      opt_lib.validation_loss(model, x_val, y_val), rel=1e-5)
  assert all(np.isfinite(r["val_loss"]) for r in rows)


def test_plateau_needs_a_held_out_split():
  labels = np.repeat(np.arange(TINY_K), 4)
  x = quadrant_data(labels, 0)
  cfg = tiny_cfg(lr_schedule="plateau", epochs=1)
  with pytest.raises(ValueError, match="validation split"):
    train_lib.train(cfg, x, labels, TINY_K, geniu=False, log=None)
  data = runs.TrainingData(x, labels, x, labels, TINY_K, "tiny", (0,), np.bincount(labels))
  with pytest.raises(ValueError, match="never the test split"):
    runs.train_geniu(cfg, data, geniu=False, log=None)
