"""`geniu_jax.compile_cache.configure`: on by default in the XDG cache
directory, moved or turned off by the flag or the environment, never fatal."""

from __future__ import annotations

import os
from pathlib import Path

import jax
import pytest

from geniu_jax import compile_cache


@pytest.fixture
def restore_cache(compilation_cache):
  yield
  compile_cache.enable(compilation_cache)


def test_default_dir_follows_xdg():
  assert compile_cache.default_dir({"XDG_CACHE_HOME": "/x/cache"}) == Path(
      "/x/cache/geniu_jax/xla")
  assert compile_cache.default_dir({}) == Path.home() / ".cache" / "geniu_jax" / "xla"


def test_configure_defaults_to_the_bounded_user_cache(tmp_path, restore_cache):
  path = compile_cache.configure(None, {"XDG_CACHE_HOME": str(tmp_path)})
  assert path == tmp_path / "geniu_jax" / "xla" and path.is_dir()
  assert compile_cache.cache_dir() == str(path)
  assert jax.config.jax_compilation_cache_max_size == compile_cache.DEFAULT_MAX_BYTES


def test_flag_over_environment_and_off(tmp_path, restore_cache):
  env = {compile_cache.ENV_VAR: str(tmp_path / "env"), "XDG_CACHE_HOME": str(tmp_path)}
  assert compile_cache.configure(str(tmp_path / "flag"), env) == tmp_path / "flag"
  assert compile_cache.configure(None, env) == tmp_path / "env"
  assert compile_cache.configure("off", env) is None
  assert compile_cache.configure(None, {compile_cache.ENV_VAR: "OFF"}) is None


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_an_unwritable_directory_leaves_the_cache_off_with_a_note(tmp_path, restore_cache):
  locked = tmp_path / "locked"
  locked.mkdir()
  locked.chmod(0o500)
  notes = []
  assert compile_cache.configure(str(locked / "cache"), {}, warn=notes.append) is None
  assert len(notes) == 1 and "compiling without it" in notes[0]


def test_a_file_in_the_way_leaves_the_cache_off_with_a_note(tmp_path, restore_cache):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  notes = []
  assert compile_cache.configure(str(blocker / "cache"), {}, warn=notes.append) is None
  assert len(notes) == 1 and str(blocker) in notes[0]


def test_the_bounded_cache_really_writes_programs(tmp_path, restore_cache):
  # JAX's bounded cache needs `filelock`; without it every write fails with
  # a warning only, and the cache silently stays empty.
  path = compile_cache.configure(str(tmp_path / "cache"), {})
  jax.jit(lambda x: x * 3.0 + 1.25)(jax.numpy.ones(7)).block_until_ready()
  assert compile_cache.entries(path) >= 1
