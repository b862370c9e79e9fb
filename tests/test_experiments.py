"""Tests for Table 1, the GENIU setting selection, the appendix tables (7, 8, 10, 11, 12) and the
mock CIFAR-10 pipeline check.

    python -m pytest tests/test_experiments.py -x -q    # ~4 min on 2 busy CPU cores

Each module's `smoke` config runs end to end through its command line
(`python -m experiments.<name>`), with the Fashion-MNIST source replaced
(`--data`) by a tiny 10-class 8x8 npz; its report is then written in this
process. The module-wide originals directory lets the cells that coincide
(class 9, max entropy, t = none, B = 2: the smoke preset's defaults) share
one original. The `cpu` and `paper` configs are only built, never run: their
sizes, and that their default cells are Table 1's (so a Table 1 run's
originals serve them).

On tiny data the runs are nearly all XLA compilation, most of it LLVM
optimising code that then runs for milliseconds; so they run in child
processes with LLVM's optimisation off (XLA_FLAGS, which a process reads
once: this session's own flags stay as they are) and one compilation cache,
which takes the run time from ~10 to ~4 minutes on 2 busy cores.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments import (cifar_pipeline, geniu_setting, table1, table2, table7, table8, table10,
                         table11, table12)
from experiments.grid import runner, spec
from experiments.grid import store as store_lib
from geniu_jax.config import get_config as preset
from geniu_jax.methods import common, gkt

pytest.importorskip("matplotlib")



@pytest.fixture(scope="module")
def jit_cache(compilation_cache):
  # The children's programs (LLVM optimisation off) get keys of their own in
  # the session's cache, so they are shared with test_experiments_analyses.
  return compilation_cache


ROOT = Path(__file__).resolve().parent.parent
FAST_COMPILE = "--xla_backend_optimization_level=0"


def run_smoke(module, workdir, source, originals, jit_cache) -> list[dict]:
  """Fills a store with a smoke config through the command line (a child
  process, see the module docstring), then writes its report here."""
  argv = ["--config", "smoke", "--workdir", str(workdir), "--originals", str(originals)]
  if source:
    argv += ["--data", f"fashion_mnist={source}"]
  env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip(),
             PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
  proc = subprocess.run([sys.executable, "-m", module.__name__, *argv,
                         "--compilation-cache", str(jit_cache)],
                        capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert module.main(argv + ["--report"]) == 0
  assert (workdir / "report.md").exists()
  return store_lib.Store(workdir).read_records()


def read_csv(path) -> list[dict]:
  with path.open() as f:
    return list(csv.DictReader(f))


def paper_cell(rows, metric="acc_r", **match) -> float:
  """The paper's number of the one CSV row matching `match` and `metric`."""
  hits = [r for r in rows if r.get("metric") == metric
          and all(r.get(k) == str(v) for k, v in match.items())]
  assert len(hits) == 1, (match, metric, len(hits))
  return float(hits[0]["paper"])


def by(records, *fields) -> dict:
  return {tuple(r[f] if not isinstance(r[f], list) else tuple(r[f]) for f in fields): r
          for r in records}


# --- configs (built, never run) -----------------------------------------------

def _keys(cfg) -> set[str]:
  return {c.key for c in spec.cells(cfg)}


def test_cpu_and_paper_configs_share_table1_originals():
  t1 = _keys(table1.get_config("cpu"))
  for module, default_label, count in ((table8, None, 4), (table10, "max_entropy", 30),
                                       (table11, "none", 12), (table12, "5", 18)):
    cfg = module.get_config("cpu")
    cells = spec.cells(cfg)
    assert len(cells) == count, module.__name__
    if default_label is None:
      shared = [c for c in cells if c.imbalance == 0.1]
    else:
      shared = [c for c in cells if c.variant.label == default_label]
    assert shared and {c.key for c in shared} <= t1, module.__name__
    others = [c for c in cells if c not in shared]
    assert not {c.key for c in others} & t1, module.__name__
  # Table 7's cells (two majority classes) are its own.
  assert len(spec.cells(table7.get_config("cpu"))) == 2
  assert not _keys(table7.get_config("cpu")) & t1
  for module in (table7, table8, table10, table11, table12):
    paper = module.get_config("paper")
    assert paper.preset == "paper" and set(paper.seeds) == set(range(5))
  for module in (table8, table10, table11, table12):
    assert len(module.get_config("paper").forget_sets) == 10


