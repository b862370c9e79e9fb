"""The stop-rule study's analysis: rules read proxy signals only, and the summary is a worst case."""

from __future__ import annotations

from experiments import stop_rule_study as study


def _curve(flip_round: int, acc_r: list[float], acc_f: list[float]) -> list[dict]:
  rows = []
  for r, (ar, af) in enumerate(zip(acc_r, acc_f)):
    mean = 0.9 * 0.5 ** r
    rows.append({"round": r, "val_acc_r": ar, "val_acc_f": af, "forget_prob_max": mean,
                 "forget_prob_mean": mean, "forget_kept": float(r < flip_round),
                 "retain_acc": 0.1, "retain_prob_mean": 0.1})
  return rows


def test_rules_stop_where_the_proxy_signals_say_and_never_read_validation():
  rows = _curve(2, [0.8] * 11, [0.9] * 11)
  rules = study.candidate_rules(max_rounds=10)
  assert rules["fixed_10"](rows) == 10
  assert rules["2x_flip_round"](rows) == 4
  # 0.9 * 0.5**r <= 0.1 first at r = 4.
  assert rules["max_prob<=0.1"](rows) == 4
  assert rules["mean_prob<=0.05"](rows) == 5
  # Changing the validation numbers cannot move any stop.
  other = [dict(r, val_acc_r=0.1, val_acc_f=0.0) for r in rows]
  assert all(rule(rows) == rule(other) for rule in rules.values())


def test_summary_takes_the_worst_seed():
  n = 11
  good = _curve(1, [0.8] + [0.78] * (n - 1), [0.9] + [0.0] * (n - 1))
  bad = _curve(1, [0.8] + [0.4] * (n - 1), [0.9] + [0.2] * (n - 1))
  table = study.analyse({"seed0_B5": good, "seed1_B5": bad}, max_rounds=n - 1)
  summary = {s["rule"]: s for s in study.summarise(table)}
  s = summary["fixed_10"]
  assert s["B"] == "B5" and s["stops"] == [10, 10]
  assert s["max_acc_f"] == 0.2
  assert abs(s["min_acc_r_ratio"] - 0.5) < 1e-9
  assert abs(s["min_score"] - (0.5 - 0.2)) < 1e-9
