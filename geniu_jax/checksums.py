"""sha256 digests of a checkpoint's files, arrays and metadata (`geniu_jax.checkpoint`).

metadata.json holds, under "checksum":

  * "files": every file under state/, checked before Orbax reads any of them,
    so a damaged or missing file is reported by name (Orbax itself restores
    a flipped byte without complaint);
  * "arrays": every restored array, keyed by tree path such as
    "classifier/params/head/kernel", over its dtype, shape and bytes -- an
    end-to-end check of what is handed to the model;
  * "metadata": the canonical JSON (sorted keys, no whitespace) of
    metadata.json without this one digest, so it covers the other two.

The checks return a one-line description of the first mismatch, or None.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np

KEY = "checksum"        # the metadata entry; absent in older checkpoints
ALGORITHM = "sha256"


def _key_name(entry) -> str:
  for attr in ("key", "idx", "name"):   # DictKey, SequenceKey, GetAttrKey
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def array_digests(tree: Any) -> dict[str, str]:
  """{"a/b/c": sha256 of dtype, shape and bytes} of every leaf of `tree`.

  Paths are joined key names, so a list index and the string key Orbax may
  restore it as name the same array.
  """
  digests = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    arr = np.ascontiguousarray(np.asarray(leaf))
    h = hashlib.sha256(f"{arr.dtype.name}{list(arr.shape)}".encode())
    h.update(arr.tobytes())
    digests["/".join(_key_name(e) for e in path)] = h.hexdigest()
  return digests


def file_digest(path: Path) -> str:
  h = hashlib.sha256()
  with path.open("rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def file_digests(root: Path, sub: str) -> dict[str, str]:
  """{"sub/relative/path": sha256} of every file under root/sub."""
  return {p.relative_to(root).as_posix(): file_digest(p)
          for p in sorted((root / sub).rglob("*")) if p.is_file()}


def metadata_digest(meta: dict) -> str:
  """sha256 of the canonical JSON of `meta` without its own digest.

  Raises ValueError for bare NaN/Infinity, which `save` never writes.
  """
  body = dict(meta)
  if isinstance(body.get(KEY), dict):
    body[KEY] = {k: v for k, v in body[KEY].items() if k != "metadata"}
  text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                    allow_nan=False)
  return hashlib.sha256(text.encode()).hexdigest()


def entry(meta: dict, files: dict[str, str], arrays: dict[str, str]) -> dict:
  """The "checksum" entry for `meta` (which must not hold one yet)."""
  out = {"algorithm": ALGORITHM, "files": files, "arrays": arrays}
  out["metadata"] = metadata_digest(dict(meta, **{KEY: out}))
  return out


def metadata_problem(meta: dict) -> str | None:
  """What is wrong with metadata that holds a "checksum" entry, or None."""
  checksum = meta[KEY]
  if (not isinstance(checksum, dict) or not isinstance(checksum.get("metadata"), str)
      or not isinstance(checksum.get("files"), dict)
      or not isinstance(checksum.get("arrays"), dict)):
    return f"malformed {KEY!r} entry in metadata.json"
  if checksum.get("algorithm") != ALGORITHM:
    return f"unknown checksum algorithm {checksum.get('algorithm')!r}"
  try:
    digest = metadata_digest(meta)
  except ValueError:   # NaN or Infinity put in by hand
    digest = None
  if digest != checksum["metadata"]:
    return "metadata.json does not match its checksum"
  return None


def files_problem(root: Path, digests: dict[str, str]) -> str | None:
  for name in sorted(digests):
    file = root / name
    if not file.is_file():
      return f"file {name} is missing"
    if file_digest(file) != digests[name]:
      return f"file {name} does not match its checksum"
  return None


def arrays_problem(tree: Any, digests: dict[str, str]) -> str | None:
  actual = array_digests(tree)
  for name in sorted(digests.keys() | actual.keys()):
    if name not in actual:
      return f"array {name} is missing"
    if name not in digests:
      return f"array {name} has no checksum"
    if actual[name] != digests[name]:
      return f"array {name} does not match its checksum"
  return None
