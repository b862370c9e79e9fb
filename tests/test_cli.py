"""The `geniu` command: one-line usage errors (exit 2), exit codes of a real
process (2, and 130 on Ctrl-C), and `geniu unlearn --method NAME`.

Commands run in-process through `geniu_jax.cli.main`; subprocesses check the
real exit status of `python -m geniu_jax.cli`. `--method NAME` runs on
checkpoints of the shared smoke model (conftest's `smoke`). The smoke-trained
checkpoint's lifecycle (train, unlearn, evaluate): test_cli_lifecycle.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from geniu_jax import checkpoint as ckpt_lib
from geniu_jax import cli
from geniu_jax.config import Config

from conftest import assert_usage_error, restore_works, run_cli

REPO = Path(__file__).resolve().parents[1]
ALL_CLASSES = [str(k) for k in range(10)]


@pytest.mark.parametrize("argv,expected", [
    (["unlearn", "--ckpt", "c", "--forget", "1", "--out", "o"], None),
    (["--compilation-cache", "off", "unlearn", "--ckpt", "c", "--forget", "1", "--out", "o"],
     "off"),
    (["unlearn", "--ckpt", "c", "--forget", "1", "--out", "o", "--compilation-cache", "/c"],
     "/c"),
    (["--compilation-cache", "/a", "train", "--data", "embedded", "--majority", "9", "--out",
      "o", "--compilation-cache", "/b"], "/b"),
], ids=["default", "before", "after", "after-wins"])
def test_compilation_cache_flag_before_or_after_the_subcommand(argv, expected):
  assert cli.build_parser().parse_args(argv).compilation_cache == expected


# --- usage errors -----------------------------------------------------------------

@pytest.mark.parametrize("data,contains", [
    ("bogus:thing", "unknown data source"),
    ("cifar10", "unknown data source"),
    ("idx:/nonexistent/geniu-test-dir", "idx"),
    ("npz:/nonexistent/file.npz", "not found"),
], ids=["unknown-prefix", "no-prefix", "missing-idx-dir", "missing-npz"])
def test_train_bad_source(capsys, tmp_path, data, contains):
  out = tmp_path / "out"
  rc, _, err = run_cli(capsys, "train", "--data", data, "--majority", "9", "--preset",
                       "smoke", "--out", out)
  assert_usage_error(rc, err, out, contains=contains)


@pytest.mark.parametrize("flags,contains", [
    (["--lr-schedule", "plateau"], "--validation-per-class"),
    (["--lr-schedule", "plateau", "--validation-per-class", "-3"], "must be >= 0"),
    (["--grad-clip-value", "0"], "grad_clip_value"),
], ids=["plateau-without-validation", "negative-validation", "zero-clip"])
def test_train_bad_schedule_flags(capsys, tmp_path, flags, contains):
  # Refused before the (nonexistent) data is read.
  out = tmp_path / "out"
  rc, _, err = run_cli(capsys, "train", "--data", "npz:/nonexistent/file.npz", "--majority",
                       "9", "--preset", "smoke", "--out", out, *flags)
  assert_usage_error(rc, err, out, contains=contains)


@pytest.mark.parametrize("method,flags,contains", [
    ("unsir", ["--rounds", "5"], "does not use unlearn_rounds"),
    ("retrain", ["--proxies-per-class", "1"], "does not use proxies_per_class"),
    ("geniu", ["--baseline-setting", "reference"], "does not use baseline_setting"),
    ("geniu_impair_repair", ["--no-stop"], "does not use stop_forget_prob"),
], ids=["rounds-unsir", "b-retrain", "baseline-geniu", "stop-impair-repair"])
def test_unlearn_refuses_a_setting_the_method_ignores(capsys, tmp_path, method, flags,
                                                      contains):
  out = tmp_path / "out"
  rc, _, err = run_cli(capsys, "unlearn", "--ckpt", tmp_path / "missing", "--forget", "9",
                       "--method", method, "--out", out, *flags)
  assert_usage_error(rc, err, out, contains=contains)


@pytest.mark.parametrize("majority,contains", [
    (["10"], "outside [0, 10)"),
    (["-1"], "outside [0, 10)"),
    (["9", "9"], "duplicates"),
    (ALL_CLASSES, "every"),
], ids=["too-big", "negative", "duplicate", "every-class"])
def test_train_bad_majority_classes(capsys, tmp_path, majority, contains):
  out = tmp_path / "out"
  rc, _, err = run_cli(capsys, "train", "--data", "embedded", "--majority", *majority,
                       "--preset", "smoke", "--out", out)
  assert_usage_error(rc, err, out, contains=contains)


def test_train_refuses_an_existing_out_dir(capsys, tmp_path):
  out = tmp_path / "taken"
  out.mkdir()
  (out / "keep.txt").write_text("x")
  rc, _, err = run_cli(capsys, "train", "--data", "embedded", "--majority", "9",
                       "--preset", "smoke", "--out", out)
  assert_usage_error(rc, err, contains="already exists")
  assert [p.name for p in out.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("forget,contains", [
    (["10"], "outside [0, 10)"),
    (["-3"], "outside [0, 10)"),
    (["9", "9"], "duplicates"),
    (ALL_CLASSES, "every"),
], ids=["too-big", "negative", "duplicate", "every-class"])
def test_unlearn_bad_forget_classes(capsys, tmp_path, fmnist_shaped_ckpt, forget, contains):
  out = tmp_path / "out"
  rc, _, err = run_cli(capsys, "unlearn", "--ckpt", fmnist_shaped_ckpt[0], "--forget",
                       *forget, "--out", out)
  assert_usage_error(rc, err, out, contains=contains)


@pytest.mark.parametrize("forget", [["10"], ["9", "9"], ALL_CLASSES],
                         ids=["too-big", "duplicate", "every-class"])
def test_evaluate_bad_forget_classes(capsys, fmnist_shaped_ckpt, forget):
  rc, out, err = run_cli(capsys, "evaluate", "--ckpt", fmnist_shaped_ckpt[0], "--data",
                         "embedded", "--forget", *forget)
  assert_usage_error(rc, err)
  assert out == ""


def _foreign_dirs(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  junk = tmp_path / "junk"
  junk.mkdir()
  (junk / "model.bin").write_bytes(os.urandom(64))
  (junk / "notes.txt").write_text("not a checkpoint")
  bad_meta = tmp_path / "bad_meta"
  bad_meta.mkdir()
  (bad_meta / "metadata.json").write_text("{broken")
  other = tmp_path / "other_format"
  other.mkdir()
  (other / "metadata.json").write_text(json.dumps({"format": "torch/1"}))
  a_file = tmp_path / "a_file"
  a_file.write_text("x")
  return {"missing": tmp_path / "missing", "empty": empty, "junk": junk,
          "bad-metadata": bad_meta, "other-format": other, "a-file": a_file}


@pytest.mark.parametrize("kind", ["missing", "empty", "junk", "bad-metadata",
                                  "other-format", "a-file"])
def test_unlearn_and_evaluate_reject_missing_or_foreign_checkpoints(capsys, tmp_path, kind):
  ckpt = _foreign_dirs(tmp_path)[kind]
  out = tmp_path / "out"
  rc, _, err = run_cli(capsys, "unlearn", "--ckpt", ckpt, "--forget", "9", "--out", out)
  assert_usage_error(rc, err, out)
  rc, stdout, err = run_cli(capsys, "evaluate", "--ckpt", ckpt, "--data", "embedded",
                            "--forget", "9")
  assert_usage_error(rc, err)
  assert stdout == ""


def test_evaluate_rejects_data_that_does_not_fit_the_checkpoint(capsys, tiny_ckpt):
  rc, out, err = run_cli(capsys, "evaluate", "--ckpt", tiny_ckpt[0], "--data", "embedded",
                         "--forget", "1")
  assert_usage_error(rc, err, contains="does not fit")
  assert out == ""


def test_unlearn_needs_a_generator(capsys, tmp_path, tiny_classifier):
  meta = ckpt_lib.make_metadata(Config(width=0.0625), source="arrays",
                                image_shape=(8, 8, 1), num_classes=4, majority=[0])
  plain = ckpt_lib.save(tmp_path / "plain", tiny_classifier, None, None, meta)
  out = tmp_path / "out"
  rc, _, err = run_cli(capsys, "unlearn", "--ckpt", plain, "--forget", "1", "--out", out)
  assert_usage_error(rc, err, out, contains="generator")


@pytest.mark.parametrize("argv", [
    [],
    ["fly"],
    ["train", "--data", "embedded", "--out", "x"],                       # no --majority
    ["train", "--data", "embedded", "--majority", "nine", "--out", "x"],
    ["train", "--data", "embedded", "--majority", "9", "--preset", "huge", "--out", "x"],
    ["unlearn", "--ckpt", "c", "--forget", "9", "--out", "x", "--no-stop",
     "--stop-forget-prob", "0.1"],
    ["evaluate", "--ckpt", "c", "--forget", "9"],                        # no --data
    ["demo", "--lowering", "cudnn"],
    ["unlearn", "--ckpt", "c", "--forget", "9", "--out", "x", "--forget-loss", "hinge"],
    ["train", "--data", "embedded", "--majority", "9", "--noise-start-acc", "1.5",
     "--out", "x"],
    ["train", "--data", "embedded", "--majority", "9", "--noise-start-acc", "0",
     "--out", "x"],
    ["train", "--data", "embedded", "--majority", "9", "--noise-start-acc", "high",
     "--out", "x"],
], ids=["nothing", "unknown-command", "missing-flag", "not-an-int", "bad-preset",
        "exclusive-flags", "evaluate-no-data", "demo-bad-lowering", "bad-forget-loss",
        "noise-start-above-1", "noise-start-0", "noise-start-not-a-number"])
def test_argument_errors_are_one_line(capsys, tmp_path, monkeypatch, argv):
  monkeypatch.chdir(tmp_path)
  rc, _, err = run_cli(capsys, *argv)
  assert_usage_error(rc, err)
  assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv,expected", [([], {}), (["--lowering", "patches"],
                                                      {"lowering": "patches"})])
def test_demo_passes_its_lowering_on(capsys, monkeypatch, argv, expected):
  from geniu_jax import demo
  seen = {}

  def fake_run(log=None, **overrides):
    seen.update(overrides)
    return {"original": {"acc_r": 0.5, "acc_f": 0.9}, "retrain": {"acc_r": 0.5, "acc_f": 0.0},
            "geniu": {"acc_r": 0.4, "acc_f": 0.0}, "unlearn_ms": 1.0, "compile_ms": 1.0,
            "rounds_run": 1, "preset": "cpu", "total_s": 1.0}

  monkeypatch.setattr(demo, "run", fake_run)
  monkeypatch.setattr(demo, "format_table", lambda report: "table")
  rc, out, _ = run_cli(capsys, "demo", *argv)
  assert rc == 0 and seen == expected and "table" in out


def test_real_process_exit_code_is_2(tmp_path):
  out = tmp_path / "out"
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
  proc = subprocess.run(
      [sys.executable, "-m", "geniu_jax.cli", "unlearn", "--ckpt", str(tmp_path / "nope"),
       "--forget", "9", "--out", str(out)],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith("geniu: error:"), proc.stderr
  assert proc.stdout == ""
  assert not out.exists()


def test_ctrl_c_during_train_exits_130_with_one_line_and_leaves_nothing(tmp_path):
  import signal
  import time
  out = tmp_path / "interrupted"
  proc = subprocess.Popen(
      [sys.executable, "-m", "geniu_jax.cli", "train", "--data", "embedded", "--majority", "9",
       "--preset", "smoke", "--epochs", "200", "--out", str(out)],
      # `console_main` installs its SIGINT handler even where SIGINT was
      # inherited as ignored (a child of a non-interactive shell).
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  lines = []
  for line in proc.stderr:   # interrupt once training has started
    lines.append(line)
    if line.startswith("training GENIU"):
      break
  time.sleep(3)
  proc.send_signal(signal.SIGINT)
  lines += proc.stderr.readlines()
  assert proc.wait(timeout=60) == cli.EXIT_INTERRUPTED == 130, lines
  assert lines[-1].strip() == "geniu: interrupted", lines
  assert not out.exists()
  assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".interrupted")]


@pytest.mark.parametrize("method,item,contains", [
    ("gkt", "pseudo_batches=3", "expected METHOD.FIELD=VALUE"),
    ("gkt", "unsir.noise_steps=3", "names method 'unsir'"),
    ("geniu", "geniu.rounds=3", "does not use method_settings"),
], ids=["no-method", "other-method", "geniu"])
def test_unlearn_refuses_a_bad_set(capsys, tmp_path, method, item, contains):
  out = tmp_path / "out"
  rc, _, err = run_cli(capsys, "unlearn", "--ckpt", tmp_path / "missing", "--forget", "9",
                       "--method", method, "--set", item, "--out", out)
  assert_usage_error(rc, err, out, contains=contains)


# --- geniu unlearn --method NAME ------------------------------------------------


def test_cli_unlearn(smoke, tmp_path, capsys):
  res = smoke.result
  meta = ckpt_lib.make_metadata(smoke.cfg, source="embedded", image_shape=(28, 28, 1),
                                num_classes=10, majority=[9])
  ckpt_lib.save(tmp_path / "ck", res.classifier, res.generator, res.prompts, meta,
                records=res.records)
  ckpt_lib.save(tmp_path / "bare", res.classifier, None, None, meta)
  if not restore_works(tmp_path / "ck"):
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
