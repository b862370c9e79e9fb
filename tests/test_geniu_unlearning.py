"""GENIU's unlearning as the registered method `geniu`: `geniu_jax/methods/geniu_unlearning.py`.

On the shared smoke model (conftest's `smoke`): each run counts its own
compilation and reuses the jitted `program`.
"""

from __future__ import annotations

from conftest import unlearn


def test_each_run_counts_its_own_compilation_and_reuses_the_program(smoke):
  from geniu_jax.methods import geniu_unlearning
  _, first, _ = unlearn(smoke, "geniu", key=1)
  hits = geniu_unlearning.program.cache_info().hits
  _, second, _ = unlearn(smoke, "geniu", key=2)
  # The jitted program is reused; its compilation counts in every run, so
  # compile_ms does not depend on what ran before in the process.
  assert geniu_unlearning.program.cache_info().hits == hits + 1
  assert first["compile_ms"] > 0 and second["compile_ms"] > 0
  assert second["rounds_run"] == first["rounds_run"]
