"""Tests for experiments.grid: cells and shards, the store, resuming, reports."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from experiments.grid import main as grid_main
from experiments.grid import report as R
from experiments.grid import runner
from experiments.grid import spec
from experiments.grid import store as store_lib
from geniu_jax.methods import registry

# Fields that differ between two runs of the same cell by nature (clocks).
CLOCK_FIELDS = ("unlearn_ms", "compile_ms", "finished", "info")


def tiny_config(source: str) -> spec.GridConfig:
  """Two cells of a 4-class 8x8 dataset: seconds per original on 2 cores."""
  tiny = spec.overrides(width=0.0625, lowering="native", epochs=2, prompt_steps=5,
                        generator_steps=5, batch_size=32, proxies_per_class=2)
  return spec.GridConfig(
      name="tiny", preset="smoke", datasets=(("tiny", source),), forget_sets=((3,), (2,)),
      seeds=(0,), validation_per_class=5,
      train_variants=(spec.TrainVariant("tiny", tiny),),
      methods=(spec.MethodSpec("original", "original"),
               spec.MethodSpec("geniu", "geniu", spec.overrides(unlearn_rounds=5)),
               spec.MethodSpec("retrain", "retrain", spec.overrides(epochs=1))))


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory) -> str:
  rng = np.random.default_rng(0)
  path = tmp_path_factory.mktemp("tinydata") / "tiny.npz"
  y_train, y_test = np.repeat(np.arange(4), 60), np.repeat(np.arange(4), 10)
  # Class-dependent brightness, so the classifier has something to learn.
  x_train = (rng.integers(0, 120, (240, 8, 8)) + 40 * y_train[:, None, None]).astype(np.uint8)
  x_test = (rng.integers(0, 120, (40, 8, 8)) + 40 * y_test[:, None, None]).astype(np.uint8)
  np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
  return f"npz:{path}"


@pytest.fixture(scope="module")
def uninterrupted(tiny_source, tmp_path_factory):
  """The store of one uninterrupted run of the tiny grid."""
  workdir = tmp_path_factory.mktemp("whole")
  runner.run(tiny_config(tiny_source), workdir)
  return workdir


def comparable(records):
  return [{k: v for k, v in r.items() if k not in CLOCK_FIELDS} for r in records]


# --- cells and shards -------------------------------------------------------

def test_cells_are_seed_major_and_keys_stable():
  cfg = spec.GridConfig(name="g", preset="cpu", datasets=(("a", "x"), ("b", "y")),
                        forget_sets=((0,), (1,)), seeds=(0, 1),
                        methods=(spec.MethodSpec("original", "original"),))
  cells = spec.cells(cfg)
  assert [c.seed for c in cells] == [0] * 4 + [1] * 4
  assert len({c.key for c in cells}) == 8
  # The source path is not part of a key: hosts may keep data elsewhere.
  moved = spec.cells(cfg, {"a": "elsewhere"})
  assert [c.key for c in moved] == [c.key for c in cells]
  assert moved[0].source == "elsewhere"


def test_training_setting_changes_the_original_key_unlearning_setting_does_not():
  base = spec.Cell("a", "x", (0,), None, spec.TrainVariant(), 0, "cpu", 0)
  epochs = spec.Cell("a", "x", (0,), None, spec.TrainVariant("e", spec.overrides(epochs=3)),
                     0, "cpu", 0)
  rounds = spec.Cell("a", "x", (0,), None,
                     spec.TrainVariant("r", spec.overrides(unlearn_rounds=7)), 0, "cpu", 0)
  assert epochs.key != base.key
  assert rounds.key == base.key
  m1 = spec.MethodSpec("geniu", "geniu")
  m2 = spec.MethodSpec("geniu", "geniu", spec.overrides(unlearn_rounds=7))
  assert spec.record_key(base, m1) != spec.record_key(base, m2)


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_shards_cover_every_cell_exactly_once(n):
  cfg = spec.GridConfig(name="g", preset="cpu", datasets=(("a", "x"), ("b", "y")),
                        forget_sets=tuple((k,) for k in range(10)), seeds=(0, 1, 2),
                        methods=(spec.MethodSpec("original", "original"),))
  cells = spec.cells(cfg)
  parts = [spec.shard(cells, i, n) for i in range(n)]
  flat = [c.key for part in parts for c in part]
  assert sorted(flat) == sorted(c.key for c in cells)
  assert len(flat) == len(set(flat)) == 60
  assert max(map(len, parts)) - min(map(len, parts)) <= 1
  assert spec.shard(cells, 0, n) == parts[0]  # deterministic


@pytest.mark.parametrize("bad", ["1", "2/2", "-1/3", "a/b", "0/0"])
def test_parse_shard_rejects(bad):
  with pytest.raises(ValueError, match="--shard"):
    spec.parse_shard(bad)


# --- the store --------------------------------------------------------------

def test_store_writes_whole_records_and_ignores_temporaries(tmp_path):
  store = store_lib.Store(tmp_path)
  store.write("b", {"dataset": "d", "seed": 1, "method": "m", "acc": float("nan")})
  store.write("a", {"dataset": "d", "seed": 0, "method": "m", "acc": 0.5})
  # What a writer killed mid-write leaves behind: a temporary, never a record.
  (tmp_path / store_lib.RECORDS / ".c.json.123.tmp").write_text('{"dataset": "d", "se')
  assert store.done() == {"a", "b"}
  records = store.read_records()
  assert [r["key"] for r in records] == ["a", "b"]
  assert records[1]["acc"] is None  # NaN is not JSON
  lines = (tmp_path / store_lib.RESULTS).read_text().splitlines()
  assert [json.loads(line)["key"] for line in lines] == ["a", "b"]


# --- running, resuming ------------------------------------------------------

def test_grid_fills_every_record(uninterrupted, tiny_source):
  records = store_lib.Store(uninterrupted).read_records()
  assert len(records) == 6
  assert {r["method"] for r in records} == {"original", "geniu", "retrain"}
  for r in records:
    assert 0.0 <= r["acc_r"] <= 1.0 and 0.0 <= r["acc_f"] <= 1.0
    assert r["val_acc_r"] is not None and len(r["per_class"]) == 4
    assert r["forget"] == r["majority"] and r["versions"]["jax"]
  for r in records:
    if r["method"] == "retrain":  # trained on the retained classes only
      assert r["info"]["train_samples"] == 73 - 55
  assert len(list((uninterrupted / runner.ORIGINALS).iterdir())) == 2


def test_evaluation_against_the_kept_retrained_model(uninterrupted, tiny_source, tmp_path):
  # Retrain first, so the later methods have their reference.
  base = tiny_config(tiny_source)
  retrain = next(m for m in base.methods if m.method == "retrain")
  cfg = base.replace(forget_sets=((3,),), evaluate=True,
                     methods=(retrain,) + tuple(m for m in base.methods if m is not retrain))
  originals = tmp_path / "originals"     # a copy of the trained originals
  shutil.copytree(uninterrupted / runner.ORIGINALS, originals)
  runner.run(cfg, tmp_path / "work", originals=originals)
  by_label = {r["method"]: r for r in store_lib.Store(tmp_path / "work").read_records()}
  kept = originals / f"{spec.cells(cfg, None)[0].key}.retrain"
  assert (kept / "metadata.json").exists()
  for r in by_label.values():
    assert 0.0 <= r["mia_confidence"] <= 1.0 and 0.0 <= r["mia_entropy"] <= 1.0
  assert "js_to_reference" not in by_label["retrain"]      # it is the reference
  for label in ("original", "geniu"):
    r = by_label[label]
    assert r["js_to_reference"] >= 0.0 and r["activation_distance"] >= 0.0
    assert r["reference_mia_confidence"] == by_label["retrain"]["mia_confidence"]
    assert "relearn_steps" in r and "ain" in r
  # The original still knows the class: it needs no relearning at all.
  assert by_label["original"]["relearn_steps"] == 0


def test_reevaluate_remakes_records_made_without_evaluation(uninterrupted, tiny_source,
                                                           tmp_path):
  base = tiny_config(tiny_source).replace(forget_sets=((3,),))
  work = tmp_path / "work"
  shutil.copytree(uninterrupted, work)   # records made with evaluation off
  before = {r["key"]: r for r in store_lib.Store(work).read_records()}
  cfg = base.replace(evaluate=True)
  runner.run(cfg, work)                  # without --reevaluate: nothing is redone
  assert {r["key"]: r for r in store_lib.Store(work).read_records()} == before
  runner.run(cfg, work, reevaluate=True)
  after = {r["key"]: r for r in store_lib.Store(work).read_records()}
  assert after.keys() == before.keys()   # replaced, not duplicated
  remade = [k for k, r in after.items() if r["forget"] == [3]]
  assert len(remade) == 3
  for k in remade:
    assert "mia_confidence" in after[k]
    assert after[k]["acc_r"] == before[k]["acc_r"]   # same seeds, same numbers
  untouched = [k for k in after if k not in remade]
  assert all(after[k] == before[k] for k in untouched)


def test_rerun_skips_finished_records(uninterrupted, tiny_source, monkeypatch):
  def boom(*args, **kwargs):
    raise AssertionError("a finished record was run again")

  monkeypatch.setattr(registry, "run_method", boom)
  runner.run(tiny_config(tiny_source), uninterrupted)


def test_crash_then_rerun_equals_uninterrupted(uninterrupted, tiny_source, tmp_path,
                                               monkeypatch):
  calls = []
  real = registry.run_method

  def crashing(name, *args, **kwargs):
    calls.append(name)
    if len(calls) == 3:  # second cell, first method after the original
      raise KeyboardInterrupt("preempted")
    return real(name, *args, **kwargs)

  monkeypatch.setattr(registry, "run_method", crashing)
  with pytest.raises(KeyboardInterrupt):
    runner.run(tiny_config(tiny_source), tmp_path)
  assert len(store_lib.Store(tmp_path).done()) == 4
  monkeypatch.setattr(registry, "run_method", real)
  runner.run(tiny_config(tiny_source), tmp_path)
  resumed = store_lib.Store(tmp_path).read_records()
  whole = store_lib.Store(uninterrupted).read_records()
  assert len(resumed) == len({r["key"] for r in resumed}) == 6
  assert comparable(resumed) == comparable(whole)


def test_shards_fill_one_workdir(uninterrupted, tiny_source, tmp_path):
  cfg = tiny_config(tiny_source)
  # Reuse the trained originals; each shard runs only its own cells.
  originals = uninterrupted / runner.ORIGINALS
  runner.run(cfg, tmp_path, shard=(1, 2), originals=tmp_path / "none", train=False)
  assert not store_lib.Store(tmp_path).done()  # no original there: nothing ran
  runner.run(cfg, tmp_path, shard=(1, 2), originals=originals, train=False)
  assert {r["forget"][0] for r in store_lib.Store(tmp_path).read_records()} == {2}
  runner.run(cfg, tmp_path, shard=(0, 2), originals=originals)
  assert comparable(store_lib.Store(tmp_path).read_records()) == comparable(
      store_lib.Store(uninterrupted).read_records())


# --- reports ----------------------------------------------------------------

def test_report_means_and_std_of_a_hand_made_store(tmp_path, tiny_source):
  cfg = tiny_config(tiny_source).replace(seeds=(0, 1))
  store = store_lib.Store(tmp_path)
  values = {}
  for i, (cell, method) in enumerate(spec.iter_work(cfg, spec.cells(cfg))):
    acc_r, acc_f = 0.1 * (i % 5), 0.01 * i
    values.setdefault(method.label, []).append((acc_r, acc_f))
    store.write(spec.record_key(cell, method), {
        "dataset": "tiny", "method": method.label, "forget": list(cell.forget),
        "seed": cell.seed, "original": cell.key, "acc_r": acc_r, "acc_f": acc_f})
  store.write("stale", {"dataset": "tiny", "method": "geniu", "acc_r": 9.0, "acc_f": 9.0})

  def view(records, cfg):
    return R.accuracy_table(records, cfg, "t", lambda method, metric: None)

  R.write(cfg, tmp_path, [R.View("T", view)])
  rows = {(r["method"], r["metric"]): r for r in csv.DictReader((tmp_path / "t.csv").open())}
  for label, pairs in values.items():
    for j, metric in enumerate(("acc_r", "acc_f")):
      got = rows[(label, metric)]
      want = np.asarray([p[j] for p in pairs])
      assert int(got["n"]) == 4  # 2 classes x 2 seeds; the stale record is left out
      assert float(got["mean"]) == pytest.approx(want.mean())
      assert float(got["std"]) == pytest.approx(want.std())
  assert "| geniu |" in (tmp_path / "report.md").read_text()


def test_retired_methods_are_reported_and_never_run(tmp_path, tiny_source):
  cfg = tiny_config(tiny_source)
  retired = spec.MethodSpec("geniu_old", "geniu", spec.overrides(unlearn_rounds=7))
  cfg = cfg.replace(methods=cfg.methods[:1], retired=(retired,))
  assert retired not in [m for _, m in spec.iter_work(cfg, spec.cells(cfg))]
  store = store_lib.Store(tmp_path)
  for cell in spec.cells(cfg):
    for method in (cfg.methods[0], retired):
      store.write(spec.record_key(cell, method), {
          "dataset": "tiny", "method": method.label, "forget": list(cell.forget),
          "seed": cell.seed, "original": cell.key, "acc_r": 0.5, "acc_f": 0.0})
  seen = []
  R.write(cfg, tmp_path, [R.View("T", lambda records, cfg: (
      seen.extend(r["method"] for r in records), R.Section("", []))[1])])
  assert seen.count("geniu_old") == seen.count("original") == 2


def test_prune_deletes_only_records_the_config_no_longer_makes(tmp_path, tiny_source, capsys):
  cfg = tiny_config(tiny_source)
  store = store_lib.Store(tmp_path)
  keys = [spec.record_key(c, m) for c, m in spec.iter_work(cfg, spec.cells(cfg))]
  for key in keys + ["stale"]:
    store.write(key, {"dataset": "tiny", "method": "geniu", "acc_r": 0.5, "acc_f": 0.0})
  assert grid_main.main(lambda variant: cfg, [], ["--workdir", str(tmp_path), "--prune"]) == 0
  assert "deleted 1 records" in capsys.readouterr().out
  assert store.done() == set(keys)
  assert len(store_lib.load_jsonl(tmp_path / store_lib.RESULTS)) == len(keys)


def test_main_rejects_bad_arguments(capsys):
  def get_config(variant):
    return tiny_config("npz:/nonexistent.npz")

  for argv in (["--shard", "3/2"], ["--methods", "nope"], ["--datasets", "nope"],
               ["--data", "noequals"], ["--prune", "--methods", "geniu"]):
    with pytest.raises(SystemExit) as err:
      grid_main.main(get_config, [], ["--workdir", "/tmp/x", *argv])
    assert err.value.code == 2
  assert grid_main.main(get_config, [], ["--workdir", "/tmp/unused-grid"]) == 2
  assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: ")


@pytest.mark.parametrize("flag", ["--report", "--prune"])
def test_report_and_prune_of_a_missing_work_dir_fail_in_one_line(tmp_path, tiny_source, capsys,
                                                                flag):
  workdir = tmp_path / "never_run"
  code = grid_main.main(lambda variant: tiny_config(tiny_source), [],
                        ["--workdir", str(workdir), flag])
  assert code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: no work dir")
  assert not workdir.exists()


def test_restrict_to_seeds(tiny_source):
  cfg = tiny_config(tiny_source).replace(seeds=(0, 1, 2))
  assert grid_main.restrict(cfg, None, None, [2, 0]).seeds == (0, 2)
  with pytest.raises(ValueError, match="unknown seeds"):
    grid_main.restrict(cfg, None, None, [5])
