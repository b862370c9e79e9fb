"""`geniu train`, `unlearn` and `evaluate` end to end on a smoke-trained
checkpoint: what each writes, reports and refuses over a model's lifecycle
(repeated requests, dropped generators, never-trained generators, bfloat16,
evaluation against a reference).

The smoke checkpoint is trained once per module through `geniu_jax.cli.main`
in this process; the usage errors are in test_cli.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from geniu_jax import checkpoint as ckpt_lib
from geniu_jax import cli
from geniu_jax.models import functional as F

from conftest import (assert_trees_identical, assert_usage_error, pure_leaves, run_cli,
                      spy_on_training)

ALL_CLASSES = [str(k) for k in range(10)]


# --- smoke run end to end -------------------------------------------------------------

def last_json(stdout: str) -> dict:
  """The `--json` report: the last line of a command's stdout."""
  return json.loads(stdout.strip().splitlines()[-1])


def _main_capturing_stdout(argv) -> tuple[int, str]:
  buf = io.StringIO()
  with contextlib.redirect_stdout(buf):
    rc = cli.main([str(a) for a in argv])
  return rc, buf.getvalue()


def _main_capturing_stderr(argv) -> tuple[int, str]:
  buf = io.StringIO()
  with contextlib.redirect_stderr(buf):
    rc, _ = _main_capturing_stdout(argv)
  return rc, buf.getvalue()


def _without_training_records(src: Path, dst: Path) -> Path:
  """A copy of checkpoint `src` whose metadata has no checks, no history and no
  checksum, as written before any of them existed."""
  shutil.copytree(src, dst)
  meta = json.loads((dst / "metadata.json").read_text())
  for key in ("checks", "history", "checksum"):
    meta.pop(key, None)
  (dst / "metadata.json").write_text(json.dumps(meta))
  return dst


@pytest.fixture(scope="module")
def smoke_train(tmp_path_factory):
  """`geniu train` (smoke preset) once per module: (checkpoint, stderr)."""
  a = tmp_path_factory.mktemp("cli_smoke") / "A"
  # Native lowering: it compiles about twice as fast as `auto`'s Winograd on
  # CPU, and compilation dominates this module (the lowerings: test_conv.py).
  rc, err = _main_capturing_stderr(["train", "--data", "embedded", "--majority", "9",
                                    "--preset", "smoke", "--lowering", "native", "--out", a])
  assert rc == 0 and a.is_dir()
  return a, err


@pytest.fixture(scope="module")
def smoke_run(smoke_train, tmp_path_factory):
  """`geniu unlearn --forget 9` on the smoke checkpoint, once per module.

  The smoke preset is too small for GENIU's generator to train on the embedded
  split (no epoch has every prompt classified correctly), and `geniu unlearn`
  refuses such a checkpoint. The unlearning mechanics are exercised on a copy
  without training records, accepted like a checkpoint written before them.
  """
  trained, _ = smoke_train
  root = tmp_path_factory.mktemp("cli_smoke_unlearn")
  if ckpt_lib.generator_epochs(ckpt_lib.read_metadata(trained)) == 0:
    rc, err = _main_capturing_stderr(["unlearn", "--ckpt", trained, "--forget", "9",
                                      "--out", root / "refused"])
    assert rc == 2 and "never trained" in err and not (root / "refused").exists()
  a, b = _without_training_records(trained, root / "A"), root / "B"
  rc, out = _main_capturing_stdout(["unlearn", "--ckpt", a, "--forget", "9", "--out", b,
                                    "--json"])
  assert rc == 0 and b.is_dir()
  return a, b, out


