"""Checkpoints: exact round trip, one-line CheckpointErrors, checksums.

Atomic saves and strict-JSON metadata: test_checkpoint_saves.py."""

from __future__ import annotations

import copy
import json
import shutil
import sys
import types

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from geniu_jax import checkpoint as ckpt_lib
from geniu_jax import checksums
from geniu_jax.checkpoint import CheckpointError
from geniu_jax.config import Config
from geniu_jax.models import functional as F
from geniu_jax.models.conv import Conv2d
from flax import nnx

from conftest import (TINY_K, TINY_LOWERING, TINY_SHAPE, assert_trees_identical,
                      one_line_error)


def _edit_metadata(directory, edit):
  """Rewrites metadata.json with `edit(meta)` applied, as a hand edit would."""
  meta_file = directory / "metadata.json"
  meta = json.loads(meta_file.read_text())
  edit(meta)
  meta_file.write_text(json.dumps(meta))


def _drop_checksum(directory):
  """Makes `directory` look like a checkpoint written before checksums existed."""
  _edit_metadata(directory, lambda meta: meta.pop(ckpt_lib.CHECKSUM))


def _largest_state_file(directory):
  """The biggest file under state/: one of Orbax's array data files."""
  return max((p for p in (directory / "state").rglob("*") if p.is_file()),
             key=lambda p: p.stat().st_size)


