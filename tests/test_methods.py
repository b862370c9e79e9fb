"""Tests for geniu_jax.methods: declared access, baseline records, every method.

One tiny smoke model (embedded Fashion-MNIST subset, class 9 the majority,
trained with GENIU's training phase and the baseline recorder) is trained once
per module and shared. The native conv lowering is used because at the smoke
width it runs as fast as the patches lowering and compiles about twice as fast,
and compilation dominates these tests.
"""

from __future__ import annotations

import dataclasses
import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from geniu_jax import checkpoint as ckpt_lib
from geniu_jax import cli, runs
from geniu_jax.config import get_config
from geniu_jax.geniu import train as train_lib
from geniu_jax.methods import gkt as gkt_lib
from geniu_jax.methods import records, registry
from geniu_jax.methods.registry import Access, AccessError, Grant
from geniu_jax.models import functional as F

FORGET = (9,)

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


@pytest.fixture(scope="module")
def smoke():
  cfg = get_config("smoke", lowering="native")
  data = runs.prepare_data("embedded", [9], cfg.imbalance, cfg.seed, log=None)
  result = train_lib.train(cfg, data.x_train, data.y_train, data.num_classes,
                           recorder=records.default_recorder(), log=None)
  before = runs.evaluate(result.classifier, data.x_test, data.y_test, data.num_classes, FORGET)
  available = registry.inputs_from(data.x_train, data.y_train, FORGET,
                                   artifacts=(result.generator, result.prompts),
                                   records=result.records)
  return types.SimpleNamespace(cfg=cfg, data=data, result=result, before=before,
                               available=available)


def _unlearn(smoke, name: str, key: int = 0):
  model, info = registry.run_method(
      name, smoke.cfg, jax.random.key(key), classifier=smoke.result.classifier,
      forget=FORGET, num_classes=smoke.data.num_classes,
      image_shape=smoke.data.x_train.shape[1:], **smoke.available)
  after = runs.evaluate(model, smoke.data.x_test, smoke.data.y_test, smoke.data.num_classes,
                        FORGET)
  return model, info, after


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


# --- records -----------------------------------------------------------------


def test_records_hold_every_batch_of_the_majority(smoke):
  rec = records.check_records(smoke.result.records)
  n = len(smoke.data.y_train)
  steps = smoke.cfg.epochs * (n // smoke.cfg.batch_size)
  assert int(rec["steps"]) == steps
  assert int(rec["ir_batches"][9]) == steps  # the majority is in every batch
  assert np.all(np.asarray(rec["unroll_step"]) >= 0)
  # Every batch held class 9, so subtracting its updates gives back w_0.
  cfg = smoke.cfg
  init_key = jax.random.split(jax.random.key(cfg.seed), 5)[0]
  w0 = F.make_classifier(10, smoke.data.x_train.shape[1:], cfg.width, cfg.lowering, init_key)
  final = records.state_to_tree(smoke.result.classifier.params)
  back = jax.tree.map(lambda w, u: w - u[9], final, rec["ir_updates"])
  for got, want in zip(jax.tree.leaves(back), jax.tree.leaves(records.state_to_tree(w0.params))):
    np.testing.assert_allclose(got, want, atol=2e-5)
  assert records.record_bytes(rec) == 8 * 10 * sum(
      np.size(p) for p in jax.tree.leaves(smoke.result.classifier.params)) + 4 * 21


def test_records_round_trip_through_checkpoint(smoke, tmp_path):
  res = smoke.result
  meta = ckpt_lib.make_metadata(smoke.cfg, source="embedded", image_shape=(28, 28, 1),
                                num_classes=10, majority=[9])
  ckpt_lib.save(tmp_path / "ck", res.classifier, res.generator, res.prompts, meta,
                records=res.records)
  restored = records.check_records(ckpt_lib.restore(tmp_path / "ck").records)
  want = records.check_records(res.records)
  assert jax.tree.structure(restored) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b)
  like = smoke.result.classifier.params
  tree = records.state_to_tree(like)
  back = records.tree_to_state(tree, like)
  assert jax.tree.structure(back) == jax.tree.structure(like)
  with pytest.raises(ValueError, match="record-baselines"):
    records.check_records({"something": 1})


# --- every method on the smoke model -------------------------------------------


@pytest.mark.parametrize("name", ["geniu", "geniu_impair_repair", "gkt", "unsir", "ir",
                                  "ir_relabel", "unrolling", "retrain"])
