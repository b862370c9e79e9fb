"""GENIU's unlearning program serialised with `jax.export`, so a request skips tracing.

Tracing and lowering Alg. 2 (`geniu.unlearn.make_unlearn_fn`: generator,
sharpening loop, the tuning `while_loop`) take longer than the run itself at
the `cpu` preset, in every new process, even when the persistent compilation
cache then holds the executable. So `geniu train` also exports the program of
a one-class request (`save`) into a directory beside the compilation cache
(`directory`); a later request whose model, setting, argument shapes, jax
version and platform match deserialises it in milliseconds (`load`), and only
a thin jitted wrapper around it is lowered, its executable loaded from the
compilation cache. The exported module is the traced program's own StableHLO,
so the numbers are the same.

Anything unusable -- another jax version's serialisation, another platform,
a corrupt file, `flatbuffers` (jax's serialisation format) not installed --
falls back to tracing, and the reason is in the method's report (`program`);
nothing crashes. The directory keeps at most `MAX_FILES` programs (the oldest
go first).

NNX's pytree nodes cannot be serialised, so the program is exported over the
flat list of its argument leaves, and returns the leaves of (params,
`TuningInfo`); `unflatten` rebuilds them with the caller's parameter tree.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import jax

from geniu_jax import compile_cache
from geniu_jax.geniu import unlearn as unlearn_lib

MAX_FILES = 64
SUFFIX = ".jaxexport"
# The config fields that decide the models' graphs (with the argument shapes).
_MODEL_FIELDS = ("width", "lowering", "precision", "latent_dim")


def directory() -> Path | None:
  """`<compilation cache>-exported`, or None while the persistent cache is off."""
  cache = compile_cache.cache_dir()
  return None if not cache else Path(cache).with_name(Path(cache).name + "-exported")


def key(cfg, setting: dict, args: tuple) -> str:
  """What must match for an exported program to be this request's program."""
  leaves, tree = jax.tree.flatten(args)
  desc = {"model": {f: getattr(cfg, f) for f in _MODEL_FIELDS},
          "setting": repr(sorted(setting.items())), "tree": str(tree),
          "leaves": [(tuple(x.shape), str(x.dtype)) for x in leaves],
          "jax": jax.__version__, "backend": jax.default_backend()}
  text = json.dumps(desc, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:32]


def _flat(fn: Callable, args: tuple) -> tuple[Callable, list]:
  leaves, tree = jax.tree.flatten(args)

  def flat(*xs):
    return jax.tree.leaves(fn(*jax.tree.unflatten(tree, xs)))

  return jax.jit(flat), leaves


def save(fn: Callable, args: tuple, name: str) -> Path | None:
  """Exports `fn(*args)` as `name` (a `key`) into `directory()`; None when the
  cache is off or the export cannot be serialised here."""
  folder = directory()
  if folder is None:
    return None
  flat, leaves = _flat(fn, args)
  try:
    blob = jax.export.export(flat)(*leaves).serialize()
  except ImportError:   # flatbuffers missing: requests trace instead
    return None
  folder.mkdir(parents=True, exist_ok=True)
  path = folder / f"{name}{SUFFIX}"
  tmp = folder / f".{name}.{os.getpid()}.tmp"
  tmp.write_bytes(blob)
  os.replace(tmp, path)
  _evict(folder)
  return path


def _evict(folder: Path) -> None:
  files = sorted(folder.glob(f"*{SUFFIX}"), key=lambda p: p.stat().st_mtime)
  for old in files[:-MAX_FILES]:
    old.unlink(missing_ok=True)


@functools.lru_cache(maxsize=16)
def _wrapper(path: str, mtime_ns: int) -> Callable:
  exported = jax.export.deserialize(bytearray(Path(path).read_bytes()))
  if jax.default_backend() not in exported.platforms:
    raise ValueError(f"exported for {exported.platforms}, running on {jax.default_backend()}")
  return jax.jit(exported.call)


def load(name: str) -> tuple[Callable | None, str]:
  """(the jitted flat program, "exported") or (None, why it is traced instead)."""
  folder = directory()
  if folder is None:
    return None, "traced (compilation cache off)"
  path = folder / f"{name}{SUFFIX}"
  if not path.is_file():
    return None, "traced (no exported program)"
  try:
    return _wrapper(str(path), path.stat().st_mtime_ns), "exported"
  except Exception as err:  # noqa: BLE001 -- any unusable file means: trace
    return None, f"traced (exported program unusable: {type(err).__name__}: {err})"[:300]


def flat_args(args: tuple) -> list:
  return jax.tree.leaves(args)


def unflatten(params_like: Any, outputs: list) -> tuple[Any, unlearn_lib.TuningInfo]:
  """(params, info) from the flat outputs, params shaped like `params_like`."""
  tree = jax.tree.structure(params_like)
  n = tree.num_leaves
  return jax.tree.unflatten(tree, outputs[:n]), unlearn_lib.TuningInfo(*outputs[n:])
