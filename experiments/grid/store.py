"""The result store of a grid: one JSON record per finished (cell, method).

Layout of a work dir (any `etils.epath` path, so `gs://` works):

    records/<key>.json   one record, written to a temporary name and renamed,
                         so it exists whole or not at all
    results.jsonl        every record, one per line, sorted; rebuilt (temp +
                         rename) after each new record and by --report
    originals/<key>/     the original models (geniu_jax checkpoints)

Why a file per record and not appends to one file: object stores such as GCS
cannot append, and several hosts filling one work dir (`--shard i/n`) would
interleave appends on a network file system. A rename is atomic on POSIX
file systems and a GCS object is written whole. `records/` is the truth;
`results.jsonl` is the same records in one file for readers, and
`read_records` ignores anything that is not a whole record (a temporary file
left by a killed writer).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import uuid
from typing import Any, Iterable

from etils import epath

RECORDS = "records"
RESULTS = "results.jsonl"
_SORT_FIELDS = ("dataset", "seed", "forget", "imbalance", "train_variant", "method")


def clean(value: Any) -> Any:
  """JSON-safe copy: NaN and inf become null (bare NaN is not JSON)."""
  if isinstance(value, dict):
    return {str(k): clean(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [clean(v) for v in value]
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def atomic_write(path: epath.Path, text: str) -> None:
  """Writes `text` to a temporary sibling, then renames it onto `path`."""
  tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
  try:
    with tmp.open("w") as f:
      f.write(text)
      f.flush()
      if hasattr(f, "fileno"):
        try:
          os.fsync(f.fileno())
        except (OSError, ValueError):  # not a local file (e.g. GCS)
          pass
    tmp.replace(path)
  except BaseException:
    if tmp.exists():
      tmp.unlink()
    raise


def now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def host() -> str:
  return platform.node()


class Store:
  """Records of one work dir."""

  def __init__(self, workdir: str | os.PathLike):
    self.root = epath.Path(workdir)
    self.records_dir = self.root / RECORDS

  def done(self) -> set[str]:
    """Keys of the finished records."""
    if not self.records_dir.exists():
      return set()
    return {p.name[:-len(".json")] for p in self.records_dir.glob("*.json")
            if not p.name.startswith(".")}

  def prune(self, keep: set[str]) -> list[str]:
    """Deletes every record whose key is not in `keep` (settings a preset no
    longer has); refreshes results.jsonl. Returns the deleted keys."""
    gone = sorted(self.done() - keep)
    for key in gone:
      (self.records_dir / f"{key}.json").unlink()
    self.write_results()
    return gone

  def write(self, key: str, record: dict) -> None:
    """Stores one record whole, then refreshes results.jsonl."""
    self.records_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(clean(dict(record, key=key)), sort_keys=True, allow_nan=False)
    atomic_write(self.records_dir / f"{key}.json", text + "\n")
    self.write_results()

  def read_records(self) -> list[dict]:
    """Every whole record, in the store's sort order."""
    if not self.records_dir.exists():
      return []
    records = []
    for path in self.records_dir.glob("*.json"):
      if path.name.startswith("."):
        continue
      try:
        records.append(json.loads(path.read_text()))
      except (json.JSONDecodeError, UnicodeDecodeError):
        continue  # cannot happen with atomic writes; a foreign file is skipped
    return sorted(records, key=sort_key)

  def write_results(self) -> list[dict]:
    records = self.read_records()
    atomic_write(self.root / RESULTS,
                 "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    return records


def _sortable(value: Any) -> str:
  if isinstance(value, int):
    return f"{value:012d}"
  if isinstance(value, list):
    return ",".join(_sortable(v) for v in value)
  return json.dumps(value, sort_keys=True)


def sort_key(record: dict) -> tuple:
  return tuple(_sortable(record.get(f)) for f in _SORT_FIELDS) + (record.get("key", ""),)


def load_jsonl(path: str | os.PathLike) -> list[dict]:
  """Records of a results.jsonl (e.g. a committed one)."""
  lines: Iterable[str] = epath.Path(path).read_text().splitlines()
  return [json.loads(line) for line in lines if line.strip()]