def test_method_lowers_forgotten_accuracy(smoke, name):
  model, info, after = _unlearn(smoke, name)
  assert after["acc_f"] < smoke.before["acc_f"], (name, after, smoke.before)
  assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(model.params))
  assert info["unlearn_ms"] > 0
  assert info["compile_ms"] is None or info["compile_ms"] >= 0


@pytest.mark.parametrize("name", ["geniu_post", "geniu_post_impair_repair"])
def test_post_training_proxy_ablations_run(smoke, name):
  # Table 9's point is that these proxies forget badly on an imbalanced model,
  # so only that they run and change the model is checked, not the direction.
  model, info, after = _unlearn(smoke, name)
  assert info["proxy"] == "post" and info["rounds_run"] > 0
  moved = [float(jnp.max(jnp.abs(a - b))) for a, b in zip(
      jax.tree.leaves(model.params), jax.tree.leaves(smoke.result.classifier.params))]
  assert max(moved) > 0 and 0.0 <= after["acc_f"] <= 1.0


def test_each_run_counts_its_own_compilation_and_reuses_the_program(smoke):
  from geniu_jax.methods import geniu_unlearning
  _, first, _ = _unlearn(smoke, "geniu", key=1)
  hits = geniu_unlearning.program.cache_info().hits
  _, second, _ = _unlearn(smoke, "geniu", key=2)
  # The jitted program is reused; its compilation counts in every run, so
  # compile_ms does not depend on what ran before in the process.
  assert geniu_unlearning.program.cache_info().hits == hits + 1
  assert first["compile_ms"] > 0 and second["compile_ms"] > 0
  assert second["rounds_run"] == first["rounds_run"]


def test_gkt_student_learns_when_the_gate_is_open(smoke):
  grant = Grant("gkt", registry.METHODS["gkt"].access, classifier=smoke.result.classifier,
                forget=FORGET, num_classes=10, image_shape=(28, 28, 1))
  gkt_lib.gkt(grant, smoke.cfg, jax.random.key(0),
              settings=dataclasses.replace(gkt_lib.PRESETS["smoke"], threshold=0.5))
  misses = gkt_lib._program.cache_info().misses
  settings = dataclasses.replace(gkt_lib.PRESETS["smoke"], threshold=1.0)
  _, info = gkt_lib.gkt(grant, smoke.cfg, jax.random.key(0), settings=settings)
  assert info["kept_fraction"] == 1.0 and info["skipped_batches"] == 0.0
  # The threshold is an argument: no new loop program.
  assert gkt_lib._program.cache_info().misses == misses


def test_gkt_gate_and_attention():
  logits = jnp.log(jnp.array([[0.98, 0.01, 0.01], [0.5, 0.495, 0.005]]))
  np.testing.assert_array_equal(gkt_lib.gate(logits, jnp.array([2]), 0.01), [True, True])
  np.testing.assert_array_equal(gkt_lib.gate(logits, jnp.array([1, 2]), 0.01), [True, False])
  idx, n = gkt_lib.kept_first(jnp.array([False, True, False, True]))
  assert int(n) == 2 and sorted(np.asarray(idx).tolist()) == [1, 1, 3, 3]
  a = gkt_lib.attention(jnp.ones((2, 4, 4, 3)))
  np.testing.assert_allclose(jnp.linalg.norm(a, axis=1), 1.0, rtol=1e-6)


# --- geniu unlearn --method NAME ------------------------------------------------


def _restore_works(path) -> bool:
  try:
    params = ckpt_lib.restore(path).classifier.params
  except Exception:  # noqa: BLE001 -- any failure means the CLI test cannot run
    return False
  return isinstance(params, nnx.State)


def test_cli_unlearn(smoke, tmp_path, capsys):
  res = smoke.result
  meta = ckpt_lib.make_metadata(smoke.cfg, source="embedded", image_shape=(28, 28, 1),
                                num_classes=10, majority=[9])
  ckpt_lib.save(tmp_path / "ck", res.classifier, res.generator, res.prompts, meta,
                records=res.records)
  ckpt_lib.save(tmp_path / "bare", res.classifier, None, None, meta)
  if not _restore_works(tmp_path / "ck"):
    pytest.skip("checkpoint.restore does not rebuild the classifier "
                "(nnx.replace_by_pure_dict works in place in flax 0.12)")
  assert cli.main(["unlearn", "--ckpt", str(tmp_path / "ck"), "--forget", "9",
                   "--method", "unrolling", "--out", str(tmp_path / "out"), "--json"]) == 0
  report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert report["method"] == "unrolling" and report["forget"] == [9]
  assert report["unlearn_ms"] > 0 and report["compile_ms"] >= 0
  unlearned = ckpt_lib.restore(tmp_path / "out")
  assert unlearned.metadata["unlearned"]["method"] == "unrolling"
  assert cli.main(["unlearn", "--ckpt", str(tmp_path / "bare"), "--forget", "9",
                   "--method", "ir", "--out", str(tmp_path / "out2")]) == 2
  assert "--record-baselines" in capsys.readouterr().err
  assert cli.main(["unlearn", "--ckpt", str(tmp_path / "ck"), "--forget", "9",
                   "--method", "nope", "--out", str(tmp_path / "out3")]) == 2


