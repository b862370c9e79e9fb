"""Checks that run before any heavy work: the output path and a checkpoint's metadata.

`geniu train` and `geniu unlearn` call `check_output_dir` before they load
data or restore anything, and `check_metadata` right after reading a
checkpoint's metadata.json and before any array is restored or any program
compiled. Both fail with one line naming the value and what is allowed.
"""

from __future__ import annotations

import errno
import numbers
import os
import shutil
import tempfile
from pathlib import Path

from geniu_jax import data as data_lib
from geniu_jax.checkpoint import CheckpointError
from geniu_jax.config import Config
from geniu_jax.models.conv import LOWERINGS

__all__ = ["UsageError", "OutputPathError", "check_output_dir", "check_metadata"]


class UsageError(Exception):
  """Bad input from the command line; printed as one line, exit 2."""


class OutputPathError(ValueError):
  """An output directory that cannot be written; the message is one line."""


def _nearest_existing(path: Path) -> Path:
  for candidate in (path, *path.parents):
    if os.path.lexists(candidate):
      return candidate
  return Path(path.anchor or ".")


def check_output_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
  """Checks that a checkpoint directory can be created at `path`.

  `path` must not exist yet, and the nearest directory above it that does
  must accept a new directory: checked by creating and removing one there,
  since `os.access` says yes to root and to some read-only mounts. Missing
  directories in between are not created (saving creates them).

  Returns:
    `path` made absolute.

  Raises:
    OutputPathError: `path` exists, or an ancestor is a file, or the nearest
      existing ancestor is not writable (permissions, read-only file system).
  """
  target = Path(path).absolute()
  if os.path.lexists(target):
    kind = "directory" if target.is_dir() else "file"
    raise OutputPathError(f"output directory {path} already exists (a {kind}); {flag} must "
                          "name a new directory")
  parent = _nearest_existing(target.parent)
  if not parent.is_dir():
    raise OutputPathError(f"{flag} {path}: {parent} is a file, not a directory; {flag} must "
                          "name a new directory in a writable directory")
  try:
    probe = tempfile.mkdtemp(prefix=f".{target.name}.probe.", dir=parent)
  except OSError as err:
    reason = os.strerror(err.errno) if err.errno else type(err).__name__
    if err.errno == errno.EROFS:
      reason = "read-only file system"
    raise OutputPathError(f"{flag} {path}: cannot create a directory in {parent} ({reason}); "
                          f"{flag} must name a new directory in a writable directory") from None
  shutil.rmtree(probe, ignore_errors=True)
  return target


def _is_int(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_metadata(meta: dict, where: str | os.PathLike) -> Config:
  """Type and range checks of a checkpoint's metadata, before its arrays are read.

  Covers every field that rebuilding the models, rebuilding the training
  split or choosing classes reads: image_shape (a shape the models support,
  `data.check_image_shape`), num_classes (an integer >= 2), majority (distinct
  class ids in [0, K)), forgotten and dropped_prompts (the same), imbalance (rates in (0, 1], one or K of them),
  data_source and preset (strings), seed, has_generator and has_records,
  and the stored config (through `Config`'s own checks, plus its lowering).

  Args:
    meta: the dict `checkpoint.read_metadata` returned.
    where: the checkpoint directory, for the message.

  Returns:
    The stored `Config`.

  Raises:
    CheckpointError: one line naming the field, its value and what is allowed.
  """
  def bad(field: str, allowed: str, value) -> CheckpointError:
    return CheckpointError(f"checkpoint {where}: metadata field {field!r} must be {allowed}, "
                           f"got {value!r}")

  if not isinstance(meta.get("data_source"), str):
    raise bad("data_source", "a data source string", meta.get("data_source"))
  k = meta.get("num_classes")
  if not (_is_int(k) and k >= data_lib.sources.MIN_CLASSES):
    raise bad("num_classes", f"an integer >= {data_lib.sources.MIN_CLASSES}", k)
  shape = meta.get("image_shape")
  try:
    if not isinstance(shape, list):
      raise data_lib.DataError("not a list")
    data_lib.check_image_shape(shape, "image_shape")
  except data_lib.DataError:
    raise bad("image_shape", "[H, W, C] with H, W >= 1 and 1 <= C <= "
              f"{data_lib.sources.MAX_CHANNELS}", shape) from None
  majority = meta.get("majority")
  if (not isinstance(majority, list) or not majority
      or not all(_is_int(c) and 0 <= c < k for c in majority)
      or len(set(majority)) != len(majority) or len(majority) >= k):
    raise bad("majority", f"a list of distinct class ids in [0, {k}), not all of them",
              majority)
  if "preset" in meta and not isinstance(meta["preset"], str):
    raise bad("preset", "a string", meta["preset"])
  if "seed" in meta and not (_is_int(meta["seed"]) and meta["seed"] >= 0):
    raise bad("seed", "an integer >= 0", meta["seed"])
  for field in ("forgotten", "dropped_prompts"):
    classes = meta.get(field, [])
    if (not isinstance(classes, list) or not all(_is_int(c) and 0 <= c < k for c in classes)
        or len(set(classes)) != len(classes) or len(classes) >= k):
      raise bad(field, f"a list of distinct class ids in [0, {k}), not all of them", classes)
  for field in ("has_generator", "has_records"):
    if field in meta and not isinstance(meta[field], bool):
      raise bad(field, "true or false", meta[field])
  for field, rates in (("imbalance", meta.get("imbalance")),
                       ("config.imbalance", meta["config"].get("imbalance"))):
    if rates is None:
      continue
    try:
      data_lib.parse_imbalance(rates, k)
    except data_lib.DataError:
      raise bad(field, f"a rate in (0, 1] or a list of {k} of them", rates) from None
  try:
    cfg = Config.from_dict(meta["config"])
  except (ValueError, TypeError) as err:
    raise CheckpointError(f"checkpoint {where}: metadata field 'config' is invalid: "
                          f"{' '.join(str(err).split())}") from None
  if cfg.lowering not in LOWERINGS:
    raise bad("config.lowering", f"one of {LOWERINGS}", cfg.lowering)
  return cfg
