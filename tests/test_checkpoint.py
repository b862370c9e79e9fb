"""Checkpoints: exact round trip, one-line CheckpointErrors, atomic saves."""

from __future__ import annotations

import copy
import json
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from geniu_jax import checkpoint as ckpt_lib
from geniu_jax.checkpoint import CheckpointError
from geniu_jax.config import Config
from geniu_jax.models import functional as F
from geniu_jax.models.conv import Conv2d
from flax import nnx

from conftest import (TINY_K, TINY_LOWERING, TINY_SHAPE, assert_trees_identical,
                      make_tiny_checkpoint)


def _one_line_error(excinfo) -> str:
  msg = str(excinfo.value)
  assert msg and "\n" not in msg, repr(msg)
  return msg


def _listing(root):
  """{relative path: bytes} of every file under root (directories as None)."""
  return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
          for p in sorted(root.rglob("*"))}


@pytest.fixture
def ckpt_copy(tiny_ckpt, tmp_path):
  """A private copy of the tiny checkpoint that a test may damage."""
  dst = tmp_path / "copy"
  shutil.copytree(tiny_ckpt[0], dst)
  return dst


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
  assert "architecture" in _one_line_error(excinfo)
  other_k = F.make_classifier(TINY_K + 1, TINY_SHAPE, 0.0625, TINY_LOWERING,
                              jax.random.key(0))
  with pytest.raises(CheckpointError) as excinfo:
    ckpt_lib.restore(path, expect_classifier=other_k)
  _one_line_error(excinfo)
  # The same architecture is accepted.
  same = F.make_classifier(TINY_K, TINY_SHAPE, 0.0625, TINY_LOWERING, jax.random.key(9))
  assert ckpt_lib.restore(path, expect_classifier=same).metadata["num_classes"] == TINY_K


def test_metadata_that_does_not_fit_the_stored_arrays_is_rejected(ckpt_copy):
  meta_file = ckpt_copy / "metadata.json"
  meta = json.loads(meta_file.read_text())
  meta["config"]["width"] = 0.125
  meta_file.write_text(json.dumps(meta))
  with pytest.raises(CheckpointError) as excinfo:
    ckpt_lib.restore(ckpt_copy)
  assert "architecture" in _one_line_error(excinfo)


def test_missing_directory(tmp_path):
  with pytest.raises(CheckpointError) as excinfo:
    ckpt_lib.restore(tmp_path / "nope")
  assert "does not exist" in _one_line_error(excinfo)


def test_directory_without_metadata(tmp_path):
  (tmp_path / "junk.txt").write_text("hello")
  with pytest.raises(CheckpointError) as excinfo:
    ckpt_lib.restore(tmp_path)
  assert "metadata.json" in _one_line_error(excinfo)


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00garbage", b""],
                         ids=["syntax", "binary", "empty"])
def test_corrupt_metadata(ckpt_copy, content):
  (ckpt_copy / "metadata.json").write_bytes(content)
  with pytest.raises(CheckpointError) as excinfo:
    ckpt_lib.restore(ckpt_copy)
  assert "corrupt" in _one_line_error(excinfo)


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
  assert "not a geniu_jax/1 checkpoint" in _one_line_error(excinfo)


def test_metadata_with_the_right_format_but_missing_fields(ckpt_copy):
  (ckpt_copy / "metadata.json").write_text(json.dumps({"format": ckpt_lib.FORMAT}))
  with pytest.raises(CheckpointError) as excinfo:
    ckpt_lib.restore(ckpt_copy)
  _one_line_error(excinfo)


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


@pytest.mark.parametrize("damage", [_rm_state, _empty_state, _state_is_a_file,
                                    _junk_orbax_metadata, _truncate_arrays, _drop_arrays],
                         ids=lambda f: f.__name__.strip("_"))
def test_damaged_state(ckpt_copy, damage):
  damage(ckpt_copy)
  with pytest.raises(CheckpointError) as excinfo:
    ckpt_lib.restore(ckpt_copy)
  assert "corrupt checkpoint state" in _one_line_error(excinfo)


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
  assert "already exists" in _one_line_error(excinfo)
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
