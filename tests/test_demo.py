"""`geniu demo`'s pipeline on the embedded data, shrunk to seconds (the real run is in README)."""

from __future__ import annotations

import json

from geniu_jax import demo


def test_demo_report_has_the_three_models_and_timings():
  report = demo.run(log=None, preset="smoke", epochs=2, prompt_steps=2, generator_steps=2,
                    proxies_per_class=1, unlearn_rounds=3, lowering="native")
  for name in ("original", "retrain", "geniu"):
    assert set(report[name]) == {"acc_r", "acc_f"}
    assert 0.0 <= report[name]["acc_r"] <= 1.0 and 0.0 <= report[name]["acc_f"] <= 1.0
  # The retrained model never saw class 9, so it cannot predict it.
  assert report["retrain"]["acc_f"] == 0.0
  assert 1 <= report["rounds_run"] <= 3
  assert report["unlearn_ms"] > 0 and report["compile_ms"] > 0
  json.dumps(report)  # the CLI prints it as one JSON line
  table = demo.format_table(report)
  assert "original" in table and "GENIU unlearning" in table