def test_unsir_reference_setting_reproduces_the_notebooks_sizes_and_quirks(smoke):
  from geniu_jax.methods import unsir as unsir_lib
  _, ours, _ = _unlearn(smoke, "unsir")
  recommended = unsir_lib.PRESETS["smoke"]
  assert ours["noise_samples"] == recommended.noise_batch * recommended.noise_copies
  assert ours["noise_labels"] == [9]
  ref_cfg = smoke.cfg.replace(baseline_setting="reference")
  model, info = registry.run_method(
      "unsir", ref_cfg, jax.random.key(0), classifier=smoke.result.classifier, forget=FORGET,
      num_classes=smoke.data.num_classes, image_shape=smoke.data.x_train.shape[1:],
      **smoke.available)
  # One 1-channel image x 20 copies, labelled 0, beside the first 1,000 of each class.
  assert info["noise_samples"] == 20 and info["noise_labels"] == [0]
  retained = np.asarray(smoke.available["retained_data"][1])
  expected = sum(min(1000, int((retained == k).sum())) for k in np.unique(retained))
  assert info["retained_subset"] == expected
  assert info["impair_samples"] == 20 + expected
  from geniu_jax.methods import common
  with pytest.raises(ValueError, match="no `reference` setting"):
    common.by_preset(ref_cfg, {"paper": "ours"})


def test_ir_reference_setting_is_the_amnesiac_codes(smoke):
  from geniu_jax.methods import common, ir as ir_lib
  ref = common.by_preset(smoke.cfg.replace(baseline_setting="reference"), ir_lib.PRESETS,
                         ir_lib.REFERENCE)
  assert (ref.repair_epochs, ref.repair_lr, ref.batch_size) == (10, 1e-3, 64)
  assert (ref.relabel_epochs, ref.relabel_lr) == (10, 1e-3)
  assert common.by_preset(smoke.cfg, ir_lib.PRESETS, ir_lib.REFERENCE) == ir_lib.PRESETS["smoke"]


def test_unrolling_reference_has_no_training_time_correction(smoke):
  model, info = registry.run_method(
      "unrolling", smoke.cfg.replace(baseline_setting="reference"), jax.random.key(0),
      classifier=smoke.result.classifier, forget=FORGET, num_classes=smoke.data.num_classes,
      image_shape=smoke.data.x_train.shape[1:], **smoke.available)
  assert info["train_correction"] is False and info["updates"] == 10


def test_gkt_reference_quirks(smoke):
  # threshold 1: every pseudo sample passes the gate, so every step updates.
  ref = dataclasses.replace(gkt_lib.REFERENCE, pseudo_batches=3, batch_size=16,
                            generator_width=0.125, threshold=1.0)
  run = gkt_lib.train_gkt(smoke.result.classifier, FORGET, smoke.data.num_classes,
                          smoke.data.x_train.shape[1:], smoke.cfg, key=jax.random.key(0),
                          settings=ref)
  # Eval-mode student: its BatchNorm statistics never leave their initial 0 / 1.
  stats = [np.asarray(v) for v in jax.tree.leaves(run.student.stats)]
  assert all(np.all((v == 0) | (v == 1)) for v in stats)
  assert np.isfinite(run.info["student_loss"])
  # A final BatchNorm, not a sigmoid: images leave [0, 1], about zero-mean.
  x = np.asarray(gkt_lib.sample(run.generator, key=jax.random.key(1), batches=1,
                                batch_size=16))
  assert x.min() < 0.0 and x.max() > 1.0 and abs(float(x.mean())) < 0.1
  ours = F.split(gkt_lib.Generator(tuple(smoke.data.x_train.shape[1:]), 128, 0.125,
                                   lowering="native", rngs=nnx.Rngs(params=jax.random.key(2))))
  y = np.asarray(gkt_lib.generate(ours, jax.random.normal(jax.random.key(3), (16, 128))))
  assert 0.0 <= y.min() and y.max() <= 1.0