def test_table1_gkt_reference_runs_at_the_notebooks_size_only_in_the_paper_config():
  def resolved(variant, label):
    method = next(m for m in table1.get_config(variant).methods if m.label == label)
    cfg = preset(variant).replace(**dict(method.overrides))
    return common.by_preset(cfg, gkt.PRESETS, gkt.REFERENCE, method="gkt")

  small, full = resolved("cpu", "gkt_reference_cpu"), resolved("paper", "gkt_reference")
  # The notebook's quirks in both; only the size differs.
  quirks = ("kl_over_classes", "student_eval_mode", "generator_output", "gate_class_zero")
  for s in (small, full):
    assert all(getattr(s, f) == getattr(gkt.REFERENCE, f) for f in quirks)
  assert (small.pseudo_batches, small.batch_size, small.generator_width) == (
      gkt.PRESETS["cpu"].pseudo_batches, gkt.PRESETS["cpu"].batch_size,
      gkt.PRESETS["cpu"].generator_width)
  assert full == gkt.REFERENCE and full.pseudo_batches > small.pseudo_batches


def test_seeds_and_classes_flags(tmp_path):
  assert table8.get_config("cpu", seeds=(3, 4), classes=(1, 2)).forget_sets == ((1,), (2,))
  assert table7.get_config("cpu", seeds=(1, 2)).seeds == (1, 2)
  # The flags reach the config; --report on an empty store writes an empty report.
  assert table11.main(["--config", "smoke", "--workdir", str(tmp_path), "--classes", "3",
                       "--seeds", "7", "--report"]) == 0
  assert "0 records" in (tmp_path / "report.md").read_text()
  assert table12.GENIU_PAPER.overrides == tuple(
      (k, v) for k, v in table1.GENIU_PAPER.overrides if k != "proxies_per_class")
  with pytest.raises(ValueError, match="only the smoke config"):
    cifar_pipeline.get_config("cpu")


def test_table1_evaluation_view_averages_the_cells_the_baselines_ran_on():
  cfg = table1.get_config("cpu")

  def record(method, k, seed, **fields):
    return {"dataset": "fashion_mnist", "method": method, "forget": [k], "seed": seed,
            "acc_r": 0.5 + 0.1 * k, "acc_f": 0.01 * k, **fields}

  records = [record(m, k, 0, mia_confidence=0.2 * k, mia_entropy=0.1, js_to_reference=0.5,
                    activation_distance=1.0, ain=k)
             for m in ("geniu", "gkt") for k in (1, 3)]
  records.append(record("retrain", 1, 0, mia_confidence=1.0, mia_entropy=0.2))
  # A cell where only GENIU was evaluated: left out, so both rows span the same cells.
  records.append(record("geniu", 5, 1, mia_confidence=9.0, mia_entropy=9.0, ain=9.0))
  section = table1.evaluation(records, cfg)
  rows = {r["method"]: r for r in section.rows}
  assert set(rows) == {"geniu", "gkt", "retrain"}
  assert rows["geniu"]["n"] == rows["gkt"]["n"] == 2
  assert rows["geniu"]["acc_r"] == pytest.approx(0.7)
  assert rows["geniu"]["worst_acc_f"] == pytest.approx(0.03)
  assert rows["gkt"]["mia_confidence"] == pytest.approx(0.4)
  assert rows["gkt"]["ain"] == pytest.approx(2.0)
  assert rows["retrain"]["js_to_reference"] is None
  assert rows["gkt"]["paper_acc_r"] is not None
  assert "fashion_mnist: 1/s0, 3/s0" in section.markdown
  empty = table1.evaluation([record("geniu", 1, 0, mia_confidence=0.1)], cfg)
  assert empty.rows == [] and empty.figure is None


