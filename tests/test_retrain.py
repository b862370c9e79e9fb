"""Retraining from scratch on the retained classes: `geniu_jax/methods/retrain.py`.

What the method hands the training phase (retained samples only, no GENIU
phase, the retained validation split for the plateau rule) and what it
reports, with `train` replaced by a spy; then one tiny real run, the same
model as training directly on the retained samples with the config's seed.
"""

from __future__ import annotations

import types

import jax
import numpy as np
import pytest

from geniu_jax.config import get_config
from geniu_jax.geniu import train as train_lib
from geniu_jax.methods import registry
from geniu_jax.methods.registry import AccessError
from geniu_jax.models import functional as F

from conftest import (TINY_K, TINY_LOWERING, TINY_SHAPE, TINY_WIDTH, assert_trees_identical,
                      pure_leaves)

FORGOTTEN = (1,)


def _data(n, seed):
  rng = np.random.default_rng(seed)
  y = (np.arange(n) % TINY_K).astype(np.int32)
  return rng.uniform(size=(n, *TINY_SHAPE)).astype(np.float32), y


@pytest.fixture
def spy(monkeypatch):
  seen = types.SimpleNamespace(calls=[], history=[{"train_acc": 0.5}, {"train_acc": 0.75}])
  trained = F.SplitModel("trained", None, None)

  def fake_train(cfg, x, y, num_classes, **kwargs):
    seen.calls.append(types.SimpleNamespace(cfg=cfg, x=x, y=y, num_classes=num_classes,
                                            **kwargs))
    return train_lib.TrainResult(trained, None, None, seen.history, None)

  monkeypatch.setattr(train_lib, "train", fake_train)
  seen.trained = trained
  return seen


def _run(cfg, x, y, validation=None, key=0):
  original = F.SplitModel("original", None, None)
  return registry.run_method(
      "retrain", cfg, jax.random.key(key), classifier=original, forget=FORGOTTEN,
      num_classes=TINY_K, image_shape=TINY_SHAPE,
      **registry.inputs_from(x, y, FORGOTTEN, validation=validation))


def test_trains_a_fresh_classifier_on_the_retained_samples_only(spy):
  x, y = _data(12, 0)
  cfg = get_config("smoke")
  model, info = _run(cfg, x, y, validation=_data(8, 1))
  assert model is spy.trained
  (call,) = spy.calls
  keep = y != FORGOTTEN[0]
  np.testing.assert_array_equal(call.y, y[keep])
  np.testing.assert_array_equal(call.x, x[keep])
  assert call.cfg is cfg and call.num_classes == TINY_K   # the head keeps all K outputs
  assert call.geniu is False and call.recorder is None and call.log is None
  assert call.validation is None               # one_cycle: no validation loss is read
  assert isinstance(info.pop("unlearn_ms"), float)
  assert info == {"compile_ms": None, "timing": "wall incl. compile", "epochs": cfg.epochs,
                  "train_acc": 0.75, "train_samples": int(keep.sum())}


def test_the_plateau_rule_gets_the_retained_validation_split(spy):
  x, y = _data(12, 0)
  xv, yv = _data(8, 1)
  cfg = get_config("smoke", lr_schedule="plateau")
  _run(cfg, x, y, validation=(xv, yv))
  (call,) = spy.calls
  keep = yv != FORGOTTEN[0]
  np.testing.assert_array_equal(call.validation[1], yv[keep])
  np.testing.assert_array_equal(call.validation[0], xv[keep])
  with pytest.raises(AccessError, match="retained_validation"):
    _run(cfg, x, y)
  assert len(spy.calls) == 1


def test_no_history_reports_no_training_accuracy(spy):
  spy.history.clear()
  _, info = _run(get_config("smoke"), *_data(12, 0))
  assert info["train_acc"] is None


def test_a_tiny_retrain_is_training_on_the_retained_samples_with_the_seed():
  x, y = _data(48, 2)
  cfg = get_config("smoke", width=TINY_WIDTH, lowering=TINY_LOWERING, batch_size=16,
                   epochs=1)
  model, info = _run(cfg, x, y, key=7)
  keep = y != FORGOTTEN[0]
  assert info["train_samples"] == 36 and info["epochs"] == 1
  direct = train_lib.train(cfg, x[keep], y[keep], TINY_K, geniu=False, recorder=None,
                           log=None)
  assert_trees_identical(model.params, direct.classifier.params)
  assert_trees_identical(model.stats, direct.classifier.stats)
  assert pure_leaves(model.params)["['head']['kernel']"].shape[-1] == TINY_K
