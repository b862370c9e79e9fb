"""The registry of unlearning methods: `geniu_jax/methods/registry.py`.

Declared access (`access_table`, `Grant` refusing undeclared and missing
inputs, `run_method` withholding what a method did not declare), and every
method run through `registry.run_method` on the shared smoke model
(conftest's `smoke`), lowering the forgotten classes' accuracy.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from geniu_jax.config import get_config
from geniu_jax.methods import registry
from geniu_jax.methods.registry import Access, AccessError, Grant
from geniu_jax.models import functional as F

from conftest import FORGET, unlearn

EXPECTED_ACCESS = {
    "geniu": {"model", "artifacts"},
    "geniu_impair_repair": {"model", "artifacts"},
    "geniu_post": {"model"},
    "geniu_post_impair_repair": {"model"},
    "retrain": {"model", "retained_data"},
    "gkt": {"model"},
    "gkt_vae": {"model", "artifacts"},
    "unsir": {"model", "retained_data"},
    "ir": {"model", "records", "retained_data"},
    "ir_relabel": {"model", "all_data"},
    "unrolling": {"model", "records", "all_data"},
}


# --- registry and declared access --------------------------------------------


def test_registered_methods_and_their_access():
  assert registry.access_table() == {k: sorted(v) for k, v in sorted(EXPECTED_ACCESS.items())}


def test_grant_refuses_undeclared_and_missing_inputs():
  model = F.SplitModel(None, None, None)
  grant = Grant("gkt", frozenset({Access.MODEL}), classifier=model, forget=FORGET,
                num_classes=10, image_shape=(28, 28, 1),
                retained_data=(np.zeros(1), np.zeros(1)), records={"x": 1})
  for field in ("retained_data", "all_data", "records", "artifacts"):
    with pytest.raises(AccessError, match="did not declare"):
      getattr(grant, field)
  assert grant.retained_classes == tuple(range(9))
  grant = Grant("ir", frozenset({Access.MODEL, Access.RECORDS}), classifier=model,
                forget=FORGET, num_classes=10, image_shape=(28, 28, 1))
  with pytest.raises(AccessError, match="none was provided"):
    grant.records


@pytest.fixture
def spy():
  seen = {}

  def fn(grant, cfg, key):
    for field in ("artifacts", "retained_data", "all_data", "records"):
      try:
        seen[field] = getattr(grant, field)
      except AccessError:
        seen[field] = AccessError
    return grant.classifier, {}

  registry.register("_spy", {Access.RETAINED_DATA}, "test spy")(fn)
  yield seen
  del registry.METHODS["_spy"]


def test_run_method_withholds_undeclared_inputs(spy):
  x, y = np.zeros((4, 28, 28, 1), np.float32), np.array([0, 9, 1, 9])
  available = registry.inputs_from(x, y, FORGET, artifacts=("g", "z"), records={"r": 1})
  registry.run_method("_spy", get_config("smoke"), jax.random.key(0),
                      classifier=F.SplitModel(None, None, None), forget=FORGET,
                      num_classes=10, image_shape=(28, 28, 1), **available)
  assert spy["artifacts"] is AccessError and spy["records"] is AccessError
  assert spy["all_data"] is AccessError
  np.testing.assert_array_equal(spy["retained_data"][1], [0, 1])  # class 9 filtered out
  with pytest.raises(ValueError, match="unknown inputs"):
    registry.run_method("_spy", get_config("smoke"), jax.random.key(0),
                        classifier=None, forget=FORGET, num_classes=10,
                        image_shape=(28, 28, 1), test_data=(x, y))
  with pytest.raises(ValueError, match="unknown method"):
    registry.run_method("nope", get_config("smoke"), jax.random.key(0), classifier=None,
                        forget=FORGET, num_classes=10, image_shape=(28, 28, 1))


# --- every method on the smoke model -------------------------------------------


@pytest.mark.parametrize("name", ["geniu", "geniu_impair_repair", "gkt", "unsir", "ir",
                                  "ir_relabel", "unrolling", "retrain"])
def test_method_lowers_forgotten_accuracy(smoke, name):
  model, info, after = unlearn(smoke, name)
  assert after["acc_f"] < smoke.before["acc_f"], (name, after, smoke.before)
  assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(model.params))
  assert info["unlearn_ms"] > 0
  assert info["compile_ms"] is None or info["compile_ms"] >= 0
