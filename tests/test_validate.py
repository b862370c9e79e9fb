"""Bad input is refused before any heavy work: one stderr line, exit 2, nothing written.

`BAD_INPUTS` is the matrix of docs/reliability.md, one row per bad input:
the command line and a substring of the one-line message. Each row runs
with training, checkpoint restoring and model building replaced by functions
that fail the test, so a row passes only if the input is refused before any
of them. Path placeholders in a command line:

  {out}             a fresh path under tmp_path (the --out of most rows)
  {ckpt}            a tiny untrained checkpoint that fits the embedded data
                    (28x28x1, K=10, B=2)
  {ckpt:F=JSON}     a copy of it whose metadata field F (dotted for
                    config.F) is set to the JSON value
  {npz:NAME}        a tiny 8x8 npz dataset, `_npz_arrays(NAME)`
  {file}            an existing regular file
  {readonly}        an existing directory with mode 0o555
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from geniu_jax import checkpoint as ckpt_lib
from geniu_jax import cli
from geniu_jax import runs
from geniu_jax import validate
from geniu_jax.config import MAX_LR, MAX_WIDTH, SELECTION_RULES, Config, get_config
from geniu_jax.data import DataError, check_image_shape, from_arrays, load
from geniu_jax.models import functional as F

TRAIN = ("train", "--data", "embedded", "--majority", "9", "--preset", "smoke")
UNLEARN = ("unlearn", "--ckpt", "{ckpt}", "--forget", "9")


def _train(*flags, out="{out}"):
  return [*TRAIN, *flags, "--out", out]


def _train_on(npz, *flags):
  return ["train", "--data", f"npz:{{npz:{npz}}}", "--majority", "0", "--preset", "smoke",
          *flags, "--out", "{out}"]


def _unlearn(*flags, ckpt="{ckpt}", out="{out}"):
  return ["unlearn", "--ckpt", ckpt, "--forget", "9", *flags, "--out", out]


def _evaluate(ckpt="{ckpt}", forget=("9",)):
  return ["evaluate", "--ckpt", ckpt, "--data", "embedded", "--forget", *forget]


def _is_root() -> bool:
  return hasattr(os, "geteuid") and os.geteuid() == 0


def _can_create_in(directory: str) -> bool:
  try:
    os.rmdir(tempfile.mkdtemp(dir=directory))
  except OSError:
    return False
  return True


_root_writes_anywhere = pytest.mark.skipif(_is_root(), reason="root ignores directory modes")
_sys_writable = pytest.mark.skipif(not os.path.isdir("/sys") or _can_create_in("/sys"),
                                   reason="/sys is absent or accepts new directories here")

# (command line, substring of the message); docs/reliability.md shows the same rows.
BAD_INPUTS = [
    # --- arguments: train ---
    pytest.param(_train("--epochs", "0"), "epochs must be an integer >= 1, got 0",
                 id="train-epochs-0"),
    pytest.param(_train("--epochs", "-1"), "epochs must be an integer >= 1, got -1",
                 id="train-epochs-negative"),
    pytest.param(_train("--width", "0"), "width must be a finite channel multiplier in (0, 16]",
                 id="train-width-0"),
    pytest.param(_train("--width", "-1"), "width must be a finite channel multiplier in (0, 16]",
                 id="train-width-negative"),
    pytest.param(_train("--width", "inf"), "got inf", id="train-width-inf"),
    pytest.param(_train("--proxies-per-class", "0"),
                 "proxies_per_class must be an integer >= 1, got 0", id="train-B-0"),
    pytest.param(_train("--seed", "-1"), "seed must be an integer in [0, 2**63 - 1], got -1",
                 id="train-seed-negative"),
    pytest.param(_train("--noise-start-acc", "nan"), "noise_start_acc must be", id="train-t-nan"),
    pytest.param(_train("--imbalance", "1.5"), "rate must be in (0, 1], got 1.5",
                 id="train-imbalance-above-1"),
    pytest.param(_train("--imbalance", "0.1,0"), "rate must be in (0, 1], got 0",
                 id="train-imbalance-rate-0"),
    # --- arguments: unlearn ---
    pytest.param(_unlearn("--lr", "-0.0004"),
                 "unlearn_lr must be a finite learning rate in (0, 10], got -0.0004",
                 id="unlearn-lr-negative"),
    pytest.param(_unlearn("--lr", "1e6"), "unlearn_lr must be a finite learning rate in (0, 10]",
                 id="unlearn-lr-huge"),
    pytest.param(_unlearn("--lr", "0"), "unlearn_lr must be a finite learning rate in (0, 10]",
                 id="unlearn-lr-0"),
    pytest.param(_unlearn("--lr", "nan"), "got nan", id="unlearn-lr-nan"),
    pytest.param(_unlearn("--lr", "inf"), "got inf", id="unlearn-lr-inf"),
    pytest.param(_unlearn("--forget-margin", "nan"),
                 "forget_margin must be a finite number >= 0, got nan", id="unlearn-margin-nan"),
    pytest.param(_unlearn("--forget-margin", "-1"),
                 "forget_margin must be a finite number >= 0, got -1",
                 id="unlearn-margin-negative"),
    pytest.param(_unlearn("--stop-forget-prob", "-1"),
                 "stop_forget_prob must be a probability in [0, 1]", id="unlearn-stop-negative"),
    pytest.param(_unlearn("--stop-forget-prob", "1.5"),
                 "stop_forget_prob must be a probability in [0, 1]", id="unlearn-stop-above-1"),
    pytest.param(_unlearn("--rounds", "0"), "unlearn_rounds must be an integer >= 1, got 0",
                 id="unlearn-rounds-0"),
    pytest.param(_unlearn("--rounds", "-5"), "unlearn_rounds must be an integer >= 1, got -5",
                 id="unlearn-rounds-negative"),
    pytest.param(_unlearn("--proxies-per-class", "0"),
                 "proxies_per_class must be an integer >= 1, got 0", id="unlearn-B-0"),
    pytest.param(_unlearn("--sharpen-target", "1"),
                 "sharpen_target must be a probability in (0, 1)",
                 id="unlearn-sharpen-1"),
    pytest.param(_unlearn("--method", "nosuch"), "unknown method 'nosuch'",
                 id="unlearn-unknown-method"),
    # --- arguments: --out ---
    pytest.param(_train(out="{file}"), "already exists (a file)", id="train-out-is-a-file"),
    pytest.param(_train(out="{file}/run"), "is a file, not a directory",
                 id="train-out-under-a-file"),
    pytest.param(_train(out="{readonly}/run"), "cannot create a directory in",
                 id="train-out-parent-not-writable", marks=_root_writes_anywhere),
    pytest.param(_train(out="/sys/geniu-validation-test/run"), "cannot create a directory in /sys",
                 id="train-out-unwritable-file-system", marks=_sys_writable),
    pytest.param(_unlearn(out="{ckpt}"), "already exists (a directory)",
                 id="unlearn-out-is-a-checkpoint"),
    pytest.param(_unlearn(out="{file}"), "already exists (a file)", id="unlearn-out-is-a-file"),
    # --- checkpoint metadata (before any array is restored) ---
    pytest.param(_unlearn(ckpt='{ckpt:num_classes="ten"}'),
                 "metadata field 'num_classes' must be an integer >= 2, got 'ten'",
                 id="meta-num-classes-string"),
    pytest.param(_unlearn(ckpt="{ckpt:num_classes=1}"),
                 "metadata field 'num_classes' must be an integer >= 2, got 1",
                 id="meta-one-class"),
    pytest.param(_unlearn(ckpt="{ckpt:image_shape=[28, 28]}"),
                 "metadata field 'image_shape' must be [H, W, C]", id="meta-image-shape-2d"),
    pytest.param(_unlearn(ckpt="{ckpt:image_shape=[0, 28, 1]}"),
                 "metadata field 'image_shape' must be [H, W, C]", id="meta-image-shape-0"),
    pytest.param(_unlearn(ckpt="{ckpt:majority=[12]}"),
                 "metadata field 'majority' must be a list of distinct class ids in [0, 10)",
                 id="meta-majority-out-of-range"),
    pytest.param(_unlearn(ckpt="{ckpt:forgotten=[3, 3]}"),
                 "metadata field 'forgotten' must be a list of distinct class ids in [0, 10)",
                 id="meta-forgotten-duplicate"),
    pytest.param(_unlearn(ckpt='{ckpt:dropped_prompts="9"}'),
                 "metadata field 'dropped_prompts' must be a list of distinct class ids",
                 id="meta-dropped-prompts-string"),
    pytest.param(_unlearn(ckpt='{ckpt:has_generator="yes"}'),
                 "metadata field 'has_generator' must be true or false", id="meta-has-generator"),
    pytest.param(_unlearn(ckpt="{ckpt:imbalance=2}"),
                 "metadata field 'imbalance' must be a rate in (0, 1]", id="meta-imbalance"),
    pytest.param(_unlearn(ckpt='{ckpt:config.epochs="3"}'),
                 "metadata field 'config' is invalid: epochs must be an integer >= 1, got '3'",
                 id="meta-config-epochs-string"),
    pytest.param(_unlearn(ckpt="{ckpt:config.unlearn_lr=-1}"),
                 "unlearn_lr must be a finite learning rate in (0, 10], got -1",
                 id="meta-config-lr-negative"),
    pytest.param(_unlearn(ckpt='{ckpt:config.lowering="cudnn"}'),
                 "metadata field 'config.lowering' must be one of", id="meta-config-lowering"),
    pytest.param(_evaluate(ckpt='{ckpt:num_classes="ten"}'),
                 "metadata field 'num_classes' must be an integer >= 2", id="evaluate-meta"),
    # --- classes, checked against the metadata ---
    pytest.param(_unlearn("--forget", "10"), "forget classes [10] are outside [0, 10)",
                 id="unlearn-forget-out-of-range"),
    pytest.param(_unlearn("--forget", "3", "3"), "contain duplicates",
                 id="unlearn-forget-duplicate"),
    pytest.param(_unlearn("--proxies-per-class", "3"), "the checkpoint has 2",
                 id="unlearn-B-above-checkpoint"),
    pytest.param(_evaluate(forget=("-1",)), "forget classes [-1] are outside [0, 10)",
                 id="evaluate-forget-negative"),
    # --- data ---
    pytest.param(_train_on("label12"), "label 12 is out of range", id="data-stray-label"),
    pytest.param(_train_on("label12_declared"), "label 12 is out of range for 10 classes",
                 id="data-label-above-declared-K"),
    pytest.param(_train_on("one_class"), "needs at least 2 classes", id="data-one-class"),
    pytest.param(_train_on("zero_width"), "image shape must be [H, W, C] with H, W >= 1",
                 id="data-zero-sized-images"),
    pytest.param(_train_on("channels_first"), "channels-first", id="data-channels-first"),
    pytest.param(_train_on("tiny10", "--imbalance", "0.5,0.5"),
                 "got 2 per-class rates for 10 classes", id="data-imbalance-count"),
    pytest.param(_train_on("tiny10", "--majority", "10"),
                 "majority classes [10] are outside [0, 10)",
                 id="data-majority-out-of-range"),
]


def _labels10(n_per_class=4):
  return np.repeat(np.arange(10), n_per_class)


def _npz_arrays(name: str) -> dict:
  rng = np.random.default_rng(0)
  y = _labels10()
  x = rng.integers(0, 256, (y.size, 8, 8), dtype=np.uint8)
  arrays = dict(x_train=x, y_train=y, x_test=x[:10], y_test=np.arange(10))
  if name == "label12":
    arrays["y_train"] = np.where(np.arange(y.size) == 0, 12, y)
  elif name == "label12_declared":
    arrays.update(y_train=np.where(np.arange(y.size) == 0, 12, y), num_classes=10)
  elif name == "one_class":
    arrays.update(y_train=np.zeros_like(y), y_test=np.zeros(10, int))
  elif name == "zero_width":
    arrays.update(x_train=np.zeros((y.size, 8, 0), np.uint8), x_test=np.zeros((10, 8, 0), np.uint8))
  elif name == "channels_first":
    arrays.update(x_train=x[:, None], x_test=x[:10, None])
  else:
    assert name == "tiny10", name
  return arrays


def _checkpoint_with(base: Path, dst: Path, assignment: str) -> Path:
  """A copy of checkpoint `base` with one metadata field set ("a.b=JSON")."""
  field, _, value = assignment.partition("=")
  shutil.copytree(base, dst)
  meta = json.loads((dst / "metadata.json").read_text())
  meta.pop("checksum", None)   # a hand edit, as a checkpoint written before checksums
  *parents, leaf = field.split(".")
  node = meta
  for key in parents:
    node = node[key]
  node[leaf] = json.loads(value)
  (dst / "metadata.json").write_text(json.dumps(meta))
  return dst


def _resolve(argv, tmp_path: Path, ckpt: Path) -> list[str]:
  out = []
  for arg in argv:
    arg = arg.replace("{out}", str(tmp_path / "out")).replace("{ckpt}", str(ckpt))
    if "{file}" in arg:
      (tmp_path / "a_file").write_text("not a directory")
      arg = arg.replace("{file}", str(tmp_path / "a_file"))
    if "{readonly}" in arg:
      (tmp_path / "readonly").mkdir(mode=0o555)
      arg = arg.replace("{readonly}", str(tmp_path / "readonly"))
    if arg.startswith("{ckpt:"):
      arg = str(_checkpoint_with(ckpt, tmp_path / "edited", arg[len("{ckpt:"):-1]))
    if "{npz:" in arg:
      head, _, rest = arg.partition("{npz:")
      name = rest[:-1]
      path = tmp_path / f"{name}.npz"
      np.savez(path, **_npz_arrays(name))
      arg = head + str(path)
    out.append(arg)
  return out


def _snapshot(path: Path):
  """None if `path` does not exist, else what is there (names and file bytes)."""
  if not os.path.lexists(path):
    return None
  if path.is_file():
    return path.read_bytes()
  return sorted((str(p.relative_to(path)), p.read_bytes() if p.is_file() else None)
                for p in path.rglob("*"))


@pytest.fixture
def no_heavy_work(monkeypatch):
  """Training, restoring and model building fail the test if reached."""
  def forbidden(what):
    def fail(*args, **kwargs):
      raise AssertionError(f"{what} ran: the input was not refused before heavy work")
    return fail

  monkeypatch.setattr(runs, "train_geniu", forbidden("training"))
  monkeypatch.setattr(ckpt_lib, "restore", forbidden("checkpoint restore"))
  monkeypatch.setattr(ckpt_lib, "build_models", forbidden("model building"))
  monkeypatch.setattr(F, "make_classifier", forbidden("classifier init"))
  monkeypatch.setattr(F, "make_generator", forbidden("generator init"))


@pytest.mark.parametrize("argv,expected", BAD_INPUTS)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(capsys, tmp_path, fmnist_shaped_ckpt,
                                                          argv, expected, request):
  ckpt = fmnist_shaped_ckpt[0]
  argv = _resolve(argv, tmp_path, ckpt)
  out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else tmp_path / "out"
  before = _snapshot(out)
  ckpt_before = _snapshot(ckpt)
  request.getfixturevalue("no_heavy_work")
  try:
    rc = cli.main(argv)
  finally:
    if (tmp_path / "readonly").exists():
      (tmp_path / "readonly").chmod(0o755)
  stdout, stderr = capsys.readouterr()
  assert rc == cli.EXIT_USAGE == 2, stderr
  lines = [line for line in stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and len(stderr.splitlines()) == 1, stderr
  assert lines[0].startswith("geniu: error: "), stderr
  assert expected in lines[0], stderr
  assert stdout == ""
  assert _snapshot(out) == before, f"{out} was written"
  if out.parent.is_dir():
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
    assert not leftovers, leftovers
  assert _snapshot(ckpt) == ckpt_before


def test_read_only_file_system_is_named(capsys, tmp_path, monkeypatch):
  def read_only(*args, **kwargs):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS))

  monkeypatch.setattr(validate.tempfile, "mkdtemp", read_only)
  out = tmp_path / "out"
  rc = cli.main(list(_train(out=str(out))))
  _, err = capsys.readouterr()
  assert rc == 2 and len(err.splitlines()) == 1
  assert f"cannot create a directory in {tmp_path} (read-only file system)" in err
  assert not out.exists()


def test_out_directories_that_do_not_exist_yet_are_fine(tmp_path):
  deep = tmp_path / "a" / "b" / "run"
  assert validate.check_output_dir(deep) == deep
  assert list(tmp_path.iterdir()) == []   # the probe leaves nothing, creates no parent


# --- Config ranges (the Python API) ----------------------------------------------------

BAD_CONFIG = [
    ("epochs", 0, "an integer >= 1"), ("epochs", -1, "an integer >= 1"),
    ("epochs", 2.0, "an integer >= 1"), ("epochs", True, "an integer >= 1"),
    ("batch_size", 0, "an integer >= 1"), ("prompt_steps", 0, "an integer >= 1"),
    ("generator_steps", -3, "an integer >= 1"), ("proxies_per_class", 0, "an integer >= 1"),
    ("unlearn_rounds", 0, "an integer >= 1"), ("unlearn_rounds", -5, "an integer >= 1"),
    ("sharpen_steps", 0, "an integer >= 1"),
    ("lr", 0.0, "in (0, 10]"), ("lr", -1e-3, "in (0, 10]"), ("lr", 1e6, "in (0, 10]"),
    ("prompt_lr", math.nan, "in (0, 10]"), ("generator_lr", math.inf, "in (0, 10]"),
    ("unlearn_lr", -0.0004, "in (0, 10]"), ("unlearn_lr", "1e-3", "in (0, 10]"),
    ("weight_decay", -1e-4, "a finite number >= 0"),
    ("kl_weight", math.nan, "a finite number >= 0"),
    ("forget_margin", math.nan, "a finite number >= 0"),
    ("forget_margin", -0.5, "a finite number >= 0"),
    ("width", 0.0, "in (0, 16]"), ("width", -1.0, "in (0, 16]"), ("width", 17.0, "in (0, 16]"),
    ("width", math.inf, "in (0, 16]"),
    ("sharpen_step", 0.0, "in (0, 1]"), ("sharpen_step", 2.0, "in (0, 1]"),
    ("latent_dim", 0, "an integer >= 1"),
    ("stop_forget_prob", -1.0, "a probability in [0, 1]"),
    ("stop_forget_prob", 1.5, "a probability in [0, 1]"),
    ("stop_forget_prob", math.nan, "a probability in [0, 1]"),
    ("seed", -1, "an integer in [0, 2**63 - 1]"), ("seed", 2**63, "an integer in [0, 2**63 - 1]"),
    ("selection", "best", "one of"), ("selection_source", "both", "one of"),
    ("retain_target", "soft", "one of"), ("forget_loss", "hinge", "one of"),
    ("sharpen_mode", "some", "one of"),
]


@pytest.mark.parametrize("field,value,allowed", BAD_CONFIG,
                         ids=[f"{f}={v!r}" for f, v, _ in BAD_CONFIG])
def test_config_out_of_range_is_a_one_line_value_error(field, value, allowed):
  for make in (lambda: Config(**{field: value}),
               lambda: get_config("cpu", **{field: value}),
               lambda: get_config("smoke").replace(**{field: value}),
               lambda: Config.from_dict(dict(Config().to_dict(), **{field: value}))):
    with pytest.raises(ValueError) as err:
      make()
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{field} must be ") and allowed in message
    assert message.endswith(f"got {value!r}")


@pytest.mark.parametrize("field,value", [
    ("lr", MAX_LR), ("unlearn_lr", 1e-6), ("width", MAX_WIDTH), ("width", 1e-3),
    ("forget_margin", 0.0), ("kl_weight", 0), ("weight_decay", 0.0), ("stop_forget_prob", 0.0),
    ("stop_forget_prob", 1.0), ("stop_forget_prob", None), ("sharpen_step", 1.0),
    ("latent_dim", None), ("latent_dim", 1), ("epochs", np.int64(3)), ("seed", 0),
    ("seed", 2**63 - 1), ("unlearn_rounds", 1),
])
def test_config_range_boundaries_are_accepted(field, value):
  assert getattr(Config(**{field: value}), field) == value


def test_config_selection_rules_match_the_selection_module():
  from geniu_jax.geniu import selection
  assert SELECTION_RULES == selection.RULES


# --- data and metadata checks (the Python API) -----------------------------------------

@pytest.mark.parametrize("shape", [(1, 1, 1), (4, 4, 1), (10, 10, 3), (28, 28, 1), (32, 32, 4),
                                   (7, 9, 2)])
def test_supported_image_shapes(shape):
  assert check_image_shape(shape, "x") == shape


@pytest.mark.parametrize("shape,match", [
    ((0, 8, 1), "H, W >= 1"), ((8, 0, 1), "H, W >= 1"), ((8, 8, 0), "1 <= C <= 4"),
    ((8, 8, 5), "1 <= C <= 4"), ((3, 32, 32), "channels-first"), ((28, 28), "got"),
    ((28.0, 28, 1), "got"), ((True, 28, 1), "got"), (None, "got"),
])
def test_unsupported_image_shapes(shape, match):
  with pytest.raises(DataError, match=r"image shape must be \[H, W, C\].*") as err:
    check_image_shape(shape, "x")
  assert match in str(err.value) and "\n" not in str(err.value)


def test_labels_must_name_every_class_unless_k_is_declared(tmp_path):
  x = np.zeros((6, 8, 8), np.uint8)
  with pytest.raises(DataError, match="no image has label 3, 4"):
    from_arrays(x, np.array([0, 1, 2, 5, 0, 1]), x, np.array([0, 1, 2, 5, 0, 1]))
  ds = from_arrays(x, np.array([0, 1, 2, 5, 0, 1]), x, np.zeros(6, int), num_classes=6)
  assert ds.num_classes == 6
  with pytest.raises(DataError, match="at least 2 classes"):
    from_arrays(x, np.zeros(6, int), x, np.zeros(6, int))
  with pytest.raises(DataError, match="at least 2 classes"):
    from_arrays(x, np.zeros(6, int), x, np.zeros(6, int), num_classes=1)
  np.savez(tmp_path / "k.npz", x_train=x, y_train=np.arange(6) % 2, x_test=x,
           y_test=np.arange(6) % 2, num_classes=np.array([3, 4]))
  with pytest.raises(DataError, match="'num_classes' must be one integer"):
    load(f"npz:{tmp_path / 'k.npz'}")


def test_check_metadata_accepts_written_checkpoints(tiny_ckpt, fmnist_shaped_ckpt):
  for path, *_, meta in (tiny_ckpt, fmnist_shaped_ckpt):
    cfg = validate.check_metadata(ckpt_lib.read_metadata(path), path)
    assert cfg == Config.from_dict(meta["config"])


def test_unlearn_refuses_training_data_that_no_longer_fits(capsys, tmp_path, fmnist_shaped_ckpt):
  """A method that rebuilds the training split checks it against the checkpoint
  before it runs: here the source now holds 8x8 images, the model 28x28."""
  npz = tmp_path / "now8x8.npz"
  np.savez(npz, **_npz_arrays("tiny10"))
  ckpt = _checkpoint_with(fmnist_shaped_ckpt[0], tmp_path / "ckpt",
                          f"data_source={json.dumps(f'npz:{npz}')}")
  out = tmp_path / "out"
  rc = cli.main(["unlearn", "--ckpt", str(ckpt), "--forget", "3", "--method", "retrain",
                 "--out", str(out)])
  _, err = capsys.readouterr()
  lines = [line for line in err.splitlines() if line.startswith("geniu: error:")]
  assert rc == 2 and len(lines) == 1, err
  assert ("([8, 8, 1], 10 classes) no longer fits the checkpoint ([28, 28, 1], 10 classes)"
          in lines[0])
  assert not out.exists()
