"""Checkpoint saves: atomic (a killed, failing or interrupted save leaves
nothing behind, and a leftover temporary directory is never read as a
checkpoint) and strict-JSON metadata (non-finite floats written as null).
Round trips, damaged checkpoints and checksums: test_checkpoint.py."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import orbax.checkpoint as ocp
import pytest

from geniu_jax import checkpoint as ckpt_lib
from geniu_jax import jsonutil
from geniu_jax.checkpoint import CheckpointError

from conftest import assert_trees_identical, make_tiny_checkpoint, one_line_error


def _listing(root):
  """{relative path: bytes} of every file under root (directories as None)."""
  return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
          for p in sorted(root.rglob("*"))}


def _strict_json(text):
  def refuse(token):
    raise ValueError(f"non-JSON constant {token}")
  return json.loads(text, parse_constant=refuse)


def test_directory_without_metadata_but_with_state_is_incomplete(ckpt_copy):
  (ckpt_copy / "metadata.json").unlink()
  for read in (ckpt_lib.read_metadata, ckpt_lib.restore):
    with pytest.raises(CheckpointError) as excinfo:
      read(ckpt_copy)
    assert one_line_error(excinfo) == (f"checkpoint {ckpt_copy} is incomplete: "
                                        "no metadata.json")


def test_leftover_temporary_directory_is_incomplete(tiny_ckpt, tmp_path):
  # What a killed `save` leaves, here in its last instant: complete inside.
  leftover = tmp_path / ".ckpt.k2x9q1ab.partial"
  shutil.copytree(tiny_ckpt[0], leftover)
  for read in (ckpt_lib.read_metadata, ckpt_lib.restore):
    with pytest.raises(CheckpointError) as excinfo:
      read(leftover)
    assert "is incomplete" in one_line_error(excinfo)


def test_save_into_an_existing_directory_raises_and_leaves_it_untouched(tiny_ckpt, tmp_path):
  _, cls, gen, prompts, meta = tiny_ckpt
  target = tmp_path / "taken"
  target.mkdir()
  (target / "keep.txt").write_text("precious")
  (target / "sub").mkdir()
  (target / "sub" / "x.bin").write_bytes(b"\x00\x01")
  before = _listing(tmp_path)
  with pytest.raises(CheckpointError) as excinfo:
    ckpt_lib.save(target, cls, gen, prompts, meta)
  assert "already exists" in one_line_error(excinfo)
  assert _listing(tmp_path) == before   # also: no temporary sibling left behind
  # An existing checkpoint is not overwritten either.
  existing = tiny_ckpt[0]
  before = _listing(existing)
  with pytest.raises(CheckpointError):
    ckpt_lib.save(existing, cls, gen, prompts, meta)
  assert _listing(existing) == before


def test_failing_orbax_save_leaves_nothing_behind(tiny_ckpt, tmp_path, monkeypatch):
  _, cls, gen, prompts, meta = tiny_ckpt

  def boom(self, *args, **kwargs):
    raise RuntimeError("disk on fire")

  monkeypatch.setattr(ocp.StandardCheckpointer, "save", boom)
  target = tmp_path / "parent" / "ckpt"
  with pytest.raises(RuntimeError, match="disk on fire"):
    ckpt_lib.save(target, cls, gen, prompts, meta)
  assert not target.exists()
  assert list((tmp_path / "parent").iterdir()) == []   # no temporary directory either


def test_failing_metadata_write_leaves_nothing_behind(tiny_ckpt, tmp_path):
  _, cls, gen, prompts, meta = tiny_ckpt
  target = tmp_path / "ckpt"
  with pytest.raises(TypeError):   # an object json cannot serialise
    ckpt_lib.save(target, cls, gen, prompts, dict(meta, bad=object()))
  assert list(tmp_path.iterdir()) == []


def test_save_then_restore_again_after_a_failed_save(tmp_path, monkeypatch):
  """A failed save does not poison the target path."""
  target = tmp_path / "again"
  with monkeypatch.context() as m:
    m.setattr(ocp.StandardCheckpointer, "save",
              lambda self, *a, **k: (_ for _ in ()).throw(OSError("full")))
    with pytest.raises(OSError):
      make_tiny_checkpoint(target, seed=3)
  assert not target.exists()
  path, cls, *_ = make_tiny_checkpoint(target, seed=3)
  assert_trees_identical(ckpt_lib.restore(path).classifier.params, cls.params)


def _interrupt(*args, **kwargs):
  raise KeyboardInterrupt


@pytest.mark.parametrize("where", ["orbax-save", "metadata-write"])
def test_interrupted_save_leaves_nothing_behind(tiny_ckpt, tmp_path, monkeypatch, where):
  _, cls, gen, prompts, meta = tiny_ckpt
  written = []
  if where == "orbax-save":
    monkeypatch.setattr(ocp.StandardCheckpointer, "save", _interrupt)
  else:   # after Orbax wrote every array into the temporary directory
    def interrupt_after_state(path, text):
      written.extend(p.name for p in path.parent.iterdir())
      _interrupt()
    monkeypatch.setattr(ckpt_lib, "_write_synced", interrupt_after_state)
  target = tmp_path / "parent" / "ckpt"
  with pytest.raises(KeyboardInterrupt):
    ckpt_lib.save(target, cls, gen, prompts, meta)
  assert not target.exists()
  assert list((tmp_path / "parent").iterdir()) == []   # no temporary directory either
  if where == "metadata-write":
    assert written == ["state"]


def test_non_finite_metadata_is_written_as_null(tiny_ckpt, tmp_path):
  _, cls, gen, prompts, meta = tiny_ckpt
  extra = {"loss": float("nan"), "bounds": [float("-inf"), 1.5, float("inf")],
           "nested": {"acc": np.float32("nan"), "count": 3}}
  path = ckpt_lib.save(tmp_path / "nan", cls, gen, prompts, dict(meta, **extra))
  text = (path / "metadata.json").read_text()
  assert "NaN" not in text and "Infinity" not in text
  written = _strict_json(text)
  assert written["loss"] is None and written["bounds"] == [None, 1.5, None]
  assert written["nested"] == {"acc": None, "count": 3}
  ck = ckpt_lib.restore(path)   # its checksum covers the nulls
  assert ck.metadata["loss"] is None


def test_strict_json_parser_refuses_bare_nan():
  with pytest.raises(ValueError):
    _strict_json(json.dumps({"x": float("nan")}))


def test_finite_or_null():
  value = {"a": (1.0, float("inf")), "b": [np.float64("-inf"), np.float32(2.5)], "c": 7,
           "d": True, "e": None, "f": "NaN", 3: float("nan")}
  assert jsonutil.finite_or_null(value) == {"a": [1.0, None], "b": [None, 2.5], "c": 7,
                                            "d": True, "e": None, "f": "NaN", 3: None}
  assert _strict_json(jsonutil.dumps({"x": [math.nan, 1]})) == {"x": [None, 1]}


def test_resaving_restored_metadata_gets_fresh_checksums(tiny_ckpt, tmp_path):
  """As `geniu unlearn` does: metadata of a restored checkpoint plus a report."""
  ck = ckpt_lib.restore(tiny_ckpt[0])
  old = ck.metadata[ckpt_lib.CHECKSUM]
  path = ckpt_lib.save(tmp_path / "again", ck.classifier, ck.generator, ck.prompts,
                       dict(ck.metadata, unlearned={"rounds_run": 2}))
  again = ckpt_lib.restore(path)
  assert again.metadata["unlearned"] == {"rounds_run": 2}
  new = again.metadata[ckpt_lib.CHECKSUM]
  assert new["metadata"] != old["metadata"]
  assert new["arrays"] == old["arrays"]   # same arrays, same digests
