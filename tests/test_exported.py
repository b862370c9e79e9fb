"""GENIU's exported unlearning program (`geniu_jax/methods/exported.py`).

A request with an exported program gives the traced program's numbers
exactly; a missing, corrupt or mismatched one falls back to tracing with the
reason in the report. Tiny models (conftest), the session's compilation cache
(so `exported.directory()` is a fresh temporary folder).
"""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from geniu_jax import compile_cache
from geniu_jax.config import get_config
from geniu_jax.methods import exported, geniu_unlearning, registry

from conftest import TINY_B, TINY_K, TINY_LOWERING, TINY_SHAPE, TINY_WIDTH


@pytest.fixture
def setup(tiny_classifier, tiny_generator, tiny_prompts, tmp_path, monkeypatch):
  # A folder of its own, so that other tests' programs do not interfere.
  monkeypatch.setattr(exported, "directory", lambda: tmp_path / "exported")
  cfg = get_config("smoke", width=TINY_WIDTH, lowering=TINY_LOWERING,
                   proxies_per_class=TINY_B, unlearn_rounds=4)

  def run(cfg=cfg):
    model, info = registry.run_method(
        "geniu", cfg, jax.random.key(0), classifier=tiny_classifier, forget=(3,),
        num_classes=TINY_K, image_shape=TINY_SHAPE,
        **registry.inputs_from(artifacts=(tiny_generator, tiny_prompts)))
    return [np.asarray(x) for x in jax.tree.leaves(model.params)], info

  def warm(cfg=cfg):
    return geniu_unlearning.warm(tiny_classifier, tiny_generator, cfg, tiny_prompts)

  return cfg, run, warm, tmp_path / "exported"


def _same(a, b):
  return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_an_exported_program_gives_the_traced_numbers(setup):
  cfg, run, warm, folder = setup
  traced, info = run()
  assert info["program"] == "traced (no exported program)"
  assert warm() > 0 and len(list(folder.glob("*.jaxexport"))) == 1
  again, info = run()
  assert info["program"] == "exported"
  assert _same(traced, again)
  assert info["rounds_run"] == 4 and 0.0 <= info["forget_proxy_prob"] <= 1.0


def test_another_setting_does_not_take_the_exported_program(setup):
  cfg, run, warm, folder = setup
  warm()
  _, info = run(cfg.replace(unlearn_rounds=5))
  assert info["program"] == "traced (no exported program)" and info["rounds_run"] == 5


def test_a_corrupt_exported_program_falls_back_to_tracing(setup):
  cfg, run, warm, folder = setup
  traced, _ = run()
  warm()
  (path,) = folder.glob("*.jaxexport")
  path.write_bytes(b"not a program")
  again, info = run()
  assert info["program"].startswith("traced (exported program unusable")
  assert _same(traced, again)


def test_nothing_is_exported_without_a_compilation_cache(monkeypatch):
  monkeypatch.setattr(compile_cache, "cache_dir", lambda: None)
  assert exported.directory() is None
  assert exported.load("anything") == (None, "traced (compilation cache off)")


def test_old_files_are_evicted(tmp_path, monkeypatch):
  monkeypatch.setattr(exported, "MAX_FILES", 2)
  for i in range(4):
    path = tmp_path / f"p{i}{exported.SUFFIX}"
    path.write_bytes(b"x")
    os.utime(path, ns=(i * 10**9, i * 10**9))
  exported._evict(tmp_path)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["p2.jaxexport", "p3.jaxexport"]