def _flip_a_byte(file):
  data = bytearray(file.read_bytes())
  data[len(data) // 2] ^= 0x01
  file.write_bytes(bytes(data))


def test_round_trip_is_bit_exact(tiny_ckpt):
  path, cls, gen, prompts, meta = tiny_ckpt
  assert sorted(p.name for p in path.iterdir()) == ["metadata.json", "state"]
  ck = ckpt_lib.restore(path)
  assert ck.classifier.params is not None and ck.classifier.stats is not None
  assert_trees_identical(ck.classifier.params, cls.params)
  assert_trees_identical(ck.classifier.stats, cls.stats)
  assert ck.generator is not None and ck.generator.params is not None
  assert_trees_identical(ck.generator.params, gen.params)
  assert np.asarray(ck.prompts).dtype == np.asarray(prompts).dtype
  assert np.array_equal(np.asarray(ck.prompts), np.asarray(prompts))
  assert ck.records is None
  # Metadata: everything we wrote, plus what `save` adds.
  for key, value in meta.items():
    assert ck.metadata[key] == value, key
  assert ck.metadata["has_generator"] is True and ck.metadata["has_records"] is False
  assert ck.metadata["format"] == ckpt_lib.FORMAT
  versions = ck.metadata["versions"]
  assert versions == ckpt_lib.package_versions()
  assert versions["jax"] == jax.__version__ and versions["orbax-checkpoint"] != "unknown"
  assert ck.metadata["config"]["width"] == ck.metadata["width"]
  assert ckpt_lib.read_metadata(path) == ck.metadata
  checksum = ck.metadata[ckpt_lib.CHECKSUM]
  assert checksum["algorithm"] == "sha256" and len(checksum["metadata"]) == 64
  assert "classifier/params/head/kernel" in checksum["arrays"]
  assert any(name.startswith("state/ocdbt.process_0/d/") for name in checksum["files"])
  assert set(checksum["files"]) == {p.relative_to(path).as_posix()
                                    for p in (path / "state").rglob("*") if p.is_file()}


def test_restored_models_compute_like_the_saved_ones(tiny_ckpt):
  path, cls, gen, prompts, _ = tiny_ckpt
  ck = ckpt_lib.restore(path, lowering="patches")   # other lowering, same parameters
  logits = jax.jit(F.classifier_logits, static_argnums=0)
  np.testing.assert_allclose(
      logits(ck.classifier.graphdef, ck.classifier.params, ck.classifier.stats, prompts),
      logits(cls.graphdef, cls.params, cls.stats, prompts), rtol=1e-4, atol=1e-4)


def _conv_lowerings(model):
  module = nnx.merge(model.graphdef, model.params, *([model.stats] if model.stats is not None else []))
  return {sub.lowering for _, sub in nnx.iter_modules(module) if isinstance(sub, Conv2d)}


@pytest.mark.parametrize("stored,override,expected", [
    ("patches", None, "patches"), ("native", None, "native"), ("auto", None, "winograd"),
    ("patches", "native", "native")])
def test_models_are_rebuilt_with_the_stored_lowering_unless_told(tiny_ckpt, stored,
                                                                 override, expected):
  meta = copy.deepcopy(tiny_ckpt[4])
  meta["config"]["lowering"] = stored
  classifier, generator = ckpt_lib.build_models(meta, override)
  assert _conv_lowerings(classifier) == {expected}
  assert _conv_lowerings(generator) == {expected}


def test_restore_without_generator_and_with_records(tmp_path, tiny_classifier):
  cls = tiny_classifier
  meta = ckpt_lib.make_metadata(Config(width=0.0625), source="arrays",
                                image_shape=TINY_SHAPE, num_classes=TINY_K, majority=[0])
  records = {"counts": np.arange(4, dtype=np.int32), "nested": {"x": np.ones((2, 3))}}
  path = ckpt_lib.save(tmp_path / "plain", cls, None, None, meta, records=records)
  ck = ckpt_lib.restore(path)
  assert ck.generator is None and ck.prompts is None
  assert ck.metadata["has_generator"] is False and ck.metadata["has_records"] is True
  assert_trees_identical(ck.classifier.params, cls.params)
  np.testing.assert_array_equal(ck.records["counts"], records["counts"])
  np.testing.assert_array_equal(ck.records["nested"]["x"], records["nested"]["x"])


def test_expect_classifier_of_another_width_is_rejected(tiny_ckpt):
  path = tiny_ckpt[0]
  wider = F.make_classifier(TINY_K, TINY_SHAPE, 0.125, TINY_LOWERING, jax.random.key(0))
  with pytest.raises(CheckpointError) as excinfo:
    ckpt_lib.restore(path, expect_classifier=wider)
  assert "architecture" in one_line_error(excinfo)
  other_k = F.make_classifier(TINY_K + 1, TINY_SHAPE, 0.0625, TINY_LOWERING,
                              jax.random.key(0))
  with pytest.raises(CheckpointError) as excinfo:
    ckpt_lib.restore(path, expect_classifier=other_k)
  one_line_error(excinfo)
  # The same architecture is accepted.
  same = F.make_classifier(TINY_K, TINY_SHAPE, 0.0625, TINY_LOWERING, jax.random.key(9))
  assert ckpt_lib.restore(path, expect_classifier=same).metadata["num_classes"] == TINY_K


def test_metadata_that_does_not_fit_the_stored_arrays_is_rejected(ckpt_copy):
  _drop_checksum(ckpt_copy)   # else the edit is caught as corruption first
  _edit_metadata(ckpt_copy, lambda meta: meta["config"].update(width=0.125))
  with pytest.raises(CheckpointError) as excinfo:
    ckpt_lib.restore(ckpt_copy)
  assert "architecture" in one_line_error(excinfo)


def test_missing_directory(tmp_path):
  with pytest.raises(CheckpointError) as excinfo:
    ckpt_lib.restore(tmp_path / "nope")
  assert "does not exist" in one_line_error(excinfo)


def test_directory_without_metadata(tmp_path):
  (tmp_path / "junk.txt").write_text("hello")
  with pytest.raises(CheckpointError) as excinfo:
    ckpt_lib.restore(tmp_path)
  assert "metadata.json" in one_line_error(excinfo)


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00garbage", b""],
                         ids=["syntax", "binary", "empty"])
def test_corrupt_metadata(ckpt_copy, content):
  (ckpt_copy / "metadata.json").write_bytes(content)
  with pytest.raises(CheckpointError) as excinfo:
    ckpt_lib.restore(ckpt_copy)
  assert "corrupt" in one_line_error(excinfo)