def test_table1_per_class_bars_average_each_class_where_it_is_retained():
  cfg = table1.get_config("cpu")

  def record(method, k, seed, per_class):
    return {"dataset": "mnist", "method": method, "forget": [k], "seed": seed,
            "per_class": per_class}

  records = [record("geniu", 0, 0, [0.0] + [0.5] * 9),
             record("geniu", 1, 0, [0.9, 0.0] + [0.7] * 8),
             record("geniu", 1, 1, [0.7, 0.1] + [0.7] * 8),
             # Labels outside the chart (ablations, other settings) are left out.
             record("geniu_post", 0, 0, [0.0] * 10)]
  bars = table1._bars(records, cfg, table1._retained_accuracy)
  assert set(bars) == {"geniu"}
  mean, std = bars["geniu"][0]     # class 0: retained only in the two class-1 cells
  assert mean == pytest.approx(0.8) and std == pytest.approx(0.1)
  assert bars["geniu"][1] == (0.5, 0.0)   # class 1: retained only in the class-0 cell
  assert bars["geniu"][2][0] == pytest.approx((0.5 + 0.7 + 0.7) / 3)
  # Acc_f by forgotten class: class 1 from its two seeds, class 2 never forgotten.
  acc_f = table1._bars([dict(r, acc_f=r["per_class"][r["forget"][0]]) for r in records], cfg,
                       lambda r, k: r["acc_f"] if r["forget"] == [k] else None)
  assert acc_f["geniu"][1] == (pytest.approx(0.05), pytest.approx(0.05))
  assert acc_f["geniu"][2] is None


# --- the smoke configs, end to end ----------------------------------------------

def test_table1_smoke(tiny10, originals, jit_cache, tmp_path):
  records = run_smoke(table1, tmp_path, tiny10, originals, jit_cache)
  cfg = table1.get_config("smoke")
  assert sorted((r["forget"][0], r["method"]) for r in records) == sorted(
      (k, m.label) for (k,) in cfg.forget_sets for m in cfg.methods)
  for r in records:
    assert 0.0 <= r["acc_r"] <= 1.0 and 0.0 <= r["acc_f"] <= 1.0
    assert r["val_acc_r"] is not None   # the validation split held out of training
  rows = read_csv(tmp_path / "table_1.csv")
  assert {r["method"] for r in rows} == {m.label for m in cfg.methods}
  assert {r["n"] for r in rows} == {"2"}   # two forgotten classes, one seed
  per_class = read_csv(tmp_path / "table_6.csv")
  assert {(r["class"], r["method"]) for r in per_class} == {
      (str(k), m.label) for (k,) in cfg.forget_sets for m in cfg.methods}
  report = (tmp_path / "report.md").read_text()
  for title in ("## Table 1", "## GENIU robustness", "## Table 6", "## Table 4"):
    assert title in report
  # The per-class bar chart; the Evaluation view has no baselines to draw here.
  assert "![Table 6](table_6.png)" in report and (tmp_path / "table_6.png").stat().st_size > 0
  assert not (tmp_path / "evaluation.png").exists()


def test_geniu_setting_smoke(tiny10, originals, jit_cache, tmp_path):
  """Every candidate and diagnostic on both smoke cells; the report names a choice
  made on the validation split."""
  records = run_smoke(geniu_setting, tmp_path, tiny10, originals, jit_cache)
  cfg = geniu_setting.get_config("smoke")
  assert sorted((r["forget"][0], r["method"]) for r in records) == sorted(
      (k, m.label) for (k,) in cfg.forget_sets for m in cfg.methods)
  diagnostics = [r["info"] for r in records if r["method"] == "proxy_diagnostics"]
  assert all(0.0 <= d["coverage"] <= 1.0 for d in diagnostics)
  chosen = [r for r in read_csv(tmp_path / "selection_on_the_validation_split.csv")
            if r["chosen"] == "True"]
  assert len(chosen) == 1
  assert chosen[0]["setting"] in {m.label for m in geniu_setting.CANDIDATES}
  assert chosen[0]["cells"] == "2"
  assert "Chosen: **" in (tmp_path / "report.md").read_text()


