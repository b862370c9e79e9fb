"""`geniu.resume` and `geniu train --resume`: an interrupted run continues to
exactly the checkpoint of an uninterrupted one."""

from __future__ import annotations

import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import assert_trees_identical

from geniu_jax import checkpoint as ckpt_lib
from geniu_jax import cli
from geniu_jax.config import get_config
from geniu_jax.geniu import resume as resume_lib
from geniu_jax.geniu import train as train_lib


def _separable(n_per_class=30, k=4, seed=0):
  """8x8 images whose brightness gives the class: the prompts' gate opens
  within a few epochs, so the generator trains before and after the resume."""
  rng = np.random.default_rng(seed)
  y = np.repeat(np.arange(k), n_per_class)
  x = rng.random((len(y), 8, 8, 1)) * 0.1 + 0.3 * y[:, None, None, None]
  return x.clip(0, 1).astype(np.float32), y.astype(np.int32)


CFG = get_config("smoke", width=0.0625, proxies_per_class=2, epochs=5, prompt_steps=100,
                 prompt_lr=0.1, lowering="native")


class _Stop(Exception):
  pass


def _stop_at(prefix):
  def log(line):
    if line.startswith(prefix):
      raise _Stop
  return log


@pytest.fixture(scope="module")
def uninterrupted():
  x, y = _separable()
  return train_lib.train(CFG, x, y, 4, log=None)


def test_resumed_training_equals_the_uninterrupted_run(uninterrupted, tmp_path):
  x, y = _separable()
  state = tmp_path / "state"
  with pytest.raises(_Stop):      # dies while logging epoch 4: epochs 1-3 are stored
    train_lib.train(CFG, x, y, 4, log=_stop_at("epoch 4/"), state_dir=state)
  assert resume_lib.exists(state)
  lines = []
  resumed = train_lib.train(CFG, x, y, 4, log=lines.append, state_dir=state, resume=True)
  assert lines[0].startswith("resuming after epoch 3/5")
  assert [line.split()[1] for line in lines[1:]] == ["4/5", "5/5"]
  full = uninterrupted
  # The generator trained before and after the interruption.
  assert [row["prompts_correct"] for row in full.history][1:] == [True] * 4
  for a, b in ((full.classifier.params, resumed.classifier.params),
               (full.classifier.stats, resumed.classifier.stats),
               (full.generator.params, resumed.generator.params)):
    assert_trees_identical(a, b)
  np.testing.assert_array_equal(np.asarray(full.prompts), np.asarray(resumed.prompts))
  assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history]


def test_a_state_of_other_settings_or_data_is_refused(tmp_path):
  x, y = _separable()
  state = tmp_path / "state"
  with pytest.raises(_Stop):
    train_lib.train(CFG, x, y, 4, log=_stop_at("epoch 2/"), state_dir=state)
  with pytest.raises(resume_lib.ResumeError, match="different config"):
    train_lib.train(CFG.replace(lr=0.02), x, y, 4, log=None, state_dir=state,
                    resume=True)
  with pytest.raises(resume_lib.ResumeError, match="different data_sha256"):
    train_lib.train(CFG, x[::-1].copy(), y, 4, log=None, state_dir=state, resume=True)
  with pytest.raises(resume_lib.ResumeError, match="holds no training state"):
    train_lib.train(CFG, x, y, 4, log=None, state_dir=tmp_path / "none", resume=True)


@pytest.fixture
def separable_npz(tmp_path):
  x, y = _separable(n_per_class=20, k=3)
  path = tmp_path / "separable.npz"
  np.savez(path, x_train=(x[..., 0] * 255).astype(np.uint8), y_train=y,
           x_test=(x[..., 0] * 255).astype(np.uint8), y_test=y)
  return f"npz:{path}"


def _train_args(data, out, *flags):
  return ["train", "--data", data, "--majority", "0", "--preset", "smoke", "--width",
          "0.0625", "--epochs", "4", "--lowering", "native", "--out", str(out), *flags]


def test_sigkill_during_train_then_resume_gives_the_uninterrupted_checkpoint(
    separable_npz, tmp_path, capsys):
  killed = tmp_path / "killed"
  proc = subprocess.Popen([sys.executable, "-m", "geniu_jax.cli",
                           *_train_args(separable_npz, killed)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  for line in proc.stderr:     # killed once epoch 3 has been logged (and 2 stored)
    if line.startswith("epoch 3/"):
      break
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  proc.stderr.close()
  # Nothing a later command accepts as a checkpoint, only the training state.
  assert not killed.exists()
  state = cli.training_state_dir(killed)
  assert resume_lib.exists(state)
  with pytest.raises(ckpt_lib.CheckpointError):
    ckpt_lib.read_metadata(state)
  # Without --resume the state is not silently overwritten or ignored.
  assert cli.main(_train_args(separable_npz, killed)) == cli.EXIT_USAGE
  assert "--resume" in capsys.readouterr().err
  assert cli.main(_train_args(separable_npz, killed, "--resume")) == 0
  assert not state.exists()
  whole = tmp_path / "whole"
  assert cli.main(_train_args(separable_npz, whole)) == 0
  a, b = ckpt_lib.restore(killed), ckpt_lib.restore(whole)
  for x, y in ((a.classifier.params, b.classifier.params),
               (a.classifier.stats, b.classifier.stats),
               (a.generator.params, b.generator.params)):
    assert_trees_identical(x, y)
  np.testing.assert_array_equal(np.asarray(a.prompts), np.asarray(b.prompts))
  assert cli.main(_train_args(separable_npz, tmp_path / "fresh", "--resume")) == cli.EXIT_USAGE
  assert "no training state" in capsys.readouterr().err