@pytest.mark.parametrize("meta", [
    {"format": "someone_else/3", "config": {}},
    {"no_format": True},
    ["geniu_jax/1"],
    "geniu_jax/1",
], ids=["other-format", "no-format", "list", "string"])
def test_foreign_format(ckpt_copy, meta):
  (ckpt_copy / "metadata.json").write_text(json.dumps(meta))
  with pytest.raises(CheckpointError) as excinfo:
    ckpt_lib.restore(ckpt_copy)
  assert "not a geniu_jax/1 checkpoint" in one_line_error(excinfo)


def test_metadata_with_the_right_format_but_missing_fields(ckpt_copy):
  (ckpt_copy / "metadata.json").write_text(json.dumps({"format": ckpt_lib.FORMAT}))
  with pytest.raises(CheckpointError) as excinfo:
    ckpt_lib.restore(ckpt_copy)
  one_line_error(excinfo)


def _rm_state(d):
  shutil.rmtree(d / "state")


def _empty_state(d):
  shutil.rmtree(d / "state")
  (d / "state").mkdir()


def _state_is_a_file(d):
  shutil.rmtree(d / "state")
  (d / "state").write_text("not a directory")


def _junk_orbax_metadata(d):
  (d / "state" / "_METADATA").write_text("junk")


def _truncate_arrays(d):
  for f in (d / "state" / "d").iterdir():
    f.write_bytes(f.read_bytes()[:10])


def _drop_arrays(d):
  shutil.rmtree(d / "state" / "ocdbt.process_0")


@pytest.mark.parametrize("checksums", [True, False], ids=["checksummed", "legacy"])
@pytest.mark.parametrize("damage", [_rm_state, _empty_state, _state_is_a_file,
                                    _junk_orbax_metadata, _truncate_arrays, _drop_arrays],
                         ids=lambda f: f.__name__.strip("_"))
def test_damaged_state(ckpt_copy, damage, checksums):
  if not checksums:   # then Orbax's own failure is what gets translated
    _drop_checksum(ckpt_copy)
  damage(ckpt_copy)
  with pytest.raises(CheckpointError) as excinfo:
    ckpt_lib.restore(ckpt_copy)
  msg = one_line_error(excinfo)
  assert f"checkpoint {ckpt_copy} is corrupt: " in msg
  if checksums:
    assert "file state/" in msg and ("is missing" in msg or "does not match" in msg)
  else:
    assert "cannot read state/" in msg


def test_flipped_byte_in_an_array_file_is_rejected(ckpt_copy):
  data_file = _largest_state_file(ckpt_copy)
  assert data_file.parent.name == "d"
  _flip_a_byte(data_file)
  with pytest.raises(CheckpointError) as excinfo:
    ckpt_lib.restore(ckpt_copy)
  name = data_file.relative_to(ckpt_copy).as_posix()
  assert one_line_error(excinfo) == (f"checkpoint {ckpt_copy} is corrupt: file {name} "
                                      "does not match its checksum")
  ckpt_lib.read_metadata(ckpt_copy)   # the metadata itself is intact


def test_array_checksums_catch_what_the_file_check_misses(ckpt_copy, monkeypatch):
  # Orbax decodes this flipped byte without complaint; only the digests of
  # the restored arrays notice.
  monkeypatch.setattr(checksums, "files_problem", lambda root, digests: None)
  _flip_a_byte(_largest_state_file(ckpt_copy))
  with pytest.raises(CheckpointError) as excinfo:
    ckpt_lib.restore(ckpt_copy)
  msg = one_line_error(excinfo)
  assert msg.startswith(f"checkpoint {ckpt_copy} is corrupt: array ")
  assert msg.endswith(" does not match its checksum")


def test_restored_arrays_are_checked_against_their_digests(ckpt_copy, monkeypatch):
  real_restore = ocp.StandardCheckpointer.restore

  def altered(self, *args, **kwargs):
    tree = real_restore(self, *args, **kwargs)
    kernel = tree["classifier"]["params"]["head"]["kernel"]
    tree["classifier"]["params"]["head"]["kernel"] = np.asarray(kernel) + 1
    return tree

  monkeypatch.setattr(ocp.StandardCheckpointer, "restore", altered)
  with pytest.raises(CheckpointError) as excinfo:
    ckpt_lib.restore(ckpt_copy)
  assert one_line_error(excinfo) == (f"checkpoint {ckpt_copy} is corrupt: array "
                                      "classifier/params/head/kernel does not match its "
                                      "checksum")


