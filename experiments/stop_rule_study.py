"""Which data-free stopping rule transfers between training runs? (validation only)

For each seed: hold out a balanced validation set from the TRAINING split
(`--val-per-class` images of every class; the test split is never read),
train GENIU on the rest with the given preset (kept as a checkpoint so the
study can be rerun cheaply), then tune on the proxies round by round and
record, after every round, the validation Acc_r / Acc_f next to every signal a
data-free rule may read (proxies only). `--per-class` subsets the trained
prompts to their first B' ranks (the B' highest-entropy targets), so one
training serves several B.

`analyse(rows)` then scores candidate rules: for each rule and seed, the round
it would stop at and the validation accuracies there. The rule for the `cpu`
preset is chosen from this table (worst case over seeds), never from the test
split.

    python -m experiments.stop_rule_study --data idx:/usr/share/datasets/fashion-mnist \
        --forget 9 --seeds 0 1 2 --out runs/study
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from geniu_jax import checkpoint as ckpt_lib
from geniu_jax import demo
from geniu_jax import runs
from geniu_jax.config import get_config
from geniu_jax.geniu import unlearn as U
from geniu_jax.geniu.generator import make_proxies
from geniu_jax.geniu.prompts import first_ranks, prompt_labels
from geniu_jax.models import functional as F


def trained_checkpoint(data_source: str, forget, preset: str, seed: int, val_per_class: int,
                       path: Path, **overrides):
  """Trains once on the training split minus the validation set; reuses `path` if there."""
  cfg = get_config(preset, seed=seed, **overrides)
  data = runs.prepare_data(data_source, forget, cfg.imbalance, seed,
                           validation_per_class=val_per_class)
  if not path.exists():
    runs.save_run(str(path), cfg, data, runs.train_geniu(cfg, data))
  return ckpt_lib.restore(path), data


def proxy_signals(params, graphdef, stats, proxies, labels, forget_mask) -> dict:
  """Everything a data-free rule may look at after a round (proxies only).

  `forget_prob_mean` and `retain_acc` come from `unlearn.proxy_checks`, so
  they are exactly what the in-loop stop rule reads.
  """
  logits = F.classifier_logits(graphdef, params, stats, proxies)
  forget_prob_mean, retain_acc = U.proxy_checks(logits, labels, forget_mask)
  own = jnp.take_along_axis(jax.nn.softmax(logits), labels[:, None], axis=1)[:, 0]
  pred = jnp.argmax(logits, -1)
  retained = ~forget_mask
  return {
      "forget_prob_max": jnp.max(jnp.where(forget_mask, own, 0.0)),
      "forget_prob_mean": forget_prob_mean,
      "forget_kept": jnp.sum((pred == labels) & forget_mask) / forget_mask.sum(),
      "retain_acc": retain_acc,
      "retain_prob_mean": jnp.sum(jnp.where(retained, own, 0.0)) / jnp.maximum(retained.sum(), 1),
  }


def curve(ck, x_val, y_val, forget, *, per_class: int, rounds: int, lr: float) -> list[dict]:
  c, g = ck.classifier, ck.generator
  k = ck.metadata["num_classes"]
  prompts = first_ranks(ck.prompts, k, per_class)
  labels = prompt_labels(k, per_class)
  proxies = make_proxies(g.graphdef, g.params, prompts)
  mask = U.forget_mask_for(labels, jnp.asarray(forget))
  optimizer = optax.adam(lr)
  step = jax.jit(lambda p, o: U.tuning_step(p, o, c.graphdef, c.stats, proxies, labels, mask,
                                            optimizer))
  signals = jax.jit(lambda p: proxy_signals(p, c.graphdef, c.stats, proxies, labels, mask))
  params, opt_state = c.params, optimizer.init(c.params)
  rows = []
  for r in range(rounds + 1):
    acc = runs.evaluate(F.SplitModel(c.graphdef, params, c.stats), x_val, y_val, k, forget)
    rows.append({"round": r, "val_acc_r": acc["acc_r"], "val_acc_f": acc["acc_f"],
                 **{name: float(v) for name, v in signals(params).items()}})
    if r < rounds:
      params, opt_state, _ = step(params, opt_state)
  return rows


# Candidate rules: name -> function(trace rows) -> stop round. Each reads only
# the proxy signals (never val_*).
def _first(rows, pred, default):
  return next((r["round"] for r in rows if r["round"] > 0 and pred(r, rows[0])), default)


def candidate_rules(max_rounds: int) -> dict:
  rules = {f"fixed_{n}": (lambda n: lambda rows: min(n, max_rounds))(n)
           for n in (10, 15, 20, 25, 30, 40, 60)}
  for p in (0.2, 0.1, 0.065, 0.05, 0.03):
    rules[f"max_prob<={p}"] = (lambda p: lambda rows: _first(
        rows, lambda r, r0: r["forget_prob_max"] <= p, max_rounds))(p)
  for p in (0.05, 0.03, 0.02, 0.01):
    rules[f"mean_prob<={p}"] = (lambda p: lambda rows: _first(
        rows, lambda r, r0: r["forget_prob_mean"] <= p, max_rounds))(p)
  for m in (2, 3, 4, 5):
    def flip_times(rows, m=m):
      flip = _first(rows, lambda r, r0: r["forget_kept"] == 0.0, None)
      return max_rounds if flip is None else min(m * flip, max_rounds)
    rules[f"{m}x_flip_round"] = flip_times
  for f in (0.1, 0.05, 0.02):
    rules[f"max_prob<={f}*start"] = (lambda f: lambda rows: _first(
        rows, lambda r, r0: r["forget_prob_max"] <= f * r0["forget_prob_max"], max_rounds))(f)
  # Plateau: the forgotten proxies' mean class probability has stopped falling
  # (relative drop over the last w rounds below eps) once they are all flipped.
  for w, eps in ((4, 0.05), (4, 0.1), (6, 0.05), (6, 0.1), (8, 0.1)):
    def plateau(rows, w=w, eps=eps):
      return _first(rows, lambda r, r0: r["round"] >= w and r["forget_kept"] == 0.0 and (
          r["forget_prob_mean"] >= (1 - eps) * rows[r["round"] - w]["forget_prob_mean"]),
          max_rounds)
    rules[f"plateau_w{w}_eps{eps}"] = plateau
  return rules


def analyse(curves: dict[str, list[dict]], max_rounds: int) -> list[dict]:
  """One row per (rule, run): stop round and validation accuracies there."""
  out = []
  for name, rule in candidate_rules(max_rounds).items():
    for run_name, rows in curves.items():
      stop = rule(rows)
      r = rows[min(stop, len(rows) - 1)]
      out.append({"rule": name, "run": run_name, "stop_round": stop,
                  "val_acc_r": r["val_acc_r"], "val_acc_f": r["val_acc_f"],
                  "orig_acc_r": rows[0]["val_acc_r"],
                  "acc_r_ratio": r["val_acc_r"] / rows[0]["val_acc_r"]})
  return out


def summarise(table: list[dict]) -> list[dict]:
  """Worst case over seeds per (rule, B): min Acc_r ratio, max Acc_f."""
  groups = dict.fromkeys((r["rule"], r["run"].split("_")[-1]) for r in table)
  summary = []
  for name, b in groups:
    rows = [r for r in table if r["rule"] == name and r["run"].endswith("_" + b)]
    summary.append({"rule": name, "B": b, "min_acc_r_ratio": min(r["acc_r_ratio"] for r in rows),
                    "mean_acc_r_ratio": float(np.mean([r["acc_r_ratio"] for r in rows])),
                    "max_acc_f": max(r["val_acc_f"] for r in rows),
                    # The selection criterion: worst case over seeds of
                    # Acc_r/Acc_r(original) - Acc_f (a point of the forgotten
                    # class kept costs as much as a point of retained accuracy).
                    "min_score": min(r["acc_r_ratio"] - r["val_acc_f"] for r in rows),
                    "stops": [r["stop_round"] for r in rows]})
  return summary


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--data", required=True)
  p.add_argument("--forget", type=int, nargs="+", default=[9])
  p.add_argument("--preset", default="cpu")
  p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  p.add_argument("--per-class", type=int, nargs="+", default=[5])
  p.add_argument("--rounds", type=int, default=60)
  p.add_argument("--lr", type=float, default=4e-4)
  p.add_argument("--val-per-class", type=int, default=500)
  p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                 help="config overrides, e.g. batch_size=64 (values parsed as JSON)")
  p.add_argument("--demo", action="store_true",
                 help="the settings `geniu demo` trains with (geniu_jax.demo.DEMO_OVERRIDES)")
  p.add_argument("--train-only", action="store_true", help="train the checkpoints and stop")
  p.add_argument("--out", type=Path, required=True)
  args = p.parse_args(argv)
  overrides = dict(demo.DEMO_OVERRIDES) if args.demo else {}
  for item in args.set:
    field, _, value = item.partition("=")
    overrides[field] = json.loads(value)
  args.out.mkdir(parents=True, exist_ok=True)
  curves = {}
  for seed in args.seeds:
    ck, data = trained_checkpoint(args.data, args.forget, args.preset, seed,
                                  args.val_per_class, args.out / f"seed{seed}", **overrides)
    if args.train_only:
      continue
    for b in args.per_class:
      name = f"seed{seed}_B{b}"
      path = args.out / f"curve_{name}_lr{args.lr:g}.json"
      if path.exists():
        curves[name] = json.loads(path.read_text())
        continue
      curves[name] = curve(ck, data.x_test, data.y_test, args.forget, per_class=b,
                           rounds=args.rounds, lr=args.lr)
      path.write_text(json.dumps(curves[name], indent=1))
  if args.train_only:
    return
  table = analyse(curves, args.rounds)
  summary = summarise(table)
  (args.out / "rules.json").write_text(json.dumps({"table": table, "summary": summary},
                                                  indent=1))
  summary.sort(key=lambda s: -s["min_score"])
  print("rule                   B   min_Acc_r/orig  mean  max_Acc_f  min_score  stop rounds")
  for s in summary:
    print(f"{s['rule']:<22} {s['B']:<3} {s['min_acc_r_ratio']:.3f}  {s['mean_acc_r_ratio']:.3f}  "
          f"{s['max_acc_f']:.4f}  {s['min_score']:.3f}  {s['stops']}")


if __name__ == "__main__":
  main()