def test_table10_smoke(tiny10, originals, jit_cache, tmp_path):
  records = run_smoke(table10, tmp_path, tiny10, originals, jit_cache)
  cfg = table10.get_config("smoke")
  assert len(records) == 2 * 3 * len(cfg.methods)
  proxies = {(r["train_variant"], r["forget"][0]): r for r in records
             if r["method"] == "proxies"}
  assert set(proxies) == {(rule, k) for rule in table10.RULES for k in (9, 1)}
  arrays = {}
  for (rule, k), r in proxies.items():
    assert r["info"]["arrays"] == f"arrays/{r['key']}.npz"
    assert r["info"]["selection"] == rule and 0.0 <= r["info"]["proxy_accuracy"] <= 1.0
    arrays[rule, k] = table2.load_arrays(tmp_path, r["info"]["arrays"])
    assert arrays[rule, k]["proxies"].shape == (20, 8, 8, 1)   # B = 2, K = 10
    np.testing.assert_array_equal(arrays[rule, k]["labels"], np.arange(20) % 10)
  assert not list((tmp_path / "arrays").glob(".*"))   # no temporary left behind
  # Each rule trains its own original. (Whether the rule changes what the VAE
  # learns is tests/test_selection.py's: smoke training is too short for the
  # gate of Alg. 1 to open on these data.)
  for (rule, _), r in proxies.items():
    meta = json.loads((originals / r["original"] / "metadata.json").read_text())
    assert meta["config"]["selection"] == rule
  assert len({r["original"] for r in proxies.values()}) == 6
  rows = read_csv(tmp_path / "table_10.csv")
  assert paper_cell(rows, "acc_f", method="geniu_paper", selection="max_entropy",
                    **{"class": 9}) == pytest.approx(0.002)
  assert paper_cell(rows, method="geniu", selection="min_entropy",
                    **{"class": 1}) == pytest.approx(0.68)
  assert paper_cell(rows, method="geniu_paper", selection="max_entropy",
                    **{"class": "mean"}) == pytest.approx((0.796 + 0.743) / 2)
  assert all(r["paper"] == "" for r in rows if r["selection"] == "random")
  fig = read_csv(tmp_path / "figure_6.csv")
  assert [r["selection"] for r in fig] == list(table10.RULES)
  assert {r["forget"] for r in fig} == {"9"}   # the first class, in every row
  assert (tmp_path / "figure_6.png").stat().st_size > 0
  report = (tmp_path / "report.md").read_text()
  assert "![Figure 6](figure_6.png)" in report and "(0.743)" in report
  for rule in table10.RULES:   # the share over every original: two classes per rule
    assert f"{rule} " in report.split("Over every original in the store:")[1]
  assert report.count("(2 originals)") == len(table10.RULES)


def test_table11_smoke(tiny10, originals, jit_cache, tmp_path):
  records = run_smoke(table11, tmp_path, tiny10, originals, jit_cache)
  assert len(records) == 4 * 3
  for r in records:
    if r["method"] != "original":
      continue
    t = r["info"]["config"]["noise_start_acc"]
    assert r["train_variant"] == table11.label(t)
    reached = False
    for row in r["info"]["history"]:
      reached = reached or t is None or row["train_acc"] >= t
      assert row["noise_started"] == reached
  rows = read_csv(tmp_path / "table_11.csv")
  assert paper_cell(rows, t="0.6", method="geniu_paper") == pytest.approx(0.7544)
  assert paper_cell(rows, "acc_f", t="none", method="geniu") == pytest.approx(0.0002)
  starts = {r["t"]: r for r in read_csv(tmp_path / "table_11_noise_start.csv")}
  assert set(starts) == {"none", "0.4", "0.6", "0.7"}
  assert float(starts["none"]["start_epoch"]) == 1.0
  assert "| 0.7 | geniu_paper |" in (tmp_path / "report.md").read_text()


def test_table12_smoke(tiny10, originals, jit_cache, tmp_path):
  records = run_smoke(table12, tmp_path, tiny10, originals, jit_cache)
  assert len(records) == 2 * 3
  for r in records:
    b = int(r["train_variant"])
    assert r["info"]["config"]["proxies_per_class"] == b   # B from the variant
    if r["method"] == "geniu_paper":
      assert r["info"]["config"]["forget_loss"] == "inv_ce"
  rows = read_csv(tmp_path / "table_12.csv")
  assert paper_cell(rows, B="1", method="geniu_paper") == pytest.approx(0.7711)
  assert paper_cell(rows, B="5", method="geniu_paper") == pytest.approx(0.8004)
  assert paper_cell(rows, "acc_f", B="12", method="geniu") == pytest.approx(0.0013)
  assert "| 10 | geniu_paper | - | 0.7971 |" in (tmp_path / "report.md").read_text()