@pytest.mark.parametrize("edit", [
    lambda meta: meta.update(num_classes=meta["num_classes"] + 1),
    lambda meta: meta.update(note="edited"),
    lambda meta: meta["config"].update(seed=meta["config"]["seed"] + 1),
    lambda meta: meta[ckpt_lib.CHECKSUM]["arrays"].update(
        {"classifier/params/head/kernel": "0" * 64}),
    lambda meta: meta[ckpt_lib.CHECKSUM]["files"].popitem(),
    lambda meta: meta[ckpt_lib.CHECKSUM].update(metadata="0" * 64),
], ids=["num-classes", "note", "nested-config", "array-digest", "file-list", "own-digest"])
def test_tampered_metadata_is_rejected(ckpt_copy, edit):
  _edit_metadata(ckpt_copy, edit)
  for read in (ckpt_lib.read_metadata, ckpt_lib.restore):
    with pytest.raises(CheckpointError) as excinfo:
      read(ckpt_copy)
    assert one_line_error(excinfo) == (f"checkpoint {ckpt_copy} is corrupt: metadata.json "
                                        "does not match its checksum")


@pytest.mark.parametrize("checksum", [
    "deadbeef", {"algorithm": "sha256"},
    {"algorithm": "md5", "metadata": "0", "files": {}, "arrays": {}}],
    ids=["string", "incomplete", "other-algorithm"])
def test_malformed_checksum_entry_is_rejected(ckpt_copy, checksum):
  _edit_metadata(ckpt_copy, lambda meta: meta.update({ckpt_lib.CHECKSUM: checksum}))
  with pytest.raises(CheckpointError) as excinfo:
    ckpt_lib.read_metadata(ckpt_copy)
  assert f"checkpoint {ckpt_copy} is corrupt: " in one_line_error(excinfo)


def test_deleted_array_file_is_a_checkpoint_error(ckpt_copy):
  data_file = _largest_state_file(ckpt_copy)
  data_file.unlink()
  with pytest.raises(CheckpointError) as excinfo:
    ckpt_lib.restore(ckpt_copy)
  name = data_file.relative_to(ckpt_copy).as_posix()
  assert one_line_error(excinfo) == f"checkpoint {ckpt_copy} is corrupt: file {name} is missing"


def test_deleted_array_file_of_a_legacy_checkpoint_is_a_checkpoint_error(ckpt_copy):
  _drop_checksum(ckpt_copy)
  _largest_state_file(ckpt_copy).unlink()
  with pytest.raises(CheckpointError) as excinfo:   # not tensorstore's or asyncio's error
    ckpt_lib.restore(ckpt_copy)
  assert "cannot read state/" in one_line_error(excinfo)


def test_closed_event_loop_reports_are_dropped_and_others_kept(monkeypatch):
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", seen.append)

  def report(exc):
    return types.SimpleNamespace(exc_type=type(exc), exc_value=exc, exc_traceback=None,
                                 err_msg=None, object=None)

  undo = ckpt_lib._silence_closed_loop_reports()
  assert ckpt_lib._silence_closed_loop_reports()() is None   # installs only once
  closed, other = report(RuntimeError("Event loop is closed")), report(ValueError("x"))
  sys.unraisablehook(closed)
  sys.unraisablehook(other)
  assert seen == [other]
  undo()
  assert sys.unraisablehook == seen.append


def test_checkpoint_without_checksum_still_restores(tiny_ckpt, ckpt_copy):
  _drop_checksum(ckpt_copy)
  ck = ckpt_lib.restore(ckpt_copy)
  assert ckpt_lib.CHECKSUM not in ck.metadata
  assert_trees_identical(ck.classifier.params, tiny_ckpt[1].params)
  assert_trees_identical(ck.generator.params, tiny_ckpt[2].params)
  assert ckpt_lib.read_metadata(ckpt_copy) == ck.metadata
