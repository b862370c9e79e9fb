"""Orbax checkpoints of a trained GENIU run, plus a JSON metadata record.

Layout of a checkpoint directory:

    metadata.json   data source, image shape, K, majority classes, imbalance,
                    config (width, B, seed, preset ...), package versions,
                    checksums of everything else
    state/          one Orbax PyTree: classifier params + BatchNorm stats,
                    prompts, generator params, optional baseline records

No training data is ever written. The architecture is rebuilt from the
metadata and the stored arrays are restored into it; a checkpoint whose arrays
do not fit that architecture, or the one the caller asks for, is rejected with
a one-line `CheckpointError`.

Saving goes to a hidden temporary sibling directory (`.<name>.<random>.partial`)
that is renamed into place only once complete, metadata.json written last; on
any exception, KeyboardInterrupt included, the temporary directory is removed.
A directory without metadata.json or with a temporary name (left by a killed
process) is rejected as incomplete.

Integrity: metadata.json holds sha256 digests of the files under state/, of
every array and of itself (`geniu_jax.checksums`), verified by every restore.
Checkpoints written before these checksums existed have no "checksum" entry
and are restored unverified. metadata.json is strict JSON: non-finite floats
are written as null.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from geniu_jax import checksums
from geniu_jax import jsonutil
from geniu_jax.config import Config
from geniu_jax.models import functional as F

FORMAT = "geniu_jax/1"
_PACKAGES = ("geniu_jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "chex")


_REQUIRED_METADATA = ("data_source", "image_shape", "num_classes", "majority", "config")
CHECKSUM = checksums.KEY   # metadata key of the digests; absent in older checkpoints
_TMP_SUFFIX = ".partial"   # temporary directory of a save in progress


class CheckpointError(RuntimeError):
  """A checkpoint is missing, corrupt, or does not fit the requested model."""


class Checkpoint(NamedTuple):
  classifier: F.SplitModel
  generator: F.SplitModel | None
  prompts: Any                  # [B*K', H, W, C], K' classes not dropped; or None
  records: Any                  # baseline records (pure dict) or None
  metadata: dict


def package_versions() -> dict[str, str]:
  versions = {}
  for name in _PACKAGES:
    try:
      versions[name] = importlib_metadata.version(name)
    except importlib_metadata.PackageNotFoundError:
      versions[name] = "unknown"
  return versions


def make_metadata(cfg: Config, *, source: str, image_shape, num_classes: int,
                  majority, extra: dict | None = None) -> dict:
  meta = {
      "format": FORMAT,
      "data_source": source,
      "image_shape": [int(s) for s in image_shape],
      "num_classes": int(num_classes),
      "majority": [int(k) for k in majority],
      "imbalance": cfg.to_dict()["imbalance"],
      "width": cfg.width,
      "seed": cfg.seed,
      "preset": cfg.preset,
      "config": cfg.to_dict(),
      "versions": package_versions(),
  }
  meta.update(extra or {})
  return meta


def shape_of(meta: dict) -> tuple[int, ...]:
  return tuple(int(d) for d in meta["image_shape"])


def generator_epochs(meta: dict) -> int | None:
  """Epochs in which a checkpoint's GENIU generator trained, from its metadata.

  Read from "checks" (`runs.save_run`); checkpoints written before it existed
  are counted from their "history" rows' `prompts_correct`, the gate of Alg. 1
  ("all prompts classified correctly") that lets the generator train. None
  when the metadata says neither (no GENIU run, or a hand-made checkpoint).
  """
  checks = meta.get("checks")
  if isinstance(checks, dict) and isinstance(checks.get("generator_epochs"), int):
    return checks["generator_epochs"]
  rows = [r for r in meta.get("history") or [] if isinstance(r, dict)]
  if any("prompts_correct" in r for r in rows):
    return sum(bool(r.get("prompts_correct")) for r in rows)
  return None


def str_keys(tree: Any) -> Any:
  # Orbax stores dict keys as strings; NNX lists give integer keys.
  if isinstance(tree, dict):
    return {str(k): str_keys(v) for k, v in tree.items()}
  return tree


def keys_like(stored: Any, like: Any) -> Any:
  """Maps string keys back to the key types of `like` (e.g. list indices)."""
  if isinstance(like, dict):
    return {k: keys_like(stored[str(k)], v) for k, v in like.items()}
  return stored


def _filled(state, stored: dict):
  """`state` (an nnx.State) with its values replaced by the stored arrays."""
  like = nnx.to_pure_dict(state)
  nnx.replace_by_pure_dict(state, keys_like(stored, like))  # in place, returns None
  return state


def _to_tree(classifier, generator, prompts, records) -> dict:
  tree = {"classifier": {"params": nnx.to_pure_dict(classifier.params),
                         "stats": nnx.to_pure_dict(classifier.stats)}}
  if generator is not None:
    tree["generator"] = {"params": nnx.to_pure_dict(generator.params)}
    tree["prompts"] = np.asarray(prompts)
  if records is not None:
    tree["records"] = records
  return str_keys(tree)


def _corrupt(path: Path, what: str) -> CheckpointError:
  return CheckpointError(f"checkpoint {path} is corrupt: {what}")


def _write_synced(path: Path, text: str) -> None:
  with path.open("w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())


def _sync_dir(path: Path) -> None:
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:   # not every file system syncs directories
    pass
  finally:
    os.close(fd)


def save(directory: str | os.PathLike, classifier: F.SplitModel,
         generator: F.SplitModel | None, prompts, metadata: dict,
         records: Any = None) -> Path:
  """Writes a checkpoint; `directory` must not exist yet. Atomic on success.

  `metadata` may come from a restored checkpoint: its old checksums are
  replaced. Non-finite floats in it are written as null.
  """
  target = Path(directory).absolute()
  if target.exists():
    raise CheckpointError(f"output directory {target} already exists")
  # Unserialisable metadata fails here, before any array is written; the
  # round trip gives the exact form `read_metadata` will see.
  meta = {k: v for k, v in metadata.items() if k != CHECKSUM}
  meta.update(has_generator=generator is not None, has_records=records is not None)
  meta = json.loads(jsonutil.dumps(meta))
  target.parent.mkdir(parents=True, exist_ok=True)
  global _saves_in_progress
  _saves_in_progress += 1
  try:
    _write(target, classifier, generator, prompts, meta, records)
  finally:
    _saves_in_progress -= 1
  return target


# Saves under way: an interrupt handler that exits at once must instead let
# them unwind through their cleanup (`geniu_jax.cli.console_main`).
_saves_in_progress = 0


def saving() -> bool:
  """Whether a `save` is writing now."""
  return _saves_in_progress > 0


def _write(target: Path, classifier, generator, prompts, meta: dict, records) -> None:
  done = False
  tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=_TMP_SUFFIX,
                              dir=target.parent))
  try:
    tree = jax.device_get(_to_tree(classifier, generator, prompts, records))
    # Leaving the block waits for Orbax's background writes, also when an
    # exception (or Ctrl-C) interrupts the save, so that nothing is still
    # writing into `tmp` when it is removed.
    with ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(tmp / "state", tree)
      checkpointer.wait_until_finished()
    meta[CHECKSUM] = checksums.entry(meta, checksums.file_digests(tmp, "state"),
                                     checksums.array_digests(tree))
    _write_synced(tmp / "metadata.json", jsonutil.dumps(meta, indent=2, sort_keys=True))
    tmp.rename(target)
    done = True
    _sync_dir(target.parent)
  finally:
    if not done:
      shutil.rmtree(tmp, ignore_errors=True)


def _check_complete(path: Path) -> None:
  """Rejects what is not a finished checkpoint directory."""
  if not path.is_dir():
    raise CheckpointError(f"checkpoint directory {path} does not exist")
  if path.name.startswith(".") and path.name.endswith(_TMP_SUFFIX):
    raise CheckpointError(f"checkpoint {path} is incomplete: it is the temporary "
                          "directory of an unfinished save")
  if not (path / "metadata.json").is_file():
    if (path / "state").exists():
      raise CheckpointError(f"checkpoint {path} is incomplete: no metadata.json")
    raise CheckpointError(f"{path} is not a geniu_jax checkpoint (no metadata.json)")


def read_metadata(directory: str | os.PathLike) -> dict:
  """The metadata of a checkpoint, its checksum verified when it has one.

  Raises:
    CheckpointError: missing, incomplete, foreign or corrupt checkpoint.
  """
  path = Path(directory)
  _check_complete(path)
  meta_file = path / "metadata.json"
  try:
    meta = json.loads(meta_file.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as err:
    raise CheckpointError(f"corrupt checkpoint metadata in {meta_file}: {err}") from None
  if not isinstance(meta, dict) or meta.get("format") != FORMAT:
    raise CheckpointError(f"{path} is not a {FORMAT} checkpoint")
  problem = checksums.metadata_problem(meta) if CHECKSUM in meta else None
  if problem:
    raise _corrupt(path, problem)
  missing = [k for k in _REQUIRED_METADATA if k not in meta]
  if missing or not isinstance(meta.get("config"), dict):
    raise CheckpointError(f"corrupt checkpoint metadata in {meta_file}: missing {missing or ['config']}")
  return meta


def build_models(meta: dict, lowering: str | None = None, precision: str | None = None, *,
                 initialise: bool = True) -> tuple[F.SplitModel, F.SplitModel | None]:
  """Freshly initialised models of the checkpoint's architecture.

  `lowering=None` / `precision=None` take the ones the checkpoint was trained
  with (its stored config), so a model is served with the arithmetic it was
  trained with; lowerings differ only in float32 rounding. The parameters
  are float32 whatever the precision, so any checkpoint fits any precision.
  `initialise=False` gives shape-only states (`jax.ShapeDtypeStruct`
  leaves) for `restore` to fill: a fresh process then loads no init program
  (most of a restore's time otherwise).
  """
  cfg = Config.from_dict(meta["config"])
  lowering = cfg.lowering if lowering is None else lowering
  precision = cfg.precision if precision is None else precision
  shape = tuple(meta["image_shape"])
  key = jax.random.key(0) if initialise else None
  classifier = F.make_classifier(meta["num_classes"], shape, cfg.width, lowering, key,
                                 precision)
  generator = None
  if meta.get("has_generator", True):
    generator = F.make_generator(shape, cfg.latent_dim, lowering, key)
  return classifier, generator


def _check_shapes(stored: Any, expected: Any, what: str) -> None:
  s_flat = dict(jax.tree_util.tree_leaves_with_path(stored))
  e_flat = dict(jax.tree_util.tree_leaves_with_path(expected))
  if s_flat.keys() != e_flat.keys():
    missing = sorted(map(jax.tree_util.keystr, e_flat.keys() - s_flat.keys()))[:1]
    extra = sorted(map(jax.tree_util.keystr, s_flat.keys() - e_flat.keys()))[:1]
    raise CheckpointError(f"checkpoint does not match the {what} architecture "
                          f"(missing {missing}, unexpected {extra})")
  for path, leaf in s_flat.items():
    if tuple(np.shape(leaf)) != tuple(np.shape(e_flat[path])):
      raise CheckpointError(
          f"checkpoint does not match the {what} architecture: {jax.tree_util.keystr(path)} "
          f"has shape {tuple(np.shape(leaf))}, expected {tuple(np.shape(e_flat[path]))}")


def _is_closed_loop_report(unraisable) -> bool:
  return (isinstance(unraisable.exc_value, RuntimeError)
          and str(unraisable.exc_value) == "Event loop is closed")


def _silence_closed_loop_reports():
  """Drops the "Event loop is closed" reports of a failed Orbax restore.

  When one read fails, Orbax closes its event loop while tensorstore still
  has the checkpoint's other reads in flight; each of them then reports a
  RuntimeError("Event loop is closed") through `sys.unraisablehook`, one
  traceback per array, before and after the CheckpointError. Those reports
  carry nothing, so a hook that drops exactly them (and passes everything
  else on) is put in front of the current one. Returns a function that takes
  it out again, for a read that succeeded.
  """
  previous = sys.unraisablehook
  if getattr(previous, "_drops_closed_loop_reports", False):
    return lambda: None

  def hook(unraisable):
    if not _is_closed_loop_report(unraisable):
      previous(unraisable)

  hook._drops_closed_loop_reports = True
  sys.unraisablehook = hook

  def undo():
    if sys.unraisablehook is hook:
      sys.unraisablehook = previous

  return undo


def _read_state(path: Path) -> dict:
  """The stored PyTree; any failure to read it is a one-line CheckpointError."""
  undo = _silence_closed_loop_reports()
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      stored = checkpointer.restore(path / "state")
  except Exception as err:  # Orbax and tensorstore raise many types for bad data.
    # The hook stays: reads still in flight report after this returns.
    text = str(err).strip()
    first = text.splitlines()[0] if text else type(err).__name__
    raise _corrupt(path, f"cannot read state/ ({first})") from None
  undo()
  if not isinstance(stored, dict) or "classifier" not in stored:
    raise _corrupt(path, "state/ holds no classifier")
  return stored


def _stored_section(path: Path, stored: dict, *keys: str) -> Any:
  node = stored
  for key in keys:
    if not isinstance(node, dict) or key not in node:
      raise _corrupt(path, f"state/ holds no {'/'.join(keys)}")
    node = node[key]
  return node


def restore(directory: str | os.PathLike, *, lowering: str | None = None,
            precision: str | None = None,
            expect_classifier: F.SplitModel | None = None) -> Checkpoint:
  """Restores a checkpoint written by `save`.

  A checkpoint with checksums has its files verified before they are read
  and its arrays after; one without (written before checksums existed) is
  restored unverified.

  Args:
    directory: checkpoint directory.
    lowering: conv lowering of the rebuilt models (parameters are identical);
      None: the stored config's (`auto` unless training chose one).
    precision: the classifier's compute dtype (`Config.precision`); None:
      the stored config's.
    expect_classifier: if given, the checkpoint must fit this classifier's
      parameter shapes (e.g. a model built by the caller).

  Raises:
    CheckpointError: missing, incomplete, corrupt or mismatched checkpoint.
  """
  path = Path(directory).absolute()
  meta = read_metadata(path)
  checksum = meta.get(CHECKSUM)
  if checksum is not None:
    problem = checksums.files_problem(path, checksum["files"])
    if problem:
      raise _corrupt(path, problem)
  classifier, generator = build_models(meta, lowering, precision, initialise=False)
  if expect_classifier is not None:
    _check_shapes(str_keys(nnx.to_pure_dict(classifier.params)),
                  str_keys(nnx.to_pure_dict(expect_classifier.params)), "requested classifier")
  stored = _read_state(path)
  if checksum is not None:
    problem = checksums.arrays_problem(stored, checksum["arrays"])
    if problem:
      raise _corrupt(path, problem)
  expected = _to_tree(classifier, None, None, None)["classifier"]
  _check_shapes(stored["classifier"], expected, "classifier")
  params = _filled(classifier.params, stored["classifier"]["params"])
  stats = _filled(classifier.stats, stored["classifier"]["stats"])
  restored_gen, prompts = None, None
  if generator is not None:
    gen_stored = _stored_section(path, stored, "generator", "params")
    prompts = jax.numpy.asarray(_stored_section(path, stored, "prompts"))
    # Unlearned checkpoints hold the prompts of the classes not forgotten only.
    have = meta["num_classes"] - len(meta.get("dropped_prompts", []))
    if prompts.ndim != 4 or prompts.shape[0] % have or prompts.shape[1:] != shape_of(meta):
      raise _corrupt(path, f"prompts of shape {tuple(prompts.shape)} do not tile {have} "
                           f"classes of images {shape_of(meta)}")
    _check_shapes(gen_stored, str_keys(nnx.to_pure_dict(generator.params)), "generator")
    gparams = _filled(generator.params, gen_stored)
    restored_gen = F.SplitModel(generator.graphdef, gparams, generator.stats)
  return Checkpoint(F.SplitModel(classifier.graphdef, params, stats), restored_gen,
                    prompts, stored.get("records"), meta)