def test_train_writes_a_checkpoint(smoke_train):
  a, err = smoke_train
  meta = ckpt_lib.read_metadata(a)
  assert meta["preset"] == "smoke" and meta["data_source"] == "embedded"
  assert meta["majority"] == [9] and meta["num_classes"] == 10
  assert meta["image_shape"] == [28, 28, 1]
  assert meta["has_generator"] is True
  assert len(meta["history"]) == meta["config"]["epochs"]
  counts = meta["class_counts"]
  assert counts[9] == max(counts) and all(c < counts[9] for c in counts[:9])
  ck = ckpt_lib.restore(a)
  assert ck.prompts.shape == (10 * meta["config"]["proxies_per_class"], 28, 28, 1)
  checks = meta["checks"]
  assert set(checks) == {"generator_epochs", "unpredicted_classes", "warnings"}
  assert checks["generator_epochs"] == sum(row["prompts_correct"] for row in meta["history"])
  warned = [line for line in err.splitlines() if line.startswith("warning: ")]
  assert warned == [f"warning: {w}" for w in checks["warnings"]]


def test_unlearn_reports_json_on_the_last_stdout_line(smoke_run):
  a, b, out = smoke_run
  report = last_json(out)
  assert report["method"] == "geniu" and report["forget"] == [9]
  for key in ("unlearn_ms", "compile_ms"):
    assert isinstance(report[key], (int, float)) and report[key] > 0
  cfg = ckpt_lib.read_metadata(a)["config"]
  assert 1 <= report["rounds_run"] <= cfg["unlearn_rounds"]
  meta_b = ckpt_lib.read_metadata(b)
  assert meta_b["unlearned"] == report
  assert meta_b["config"] == cfg


