"""experiments.objective_study: the analysis that picks the `cpu` preset's objective."""

from __future__ import annotations

import pytest

from experiments import objective_study as study

GRID = (0, 8, 12, 16, 20, 28, 40, 60)


def _curve(run, retain, forget, acc, probs=None, extra=()):
  """acc(round) -> (val Acc_r, val Acc_f); probs: round -> mean forgotten-proxy prob."""
  rounds = sorted(set(GRID) | set(extra))
  rows = [{"round": r, "val_acc_r": acc(r)[0], "val_acc_f": acc(r)[1],
           "forget_prob_mean": (probs or {}).get(r, 0.5)} for r in rounds]
  return {"ckpt": run, "retain": retain, "forget_loss": forget, "rows": rows}


def test_the_worst_run_decides_not_the_mean():
  steady = lambda r: (0.8, 0.0 if r >= 20 else 0.5)
  curves = [
      _curve("a", "teacher", "margin(2)", steady), _curve("b", "teacher", "margin(2)", steady),
      # Eq. 10-like: better than `steady` on run a, collapses Acc_r on run b.
      _curve("a", "label", "inv_ce", lambda r: (0.84 if r else 0.8, 0.0 if r else 1.0)),
      _curve("b", "label", "inv_ce", lambda r: (0.4 if r else 0.8, 0.0 if r else 1.0)),
  ]
  table = study.analyse(curves)
  assert table[0]["objective"] == "teacher/margin(2)"
  assert table[0]["min_score"] == pytest.approx(1.0)
  eq10 = {s["setting"]: s for s in table if s["objective"] == "label/inv_ce"}
  assert eq10["fixed_60"]["min_score"] == pytest.approx(0.5)        # run b: 0.4/0.8 - 0
  assert eq10["fixed_60"]["mean_score"] == pytest.approx(0.775)     # (1.05 + 0.5) / 2


def test_the_stop_rule_stops_at_the_first_round_its_proxy_signal_allows():
  acc = lambda r: (0.8, {9: 0.2, 12: 0.1}.get(r, 0.0 if r else 1.0))
  curves = [_curve("a", "label", "inv_ce", acc, probs={9: 0.005, 12: 0.001}, extra=(9,)),
            _curve("b", "label", "inv_ce", acc, probs={12: 0.01})]
  rule = next(s for s in study.analyse(curves) if s["setting"].startswith("mean_prob"))
  assert rule["stops"] == [9, 12]
  assert rule["max_acc_f"] == pytest.approx(0.2)
  # A curve whose signal never falls below the threshold runs to its last round.
  never = [_curve("c", "label", "inv_ce", acc)]
  assert next(s for s in study.analyse(never) if s["setting"].startswith("mean"))["stops"] == [60]


def test_settings_missing_an_evaluated_round_are_skipped():
  curve = {"ckpt": "a", "retain": "label", "forget_loss": "inv_ce", "rows": [
      {"round": 0, "val_acc_r": 0.8, "val_acc_f": 1.0, "forget_prob_mean": 0.5},
      {"round": 10, "val_acc_r": 0.8, "val_acc_f": 0.0, "forget_prob_mean": 0.5}]}
  assert {s["setting"] for s in study.analyse([curve])} == {f"mean_prob<={study.STOP_PROB}"}
