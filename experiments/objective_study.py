"""Which in-batch tuning objective transfers between training runs? (validation only)

GENIU's Eq. 10 puts CE-to-the-label on the retained proxies and 1/CE on the
forgotten ones. The earlier studies (README, "What we found") showed the two
halves failing in turn on different training runs: label CE on ambiguous
proxies reshuffles the retained classes (Acc_r collapses on some runs), and
1/CE stops pushing as soon as the forgotten *proxies* leave their class, while
real images of the class may still be kept (Acc_f stalls on others).

This study runs `experiments.tuning_batch_diagnostic` on checkpoints of
`experiments.stop_rule_study` (training split minus a balanced validation set;
the test split is never read) for these objectives, B = 5 proxies per class:

* `label/inv_ce` -- Eq. 10 (the `cpu` preset until the fourth session);
* `teacher/inv_ce` -- retained proxies: CE to the ORIGINAL model's softmax on
  the same proxy with the forgotten classes removed and renormalised;
  forgotten proxies: 1/CE;
* `teacher/margin(m)` -- same retained term; forgotten proxies:
  softplus(m + l_f - logsumexp of the retained logits), which keeps pushing
  until the forgotten logit sits m below the retained ones;
* `teacher/teacher` -- every proxy distilled from the original with the
  forgotten classes removed.

A *setting* is an objective plus a data-free way to stop: a fixed number of
rounds, or the proxy-only rule "mean forgotten-proxy probability <= 0.01".
The criterion, fixed before any curve was read (the same as the stop-rule
study's): the worst case over training runs of Acc_r/Acc_r(original) - Acc_f
on the validation split.

    python -m experiments.stop_rule_study --data idx:/usr/share/datasets/fashion-mnist \
        --forget 9 --seeds 0 1 2 3 --train-only --out runs/s4/study
    python -m experiments.objective_study --curves runs/s4/curves.jsonl \
        --run runs/s4/study/seed0 runs/s4/study/seed1 runs/s4/study/seed2 runs/s4/study/seed3

(`--run` appends the curves, ~2 min each on 2 cores; without it the file is
only analysed.) Results of the fourth session: `experiments/results/objective_study/`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

FIXED_ROUNDS = (8, 12, 16, 20, 28, 40, 60)
STOP_PROB = 0.01
OBJECTIVES = (("label", "inv_ce", 0.0), ("teacher", "inv_ce", 0.0), ("teacher", "margin", 2.0),
              ("teacher", "margin", 5.0), ("teacher", "teacher", 0.0))


def objective_name(curve: dict) -> str:
  return f"{curve['retain']}/{curve['forget_loss']}"


def outcome(rows: list[dict], setting: str) -> dict | None:
  """The validation row where a setting stops (None if that round was not evaluated)."""
  if setting.startswith("fixed_"):
    stop = int(setting.split("_")[1])
  else:
    last = rows[-1]["round"]
    stop = next((r["round"] for r in rows[1:] if r["forget_prob_mean"] <= STOP_PROB), last)
  return next((r for r in rows if r["round"] == stop), None)


def settings() -> list[str]:
  return [f"fixed_{n}" for n in FIXED_ROUNDS] + [f"mean_prob<={STOP_PROB}"]


def analyse(curves: list[dict]) -> list[dict]:
  """One summary row per (objective, setting): worst and mean case over runs."""
  by_objective: dict[str, list[dict]] = {}
  for c in curves:
    by_objective.setdefault(objective_name(c), []).append(c)
  out = []
  for name, runs in by_objective.items():
    for setting in settings():
      picks = [(c["ckpt"], c["rows"][0], outcome(c["rows"], setting)) for c in runs]
      if any(p[2] is None for p in picks):
        continue
      ratios = [p[2]["val_acc_r"] / p[1]["val_acc_r"] for p in picks]
      accf = [p[2]["val_acc_f"] for p in picks]
      scores = [r - f for r, f in zip(ratios, accf)]
      out.append({"objective": name, "setting": setting, "runs": len(picks),
                  "min_score": min(scores), "mean_score": float(np.mean(scores)),
                  "min_acc_r_ratio": min(ratios), "max_acc_f": max(accf),
                  "stops": [p[2]["round"] for p in picks],
                  "per_run": [f"{r:.3f}/{f:.3f}" for r, f in zip(ratios, accf)]})
  return sorted(out, key=lambda s: -s["min_score"])


def run_all(ckpts: list[str], data: str, out: Path, forget=(9,), rounds: int = 60,
            every: int = 4, per_class: int = 5, val_per_class: int = 500) -> None:
  """Appends one JSON line per (checkpoint, objective) to `out` (each checkpoint
  and its data are loaded once for all objectives)."""
  from experiments import tuning_batch_diagnostic as diag
  for ckpt in ckpts:
    ck, split = diag.load(ckpt, data, val_per_class)
    for retain, forget_loss, margin in OBJECTIVES:
      rows = diag.run(ck, split, list(forget), batch="proxies", retain=retain, per_class=per_class,
                      rounds=rounds, lr=4e-4, every=every, forget_loss=forget_loss,
                      margin=margin, stop_prob=STOP_PROB)
      rec = diag.record(ckpt, "proxies", retain, forget_loss, margin, per_class, rows)
      with out.open("a") as f:
        f.write(json.dumps(rec) + "\n")
      print(f"{ckpt} {objective_name(rec)}: done", flush=True)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--curves", type=Path, required=True, help="JSON lines of the diagnostic")
  p.add_argument("--run", nargs="*", metavar="CKPT", help="first run these checkpoints")
  p.add_argument("--data", default="idx:/usr/share/datasets/fashion-mnist")
  p.add_argument("--forget", type=int, nargs="+", default=[9])
  p.add_argument("--top", type=int, default=20)
  args = p.parse_args(argv)
  if args.run:
    run_all(args.run, args.data, args.curves, args.forget)
  curves = [json.loads(line) for line in args.curves.read_text().splitlines() if line.strip()]
  table = analyse(curves)
  print(f"{len(curves)} curves; criterion: worst case over runs of Acc_r/orig - Acc_f "
        "(validation split)")
  print(f"{'objective':<24} {'setting':<16} min_score mean_score  stops            per run "
        "(Acc_r/orig / Acc_f)")
  for s in table[:args.top]:
    print(f"{s['objective']:<24} {s['setting']:<16} {s['min_score']:9.3f} {s['mean_score']:10.3f}"
          f"  {str(s['stops']):<16} {' '.join(s['per_run'])}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
