"""Checksums of a checkpoint's files, arrays and metadata: `geniu_jax/checksums.py`.

Pure functions on small inputs: array digests cover dtype, shape and every
byte and nothing else; each `*_problem` check returns None on intact input
and a one-line message naming what was tampered with.
"""

from __future__ import annotations

import copy
import hashlib
import math

import numpy as np
import pytest

from geniu_jax import checksums


def _tree():
  return {"classifier": {"params": {"head": {"kernel": np.arange(6, dtype=np.float32)
                                             .reshape(2, 3),
                                             "bias": np.zeros(3, np.float32)}}},
          "prompts": np.ones((2, 2), np.float32)}


# --- array digests ----------------------------------------------------------------

def test_array_digests_name_every_leaf_by_its_path():
  digests = checksums.array_digests(_tree())
  assert set(digests) == {"classifier/params/head/kernel", "classifier/params/head/bias",
                          "prompts"}
  assert all(len(d) == 64 and int(d, 16) >= 0 for d in digests.values())
  # A list index and the string key Orbax may restore it as are one name.
  as_list = checksums.array_digests({"blocks": [np.ones(2), np.zeros(2)]})
  as_dict = checksums.array_digests({"blocks": {"0": np.ones(2), "1": np.zeros(2)}})
  assert as_list == as_dict and set(as_list) == {"blocks/0", "blocks/1"}


def test_array_digests_change_with_one_element_and_only_then():
  tree = _tree()
  before = checksums.array_digests(tree)
  assert checksums.array_digests(copy.deepcopy(tree)) == before
  tree["classifier"]["params"]["head"]["kernel"][1, 2] += 1e-6
  after = checksums.array_digests(tree)
  assert after["classifier/params/head/kernel"] != before["classifier/params/head/kernel"]
  assert {k: v for k, v in after.items() if k != "classifier/params/head/kernel"} == {
      k: v for k, v in before.items() if k != "classifier/params/head/kernel"}


def test_array_digests_cover_dtype_and_shape_not_memory_layout():
  zeros = np.zeros(4, np.float32)
  same_bytes = [zeros, np.zeros(4, np.int32), zeros.reshape(2, 2)]
  assert len({checksums.array_digests({"a": a})["a"] for a in same_bytes}) == 3
  a = np.arange(12, dtype=np.float32).reshape(3, 4)
  transposed = a.T                                  # a non-contiguous view
  assert not transposed.flags.c_contiguous
  assert (checksums.array_digests({"a": transposed})
          == checksums.array_digests({"a": np.ascontiguousarray(transposed)}))
  h = hashlib.sha256(b"float32[2, 2]")
  h.update(zeros.tobytes())
  assert checksums.array_digests({"a": zeros.reshape(2, 2)})["a"] == h.hexdigest()


def test_arrays_problem():
  tree = _tree()
  digests = checksums.array_digests(tree)
  assert checksums.arrays_problem(copy.deepcopy(tree), digests) is None

  changed = copy.deepcopy(tree)
  changed["prompts"][0, 0] = 2.0
  assert checksums.arrays_problem(changed, digests) == (
      "array prompts does not match its checksum")
  missing = copy.deepcopy(tree)
  del missing["classifier"]["params"]["head"]["bias"]
  assert checksums.arrays_problem(missing, digests) == (
      "array classifier/params/head/bias is missing")
  extra = dict(copy.deepcopy(tree), stray=np.zeros(1))
  assert checksums.arrays_problem(extra, digests) == "array stray has no checksum"
  retyped = copy.deepcopy(tree)
  retyped["prompts"] = retyped["prompts"].astype(np.float64)
  assert checksums.arrays_problem(retyped, digests) == (
      "array prompts does not match its checksum")


# --- files ------------------------------------------------------------------------

@pytest.fixture
def state_dir(tmp_path):
  (tmp_path / "state" / "d").mkdir(parents=True)
  (tmp_path / "state" / "manifest").write_bytes(b"manifest bytes")
  (tmp_path / "state" / "d" / "chunk").write_bytes(bytes(range(256)) * 5000)
  (tmp_path / "metadata.json").write_text("{}")   # outside state/: not listed
  return tmp_path


