"""Choosing GENIU's data-free unlearning setting on a validation split.

Holds out a balanced validation set (`--val-per-class` images of every class)
from the TRAINING split, trains GENIU on the rest (imbalanced as usual), then
unlearns with every combination of proxies-per-class B and stopping threshold
and scores each on the validation set only. The test split is never read.
The chosen combination is what the `cpu` preset and `geniu demo` use.

    python -m experiments.tune_unlearning --data idx:/usr/share/datasets/fashion-mnist \
        --forget 9 --out runs/tune
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

from geniu_jax import checkpoint as ckpt_lib
from geniu_jax import runs
from geniu_jax.config import get_config

STOP_GRID = (None, 0.1, 0.01, 0.001, 1e-4)
LR_GRID = (4e-4, 1e-3)
ROUNDS_GRID = (100, 200)


def get_config_for(smoke: bool = False) -> dict:
  return {"preset": "smoke" if smoke else "cpu", "per_class_grid": (1, 5),
          "stop_grid": STOP_GRID, "lr_grid": LR_GRID, "rounds_grid": ROUNDS_GRID,
          "val_per_class": 500}


def _trained(cfg, data, path: Path):
  """Trains once per B and keeps the checkpoint, so grids can be rerun cheaply."""
  if path.exists():
    ck = ckpt_lib.restore(path)
    return ck.classifier, ck.generator, ck.prompts
  trained = runs.train_geniu(cfg, data)
  runs.save_run(str(path), cfg, data, trained)
  return trained.classifier, trained.generator, trained.prompts


def run(data_source: str, forget: list[int], out: Path, preset: str, per_class_grid,
        stop_grid, lr_grid, rounds_grid, val_per_class: int, seed: int = 0) -> list[dict]:
  out.mkdir(parents=True, exist_ok=True)
  rows = []
  for per_class in per_class_grid:
    cfg = get_config(preset, proxies_per_class=per_class, seed=seed)
    data = runs.prepare_data(data_source, forget, cfg.imbalance, seed,
                             validation_per_class=val_per_class)
    classifier, generator, prompts = _trained(cfg, data, out / f"B{per_class}")
    base = runs.evaluate(classifier, data.x_test, data.y_test, data.num_classes, forget)
    rows.append({"B": per_class, "stop": "original", "val_acc_r": base["acc_r"],
                 "val_acc_f": base["acc_f"]})
    for lr, rounds, stop in itertools.product(lr_grid, rounds_grid, stop_grid):
      res = runs.geniu_unlearn_timed(classifier, generator, prompts, forget, rounds=rounds,
                                     lr=lr, stop_forget_prob=stop)
      acc = runs.evaluate(res.classifier, data.x_test, data.y_test, data.num_classes, forget)
      rows.append({"B": per_class, "lr": lr, "max_rounds": rounds, "stop": stop,
                   "rounds_run": res.rounds_run, "val_acc_r": acc["acc_r"],
                   "val_acc_f": acc["acc_f"], "unlearn_ms": res.unlearn_ms})
      print(json.dumps(rows[-1]), flush=True)
  (out / "tune.json").write_text(json.dumps(rows, indent=1))
  return rows


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--data", required=True)
  p.add_argument("--forget", type=int, nargs="+", default=[9])
  p.add_argument("--out", type=Path, required=True)
  p.add_argument("--smoke", action="store_true")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--per-class", type=int, nargs="+", help="B values (default: 1 5)")
  args = p.parse_args(argv)
  c = get_config_for(args.smoke)
  rows = run(args.data, args.forget, args.out, c["preset"], args.per_class or c["per_class_grid"],
             c["stop_grid"], c["lr_grid"], c["rounds_grid"], c["val_per_class"], args.seed)
  print("B  lr      max  stop     rounds  val_Acc_r  val_Acc_f")
  for r in rows:
    print(f"{r['B']:<2} {r.get('lr', '-')!s:<7} {r.get('max_rounds', '-')!s:<4} "
          f"{str(r['stop']):<8} {r.get('rounds_run', '-')!s:<7} "
          f"{r['val_acc_r']:.4f}     {r['val_acc_f']:.4f}")


if __name__ == "__main__":
  main()
