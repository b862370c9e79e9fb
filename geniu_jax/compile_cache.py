"""Persistent compilation cache, so repeated CLI calls don't recompile.

Every `geniu` command is a fresh process, so without a persistent cache each
`geniu unlearn` compiles the whole unlearning program again -- at the paper's
size on a CPU that is longer than the unlearning itself. JAX keeps compiled
executables on disk, keyed by the program, the compiler options, the backend
and the jax/jaxlib versions; a later process with an equal program loads the
executable instead of compiling it, and an executable of another jax
version or platform is simply not found (compiled anew, never loaded).

The `geniu` CLI turns it on by default (`configure`), in the per-user cache
directory of the XDG convention, `$XDG_CACHE_HOME/geniu_jax/xla` (else
`~/.cache/geniu_jax/xla`), bounded to `DEFAULT_MAX_BYTES` with least recently
used entries evicted. `--compilation-cache DIR` or `GENIU_COMPILATION_CACHE=DIR`
moves it; the value `off` turns it off. A directory that cannot be created
or written leaves the cache off with a one-line note, never an error.
Library users call `enable(DIR)` themselves (JAX's configuration is
process-wide, so importing geniu_jax changes nothing).
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

ENV_VAR = "GENIU_COMPILATION_CACHE"
OFF = "off"
DEFAULT_MAX_BYTES = 2 * 1024**3


def default_dir(environ: dict | None = None) -> Path:
  """`$XDG_CACHE_HOME/geniu_jax/xla`, else `~/.cache/geniu_jax/xla`."""
  environ = os.environ if environ is None else environ
  base = environ.get("XDG_CACHE_HOME", "").strip()
  return (Path(base) if base else Path.home() / ".cache") / "geniu_jax" / "xla"


def enable(cache_dir: str | os.PathLike, *, min_compile_secs: float = 0.0,
           max_size_bytes: int | None = DEFAULT_MAX_BYTES) -> Path:
  """Stores and reuses compiled programs under `cache_dir` (created if missing).

  Args:
    cache_dir: directory of the cache.
    min_compile_secs: only programs that took at least this long to compile
      are written (JAX's default, 1 s, would skip the many small jitted
      helpers; 0 keeps everything, which is what a CLI wants).
    max_size_bytes: evict least recently used entries beyond this size;
      None = unbounded. Keep one choice per directory: JAX's bounded cache
      keeps an access-time file beside each entry, which entries written
      unbounded lack (it then warns on every hit).

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


def add_flag(parser, default=None) -> None:
  """Adds `--compilation-cache DIR|off` to an argparse parser. A subcommand's
  parser takes `default=argparse.SUPPRESS`, so that the flag given before
  the subcommand is kept when it is not repeated after it."""
  parser.add_argument(
      "--compilation-cache", metavar="DIR", dest="compilation_cache", default=default,
      help=f"keep compiled programs in DIR and reuse them in later calls; 'off' turns "
           f"this off (default: ${ENV_VAR} if set, else {default_dir()})")


def configure(flag_value: str | None = None, environ: dict | None = None,
              warn=None) -> Path | None:
  """Enables the cache as the CLI wants it: the flag, else the environment
  variable, else `default_dir()`; bounded to `DEFAULT_MAX_BYTES`. Returns
  the directory, or None when off (asked for, or not writable: then `warn`
  gets one line).

  Call it once, right after parsing arguments and before any JAX computation:
  programs compiled earlier in the process are not written to the cache.
  """
  environ = os.environ if environ is None else environ
  value = (flag_value or environ.get(ENV_VAR, "")).strip()
  if value.lower() == OFF:
    return None
  path = Path(value).expanduser() if value else default_dir(environ)
  try:
    path.mkdir(parents=True, exist_ok=True)
    if not os.access(path, os.W_OK | os.X_OK):
      raise PermissionError("not writable")
  except OSError as err:
    if warn:
      warn(f"note: compilation cache {path} unusable ({err.strerror or err}); "
           "compiling without it")
    return None
  return enable(path, max_size_bytes=DEFAULT_MAX_BYTES)


def cache_dir() -> str | None:
  """The active cache directory, or None when the persistent cache is off."""
  return jax.config.jax_compilation_cache_dir or None


def entries(path: str | os.PathLike | None = None) -> int:
  """Number of cached executables in `path` (default: the active directory)."""
  path = path or cache_dir()
  if not path or not Path(path).is_dir():
    return 0
  return sum(1 for p in Path(path).iterdir() if p.is_file() and not p.name.endswith("-atime"))
