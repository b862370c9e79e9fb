"""Opt-in persistent compilation cache, so repeated CLI calls don't recompile.

Every `geniu` command is a fresh process, so without a persistent cache each
`geniu unlearn` compiles the whole unlearning program again -- at the paper's
size on a CPU that is longer than the unlearning itself. JAX can keep compiled
executables on disk, keyed by the program, the compiler options, the backend
and the jax/jaxlib versions; a later process with an equal program loads the
executable instead of compiling it.

Turned on by the environment (`GENIU_COMPILATION_CACHE=DIR`) or by calling
`enable(DIR)` before the first compilation. Off by default: the cache grows
without bound unless `max_size_bytes` is set, and a shared directory must
be writable by every user of it.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

ENV_VAR = "GENIU_COMPILATION_CACHE"


def enable(cache_dir: str | os.PathLike, *, min_compile_secs: float = 0.0,
           max_size_bytes: int | None = None) -> Path:
  """Stores and reuses compiled programs under `cache_dir` (created if missing).

  Args:
    cache_dir: directory of the cache.
    min_compile_secs: only programs that took at least this long to compile
      are written (JAX's default, 1 s, would skip the many small jitted
      helpers; 0 keeps everything, which is what a CLI wants).
    max_size_bytes: evict least recently used entries beyond this size;
      None = unbounded.

  Returns:
    The absolute cache directory.
  """
  path = Path(cache_dir).expanduser().absolute()
  path.mkdir(parents=True, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", str(path))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_secs))
  # Small entries too: the per-batch helpers are small but still cost a compile.
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  jax.config.update("jax_compilation_cache_max_size",
                    -1 if max_size_bytes is None else int(max_size_bytes))
  # JAX initialises its cache object once, at the first compilation; a later
  # `enable` (e.g. in a long-lived process) must make it re-read the settings.
  try:
    from jax.experimental.compilation_cache import compilation_cache as cc
    cc.reset_cache()
  except (ImportError, AttributeError):  # pragma: no cover - older/newer jax
    pass
  return path


def enable_from_env(environ: dict | None = None) -> Path | None:
  """`enable(DIR)` when GENIU_COMPILATION_CACHE=DIR is set and non-empty, else None."""
  value = (os.environ if environ is None else environ).get(ENV_VAR, "").strip()
  return enable(value) if value else None


def add_flag(parser) -> None:
  """Adds `--compilation-cache DIR` to an argparse parser (the CLI's top level)."""
  parser.add_argument(
      "--compilation-cache", metavar="DIR", dest="compilation_cache", default=None,
      help=f"keep compiled programs in DIR and reuse them in later calls "
           f"(default: ${ENV_VAR} if set, else off)")


def configure(flag_value: str | None = None, environ: dict | None = None) -> Path | None:
  """Enables the cache from the flag, else from the environment; None when neither is set.

  Call it once, right after parsing arguments and before any JAX computation:
  programs compiled earlier in the process are not written to the cache.
  """
  if flag_value:
    return enable(flag_value)
  return enable_from_env(environ)


def cache_dir() -> str | None:
  """The active cache directory, or None when the persistent cache is off."""
  return jax.config.jax_compilation_cache_dir or None


def entries(path: str | os.PathLike | None = None) -> int:
  """Number of cached executables in `path` (default: the active directory)."""
  path = path or cache_dir()
  if not path or not Path(path).is_dir():
    return 0
  return sum(1 for p in Path(path).iterdir() if p.is_file() and not p.name.endswith("-atime"))
