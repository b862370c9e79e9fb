"""Orbax checkpoints of a trained GENIU run, plus a JSON metadata record.

Layout of a checkpoint directory:

    metadata.json   data source, image shape, K, majority classes, imbalance,
                    config (width, B, seed, preset ...), package versions
    state/          one Orbax PyTree: classifier params + BatchNorm stats,
                    prompts, generator params, optional baseline records

No training data is ever written. The architecture is rebuilt from the
metadata and the stored arrays are restored into it; a checkpoint whose arrays
do not fit that architecture, or the one the caller asks for, is rejected with
a one-line `CheckpointError`. Saving goes to a temporary sibling directory that
is renamed into place at the end, so a failed save leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from geniu_jax.config import Config
from geniu_jax.models import functional as F

FORMAT = "geniu_jax/1"
_PACKAGES = ("geniu_jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "chex")


_REQUIRED_METADATA = ("data_source", "image_shape", "num_classes", "majority", "config")


class CheckpointError(RuntimeError):
  """A checkpoint is missing, corrupt, or does not fit the requested model."""


class Checkpoint(NamedTuple):
  classifier: F.SplitModel
  generator: F.SplitModel | None
  prompts: Any                  # [B*K, H, W, C] or None
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


def save(directory: str | os.PathLike, classifier: F.SplitModel,
         generator: F.SplitModel | None, prompts, metadata: dict,
         records: Any = None) -> Path:
  """Writes a checkpoint; `directory` must not exist yet. Atomic on success."""
  target = Path(directory).absolute()
  if target.exists():
    raise CheckpointError(f"output directory {target} already exists")
  target.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
  try:
    tree = jax.device_get(_to_tree(classifier, generator, prompts, records))
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp / "state", tree)
    checkpointer.wait_until_finished()
    meta = dict(metadata, has_generator=generator is not None,
                has_records=records is not None)
    (tmp / "metadata.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    tmp.rename(target)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return target


def read_metadata(directory: str | os.PathLike) -> dict:
  path = Path(directory)
  meta_file = path / "metadata.json"
  if not path.is_dir():
    raise CheckpointError(f"checkpoint directory {path} does not exist")
  if not meta_file.is_file():
    raise CheckpointError(f"{path} is not a geniu_jax checkpoint (no metadata.json)")
  try:
    meta = json.loads(meta_file.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as err:
    raise CheckpointError(f"corrupt checkpoint metadata in {meta_file}: {err}") from None
  if not isinstance(meta, dict) or meta.get("format") != FORMAT:
    raise CheckpointError(f"{path} is not a {FORMAT} checkpoint")
  missing = [k for k in _REQUIRED_METADATA if k not in meta]
  if missing or not isinstance(meta.get("config"), dict):
    raise CheckpointError(f"corrupt checkpoint metadata in {meta_file}: missing {missing or ['config']}")
  return meta


def build_models(meta: dict, lowering: str | None = None
                 ) -> tuple[F.SplitModel, F.SplitModel | None]:
  """Freshly initialised models of the checkpoint's architecture.

  `lowering=None` takes the one the checkpoint was trained with (its stored
  config), so a model trained with an explicit lowering is served with the
  same arithmetic; lowerings differ only in float32 rounding.
  """
  cfg = Config.from_dict(meta["config"])
  lowering = cfg.lowering if lowering is None else lowering
  shape = tuple(meta["image_shape"])
  key = jax.random.key(0)
  classifier = F.make_classifier(meta["num_classes"], shape, cfg.width, lowering, key)
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
    if tuple(leaf.shape) != tuple(np.shape(e_flat[path])):
      raise CheckpointError(
          f"checkpoint does not match the {what} architecture: {jax.tree_util.keystr(path)} "
          f"has shape {tuple(leaf.shape)}, expected {tuple(np.shape(e_flat[path]))}")


def restore(directory: str | os.PathLike, *, lowering: str | None = None,
            expect_classifier: F.SplitModel | None = None) -> Checkpoint:
  """Restores a checkpoint written by `save`.

  Args:
    directory: checkpoint directory.
    lowering: conv lowering of the rebuilt models (parameters are identical);
      None: the stored config's (`auto` unless training chose one).
    expect_classifier: if given, the checkpoint must fit this classifier's
      parameter shapes (e.g. a model built by the caller).

  Raises:
    CheckpointError: missing, corrupt or mismatched checkpoint.
  """
  path = Path(directory).absolute()
  meta = read_metadata(path)
  classifier, generator = build_models(meta, lowering)
  if expect_classifier is not None:
    _check_shapes(str_keys(nnx.to_pure_dict(classifier.params)),
                  str_keys(nnx.to_pure_dict(expect_classifier.params)), "requested classifier")
  try:
    stored = ocp.StandardCheckpointer().restore(path / "state")
  except Exception as err:  # Orbax raises many types for unreadable data.
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    raise CheckpointError(f"corrupt checkpoint state in {path}: {first}") from None
  if "classifier" not in stored:
    raise CheckpointError(f"corrupt checkpoint state in {path}: no classifier")
  expected = _to_tree(classifier, None, None, None)["classifier"]
  _check_shapes(stored["classifier"], expected, "classifier")
  params = _filled(classifier.params, stored["classifier"]["params"])
  stats = _filled(classifier.stats, stored["classifier"]["stats"])
  restored_gen, prompts = None, None
  if generator is not None:
    gen_like = nnx.to_pure_dict(generator.params)
    _check_shapes(stored["generator"]["params"], str_keys(gen_like), "generator")
    gparams = _filled(generator.params, stored["generator"]["params"])
    restored_gen = F.SplitModel(generator.graphdef, gparams, generator.stats)
    prompts = jax.numpy.asarray(stored["prompts"])
  return Checkpoint(F.SplitModel(classifier.graphdef, params, stats), restored_gen,
                    prompts, stored.get("records"), meta)