def test_unlearning_changes_params_but_not_batchnorm_stats(smoke_run):
  a, b, _ = smoke_run
  ca, cb = ckpt_lib.restore(a), ckpt_lib.restore(b)
  assert_trees_identical(cb.classifier.stats, ca.classifier.stats)
  assert_trees_identical(cb.generator.params, ca.generator.params)
  labels = np.tile(np.arange(10), ca.prompts.shape[0] // 10)   # class 9's prompts dropped
  assert np.array_equal(np.asarray(cb.prompts), np.asarray(ca.prompts)[labels != 9])
  pa, pb = pure_leaves(ca.classifier.params), pure_leaves(cb.classifier.params)
  assert pa.keys() == pb.keys()
  assert any(not np.array_equal(pa[k], pb[k]) for k in pa)


def test_evaluate_shows_acc_f_falling(capsys, smoke_run):
  a, b, _ = smoke_run
  results = {}
  for name, ckpt in (("A", a), ("B", b)):
    rc, out, err = run_cli(capsys, "evaluate", "--ckpt", ckpt, "--data", "embedded",
                           "--forget", "9", "--json")
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert lines[0].startswith("forgotten classes [9]: Acc_r ") and "Acc_f " in lines[0]
    results[name] = json.loads(lines[-1])
    assert len(results[name]["per_class"]) == 10
    assert f"Acc_f {results[name]['acc_f']:.4f}" in lines[0]
  print(f"smoke: A {results['A']}, B {results['B']}")
  assert results["B"]["acc_f"] < results["A"]["acc_f"]
  # Acc_f is the forgotten class's accuracy (class 9 is the only forgotten class).
  for r in results.values():
    assert r["acc_f"] == pytest.approx(r["per_class"][9])


def test_unlearn_refuses_an_existing_out_dir(capsys, smoke_run):
  a, b, _ = smoke_run
  before = sorted(p.name for p in b.rglob("*"))
  rc, _, err = run_cli(capsys, "unlearn", "--ckpt", a, "--forget", "9", "--out", b)
  assert_usage_error(rc, err, contains="already exists")
  assert sorted(p.name for p in b.rglob("*")) == before


def test_unlearn_on_the_first_ranks_only(smoke_run, tmp_path):
  a = smoke_run[0]
  out = tmp_path / "one"
  rc, text = _main_capturing_stdout(["unlearn", "--ckpt", a, "--forget", "9", "--out", out,
                                     "--proxies-per-class", "1", "--json"])
  assert rc == 0
  assert last_json(text)["proxies"] == 10


def test_unlearn_refuses_more_proxies_than_trained(capsys, smoke_run, tmp_path):
  a = smoke_run[0]
  per_class = ckpt_lib.read_metadata(a)["config"]["proxies_per_class"]
  out = tmp_path / "too_many"
  rc, _, err = run_cli(capsys, "unlearn", "--ckpt", a, "--forget", "9", "--out", out,
                       "--proxies-per-class", str(per_class + 1))
  assert_usage_error(rc, err, out, contains=f"the checkpoint has {per_class}")


def test_unlearn_objective_flags_override_the_checkpoint_and_are_reported(smoke_run,
                                                                          tmp_path):
  a, _, default_out = smoke_run
  cfg = ckpt_lib.read_metadata(a)["config"]
  stored = last_json(default_out)["objective"]
  assert stored == {"retain": cfg["retain_target"], "forget": cfg["forget_loss"],
                    "margin": cfg["forget_margin"] if cfg["forget_loss"] == "margin" else 0.0}
  out = tmp_path / "teacher_margin"
  rc, text = _main_capturing_stdout(["unlearn", "--ckpt", a, "--forget", "9", "--out", out,
                                     "--retain-target", "teacher", "--forget-loss", "margin",
                                     "--forget-margin", "3", "--json"])
  assert rc == 0
  report = last_json(text)
  assert report["objective"] == {"retain": "teacher", "forget": "margin", "margin": 3.0}
  assert ckpt_lib.read_metadata(out)["unlearned"] == report


def test_unlearn_sharpen_flags(smoke_run, tmp_path, capsys):
  a = smoke_run[0]
  out = tmp_path / "sharp"
  rc, text = _main_capturing_stdout(["unlearn", "--ckpt", a, "--forget", "9", "--out", out,
                                     "--sharpen-target", "0.9", "--sharpen-mode", "all",
                                     "--rounds", "3", "--json"])
  assert rc == 0
  report = last_json(text)
  assert report["sharpen_target"] == 0.9 and report["rounds_run"] == 3
  assert report["sharpen_mode"] == "all"
  capsys.readouterr()
  bad = tmp_path / "bad_sharp"
  rc, _, err = run_cli(capsys, "unlearn", "--ckpt", a, "--forget", "9", "--out", bad,
                       "--sharpen-target", "1.5")
  assert_usage_error(rc, err, bad, contains="sharpen_target")


# --- a generator that never trained ---------------------------------------------------

@pytest.fixture(scope="module")
def never_trained(tmp_path_factory):
  """`geniu train --noise-start-acc 1.0` on a tiny npz split with random labels and no
  sample of class 3: the threshold is never reached, so no prompt or generator step
  runs. Returns (checkpoint, stderr, aux program calls, initial generator leaves)."""
  root = tmp_path_factory.mktemp("never_trained")
  rng = np.random.default_rng(0)
  np.savez(root / "tiny.npz", x_train=rng.uniform(0, 1, (48, 8, 8, 1)).astype(np.float32),
           y_train=rng.integers(0, 3, 48), x_test=rng.uniform(0, 1, (8, 8, 8, 1)),
           y_test=np.arange(8) % 4)
  ckpt = root / "ckpt"
  with pytest.MonkeyPatch.context() as mp:
    seen = spy_on_training(mp)
    rc, err = _main_capturing_stderr(
        ["train", "--data", f"npz:{root / 'tiny.npz'}", "--majority", "0", "--imbalance", "1",
         "--preset", "smoke", "--width", "0.0625", "--lowering", "native",
         "--proxies-per-class", "2", "--epochs", "2", "--noise-start-acc", "1.0",
         "--out", ckpt])
  assert rc == 0 and ckpt.is_dir(), err
  return ckpt, err, seen["aux_calls"], seen["initial_generator"][0]


def test_train_with_an_unreached_noise_start_warns_on_stderr(never_trained):
  ckpt, err, aux_calls, initial = never_trained
  meta = ckpt_lib.read_metadata(ckpt)
  assert meta["config"]["noise_start_acc"] == 1.0
  assert aux_calls == 0
  assert all(row["noise_started"] is False and row["train_acc"] < 1.0
             for row in meta["history"])
  restored = pure_leaves(ckpt_lib.restore(ckpt).generator.params)
  assert restored.keys() == initial.keys()
  assert all(np.array_equal(restored[k], initial[k]) for k in initial)
  checks = meta["checks"]
  assert checks["generator_epochs"] == 0 and checks["unpredicted_classes"] == [3]
  warned = [line for line in err.splitlines() if line.startswith("warning: ")]
  assert warned == [f"warning: {w}" for w in checks["warnings"]] and len(warned) == 2
  assert "generator never trained" in warned[0] and "--noise-start-acc" in warned[0]
  assert "class 3 " in warned[1]
  assert err.splitlines()[-2:] == warned   # after the checkpoint line, nothing else


@pytest.mark.parametrize("method", ["geniu", "geniu_impair_repair"])
def test_unlearn_refuses_a_generator_that_never_trained(capsys, tmp_path, never_trained,
                                                        method):
  out = tmp_path / "out"
  rc, _, err = run_cli(capsys, "unlearn", "--ckpt", never_trained[0], "--forget", "1",
                       "--method", method, "--out", out)
  assert_usage_error(rc, err, out, contains="never trained")


def test_unlearn_reads_the_history_of_checkpoints_without_checks(capsys, tmp_path,
                                                                 never_trained):
  old = tmp_path / "old"
  shutil.copytree(never_trained[0], old)
  meta = json.loads((old / "metadata.json").read_text())
  del meta["checks"], meta["checksum"]   # checksums came after checks
  (old / "metadata.json").write_text(json.dumps(meta))
  out = tmp_path / "out"
  rc, _, err = run_cli(capsys, "unlearn", "--ckpt", old, "--forget", "1", "--out", out)
  assert_usage_error(rc, err, out, contains="never trained")


def _own_class_prob(path, k: int, original) -> float:
  """Mean probability the checkpoint's classifier gives class k's proxies their
  class; the proxies come from the `original` checkpoint (unlearned ones no
  longer hold the forgotten classes' prompts)."""
  from geniu_jax.geniu.generator import make_proxies
  from geniu_jax.geniu.prompts import prompt_labels
  c, art = ckpt_lib.restore(path).classifier, ckpt_lib.restore(original)
  g = art.generator
  proxies = make_proxies(g.graphdef, g.params, art.prompts)
  labels = np.asarray(prompt_labels(10, art.prompts.shape[0] // 10))
  probs = np.asarray(jax.nn.softmax(F.classifier_logits(c.graphdef, c.params, c.stats, proxies)))
  return float(probs[labels == k, k].mean())


def test_the_unlearned_checkpoint_drops_the_forgotten_prompts(smoke_run):
  a, b, _ = smoke_run                         # class 9 forgotten
  full, kept = ckpt_lib.restore(a).prompts, ckpt_lib.restore(b).prompts
  assert ckpt_lib.read_metadata(b)["dropped_prompts"] == [9]
  per_class = full.shape[0] // 10
  assert kept.shape == (9 * per_class, *full.shape[1:])
  # The retained classes' prompts are kept unchanged, in their layout order.
  labels = np.tile(np.arange(10), per_class)
  np.testing.assert_array_equal(kept, np.asarray(full)[labels != 9])


def test_a_later_request_forgets_the_union_and_never_relearns(smoke_run, tmp_path, capsys):
  a, b, _ = smoke_run                         # class 9 forgotten
  c = tmp_path / "C"
  # Eq. 10 pulls every proxy that is not forgotten toward its label: a request
  # that forgot only class 0 would pull class 9's proxies back into class 9.
  rc, text = _main_capturing_stdout(["unlearn", "--ckpt", b, "--forget", "0", "--out", c,
                                     "--retain-target", "label", "--forget-loss", "inv_ce",
                                     "--no-sharpen", "--json"])
  assert rc == 0
  report = last_json(text)
  assert report["forget"] == [0, 9] and report["requested"] == [0]
  meta = ckpt_lib.read_metadata(c)
  assert meta["forgotten"] == [0, 9] and meta["unlearned"] == report
  assert [r["requested"] for r in meta["requests"]] == [[9], [0]]
  assert [r["forget"] for r in meta["requests"]] == [[9], [0, 9]]
  assert _own_class_prob(c, 9, a) <= _own_class_prob(b, 9, a) + 0.02
  assert meta["dropped_prompts"] == [0, 9]
  assert ckpt_lib.restore(c).prompts.shape[0] == 8 * ckpt_lib.restore(a).prompts.shape[0] // 10
  # The registered variants need a prompt of every class and say so.
  capsys.readouterr()
  rc, _, err = run_cli(capsys, "unlearn", "--ckpt", c, "--forget", "1", "--method",
                       "geniu_impair_repair", "--out", tmp_path / "V")
  assert_usage_error(rc, err, tmp_path / "V", contains="use --method geniu")
  for key in ("forget_proxy_prob", "forget_proxy_prob_before", "retained_proxy_acc"):
    assert 0.0 <= report[key] <= 1.0
  # Asking again for a class already forgotten changes nothing and writes nothing.
  capsys.readouterr()
  again = tmp_path / "D"
  rc, _, err = run_cli(capsys, "unlearn", "--ckpt", c, "--forget", "9", "--out", again)
  assert_usage_error(rc, err, again, contains="already forgotten")


def test_drop_generator_leaves_no_generator_and_no_prompts(smoke_run, tmp_path, capsys):
  _, b, _ = smoke_run
  d = tmp_path / "D"
  rc, _, _ = run_cli(capsys, "unlearn", "--ckpt", b, "--forget", "1", "--drop-generator",
                     "--out", d)
  assert rc == 0
  ck = ckpt_lib.restore(d)
  assert ck.generator is None and ck.prompts is None
  assert ck.metadata["has_generator"] is False and ck.metadata["forgotten"] == [1, 9]
  rc, _, err = run_cli(capsys, "unlearn", "--ckpt", d, "--forget", "2", "--out", tmp_path / "E")
  assert_usage_error(rc, err, tmp_path / "E", contains="no GENIU generator")


def test_unlearn_in_bfloat16_is_recorded(smoke_run, tmp_path):
  a, _, _ = smoke_run
  out = tmp_path / "bf16"
  rc, text = _main_capturing_stdout(["unlearn", "--ckpt", a, "--forget", "9", "--rounds", "5",
                                     "--precision", "bfloat16", "--out", out, "--json"])
  assert rc == 0
  report = last_json(text)
  assert report["precision"] == "bfloat16" and report["rounds_run"] == 5
  assert report["forget_proxy_prob"] < report["forget_proxy_prob_before"]
  # The parameters stay float32 in the checkpoint.
  params = pure_leaves(ckpt_lib.restore(out).classifier.params)
  assert all(v.dtype == np.float32 for v in params.values())


def test_evaluate_against_a_reference_reports_attacks_distances_and_relearn_time(
    smoke_run, capsys):
  _, b, _ = smoke_run
  rc, out, _ = run_cli(capsys, "evaluate", "--ckpt", b, "--data", "embedded", "--reference", b,
                       "--json")
  assert rc == 0
  report = last_json(out)
  assert "membership inference" in out and "to the retrained model" in out
  for key in ("mia_confidence", "mia_entropy", "reference_mia_confidence"):
    assert 0.0 <= report[key] <= 1.0
  # A model against itself: no distance, the same attack scores and relearn time.
  assert report["js_to_reference"] == 0.0 and report["activation_distance"] == 0.0
  assert report["mia_confidence"] == report["reference_mia_confidence"]
  assert report["relearn_steps"] == report["relearn_steps_reference"]
  assert report["ain"] in (1.0, None)
  rc, _, err = run_cli(capsys, "evaluate", "--ckpt", b, "--data", "embedded",
                       "--relearn-target", "0")
  assert_usage_error(rc, err, contains="--relearn-target")


def test_evaluate_defaults_to_every_forgotten_class(smoke_run, capsys):
  _, b, _ = smoke_run
  rc, out, _ = run_cli(capsys, "evaluate", "--ckpt", b, "--data", "embedded", "--json")
  assert rc == 0
  assert "forgotten classes [9]" in out
  explicit = last_json(out)
  rc, out, _ = run_cli(capsys, "evaluate", "--ckpt", b, "--data", "embedded", "--forget", "9",
                       "--json")
  assert last_json(out) == explicit