def test_smoke_cells_share_one_original(originals):
  """Tables 10 (max entropy), 11 (none) and 12 (B = 2), class 9: one original
  at r = 0.1; the other variants' are their own."""
  def keys(module, label):
    return {c.key for c in spec.cells(module.get_config("smoke"))
            if c.forget == (9,) and c.variant.label == label}

  shared = keys(table10, "max_entropy")
  assert len(shared) == 1
  assert keys(table11, "none") == keys(table12, "2") == shared
  # Table 1: 2 classes with a validation split (cells of their own); 10: 2
  # classes x 3 rules; 11: 3 more t; 12: B = 1 (each run above trained here).
  assert len(list(originals.iterdir())) == 2 + 6 + 3 + 1


def test_table8_smoke(tiny10, originals, jit_cache, tmp_path):
  records = run_smoke(table8, tmp_path, tiny10, originals, jit_cache)
  cfg = table8.get_config("smoke")
  got = by(records, "imbalance", "method")
  assert set(got) == {(table8.VARY, m.label) for m in cfg.methods}
  for r in records:
    assert r["forget"] == [9] and 0.0 <= r["acc_r"] <= 1.0 and 0.0 <= r["acc_f"] <= 1.0
  # The vary split: all 40 images of class 9, round(r_k * 40) of every other class.
  want = sum(max(1, round(rate * 40)) for k, rate in enumerate(table8.VARY) if k != 9)
  assert got[(table8.VARY, "retrain")]["info"]["train_samples"] == want
  rows = read_csv(tmp_path / "table_8.csv")
  assert paper_cell(rows, "acc_f", r="vary", method="unsir") == pytest.approx(0.0123)
  # Settings the smoke grid does not run still show the paper's numbers.
  assert paper_cell(rows, r="0.1", method="geniu_paper") == pytest.approx(0.7711)
  assert paper_cell(rows, r="0.4", method="gkt") == pytest.approx(0.2241)
  report = (tmp_path / "report.md").read_text()
  assert "0.8942" in report and "| vary | geniu_paper |" in report


def test_table7_smoke(tiny10, originals, jit_cache, tmp_path):
  records = run_smoke(table7, tmp_path, tiny10, originals, jit_cache)
  assert sorted(r["method"] for r in records) == sorted(
      m.label for m in table7.get_config("smoke").methods)
  for r in records:
    assert r["forget"] == [0, 1]
    assert r["forget_predicted"] is not None and sum(r["forget_predicted"]) == 20
  retrain = by(records, "method")[("retrain",)]
  assert retrain["info"]["train_samples"] == 8 * 4   # both majority classes left out
  rows = read_csv(tmp_path / "table_7.csv")
  assert paper_cell(rows, method="geniu_paper", dataset="fashion_mnist") == pytest.approx(0.7333)
  assert paper_cell(rows, "acc_f", method="gkt", dataset="fashion_mnist") == pytest.approx(0.4711)
  assert "0.7498" in (tmp_path / "report.md").read_text()


def test_cifar_pipeline_on_mock_data(originals, jit_cache, tmp_path):
  pytest.importorskip("tensorflow_datasets")
  records = run_smoke(cifar_pipeline, tmp_path, None, originals, jit_cache)
  cfg = cifar_pipeline.get_config("smoke")
  assert sorted(r["method"] for r in records) == sorted(m.label for m in cfg.methods)
  assert {r["dataset"] for r in records} == {"cifar10"}
  (cell,) = spec.cells(cfg)
  meta = json.loads((originals / cell.key / "metadata.json").read_text())
  assert meta["image_shape"] == [32, 32, 3]
  report = (tmp_path / "report.md").read_text()
  assert "PIPELINE CHECK ON MOCK DATA" in report and "every method ran" in report
  rows = read_csv(tmp_path / "cifar_10_pipeline_check__mock_data.csv")
  assert {r["ran"] for r in rows} == {"True"} and {r["check"] for r in rows} == {
      "mock_data_pipeline"}
  # The grid's dataset cache does not keep the mock data under the real name.
  with cifar_pipeline.mock_cifar10(num_examples=12):
    assert runner.load_dataset(cifar_pipeline.SOURCE).x_train.shape == (12, 32, 32, 3)
  assert runner.load_dataset.cache_info().currsize == 0
