"""GENIU's unlearning as the registered method `geniu`: `geniu_jax/methods/geniu_unlearning.py`.

On the shared smoke model (conftest's `smoke`): each run counts its own
compilation and reuses the jitted `program`.
"""

from __future__ import annotations

from conftest import unlearn


def test_each_run_counts_its_own_compilation_and_reuses_the_program(smoke, monkeypatch):
  from geniu_jax.methods import exported, geniu_unlearning
  # The traced path: an exported program another test (or worker) left in the
  # shared compilation cache would be loaded instead (test_exported.py).
  monkeypatch.setattr(exported, "load", lambda name: (None, "traced (test)"))
  _, first, _ = unlearn(smoke, "geniu", key=1)
  hits = geniu_unlearning.program.cache_info().hits
  _, second, _ = unlearn(smoke, "geniu", key=2)
  # The jitted program is reused; its compilation counts in every run, so
  # compile_ms does not depend on what ran before in the process.
  assert geniu_unlearning.program.cache_info().hits == hits + 1
  assert first["compile_ms"] > 0 and second["compile_ms"] > 0
  assert second["rounds_run"] == first["rounds_run"]
  assert first["program"] == second["program"] == "traced (test)"