def test_file_digests_list_every_file_under_the_subdirectory(state_dir):
  digests = checksums.file_digests(state_dir, "state")
  assert list(digests) == ["state/d/chunk", "state/manifest"]
  # Read in chunks; the digest is the whole file's.
  assert digests["state/d/chunk"] == hashlib.sha256(bytes(range(256)) * 5000).hexdigest()
  assert digests["state/manifest"] == hashlib.sha256(b"manifest bytes").hexdigest()


def test_files_problem(state_dir):
  digests = checksums.file_digests(state_dir, "state")
  assert checksums.files_problem(state_dir, digests) is None

  chunk = state_dir / "state" / "d" / "chunk"
  data = bytearray(chunk.read_bytes())
  data[300_000] ^= 1
  chunk.write_bytes(bytes(data))
  assert checksums.files_problem(state_dir, digests) == (
      "file state/d/chunk does not match its checksum")
  (state_dir / "state" / "manifest").unlink()
  # Names are checked in sorted order: the damaged chunk is reported first.
  assert checksums.files_problem(state_dir, digests) == (
      "file state/d/chunk does not match its checksum")
  chunk.unlink()
  assert checksums.files_problem(state_dir, digests) == "file state/d/chunk is missing"


# --- metadata ---------------------------------------------------------------------

def _checked_meta():
  meta = {"config": {"width": 0.0625, "seed": 0}, "classes": [0, 1, 2],
          "note": "tiny"}
  files = {"state/manifest": "ab" * 32}
  arrays = {"prompts": "cd" * 32}
  return dict(meta, **{checksums.KEY: checksums.entry(meta, files, arrays)})


def test_metadata_digest_is_canonical_and_skips_only_itself():
  meta = _checked_meta()
  digest = checksums.metadata_digest(meta)
  assert digest == meta[checksums.KEY]["metadata"]
  reordered = dict(reversed(list(meta.items())))
  assert checksums.metadata_digest(reordered) == digest
  other_digest = copy.deepcopy(meta)
  other_digest[checksums.KEY]["metadata"] = "0" * 64
  assert checksums.metadata_digest(other_digest) == digest
  other_files = copy.deepcopy(meta)
  other_files[checksums.KEY]["files"]["state/manifest"] = "ef" * 32
  assert checksums.metadata_digest(other_files) != digest
  with pytest.raises(ValueError):
    checksums.metadata_digest(dict(meta, note=math.nan))


def test_metadata_problem():
  meta = _checked_meta()
  entry = meta[checksums.KEY]
  assert entry["algorithm"] == "sha256" and set(entry) == {"algorithm", "files", "arrays",
                                                           "metadata"}
  assert checksums.metadata_problem(copy.deepcopy(meta)) is None

  tampered = copy.deepcopy(meta)
  tampered["config"]["seed"] = 1
  assert checksums.metadata_problem(tampered) == "metadata.json does not match its checksum"
  tampered = copy.deepcopy(meta)
  tampered[checksums.KEY]["arrays"]["prompts"] = "00" * 32
  assert checksums.metadata_problem(tampered) == "metadata.json does not match its checksum"
  tampered = copy.deepcopy(meta)
  tampered["note"] = math.inf
  assert checksums.metadata_problem(tampered) == "metadata.json does not match its checksum"
  tampered = copy.deepcopy(meta)
  tampered[checksums.KEY]["algorithm"] = "md5"
  assert checksums.metadata_problem(tampered) == "unknown checksum algorithm 'md5'"


@pytest.mark.parametrize("checksum", [
    "abc", None, {"files": {}, "arrays": {}},
    {"algorithm": "sha256", "files": [], "arrays": {}, "metadata": "x"},
    {"algorithm": "sha256", "files": {}, "arrays": {}, "metadata": 3}],
    ids=["string", "null", "no-digest", "files-list", "digest-number"])
def test_malformed_entry_is_named(checksum):
  meta = dict(_checked_meta(), **{checksums.KEY: checksum})
  assert checksums.metadata_problem(meta) == "malformed 'checksum' entry in metadata.json"
