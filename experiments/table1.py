"""Tables 1, 4 and 9 of the GENIU paper: every method on one forgotten majority class.

For each seed: make the imbalanced split with the forgotten class as the
majority (§5), train the original model with GENIU's training phase and the
baseline recorder (`methods.records`), retrain without the forgotten class,
then run every registered method on the same original model through
`registry.run_method` (each sees only what it declared). Reports, next to
the paper's numbers for the matching dataset (`paper_results.json`):

* Table 1 -- Acc on D_r (retained classes) and D_f (forgotten) of the test split;
* Table 4 -- unlearning time: wall time from the original model to the
  unlearned one without XLA compilation, and the compilation separately
  (see `geniu_jax.methods.common`); the paper's PyTorch numbers have no
  compilation;
* Table 9 -- the GENIU ablations (post-training proxies, impair-repair).

The paper averages 5 seeds of the `paper` setting over every class as the
forgotten one; a `smoke` or `cpu` run is a far smaller model and budget, so
the paper column is a reference for the pattern, not a target.

    python -m experiments.table1 --data embedded --preset smoke --forget 9 --seeds 0 --out /tmp/t1

Writes DIR/table1.json (every number, per seed and aggregated) and
DIR/table1.md (the tables), and prints the markdown.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import zlib
from pathlib import Path
from typing import Sequence

import jax
import numpy as np

from geniu_jax import data as data_lib
from geniu_jax import runs
from geniu_jax.config import PRESETS, get_config as preset_config
from geniu_jax.geniu import train as train_lib
from geniu_jax.methods import command, records, registry
from geniu_jax.models.conv import LOWERINGS

PAPER_RESULTS = Path(__file__).with_name("paper_results.json")
TABLE1_COLUMNS = (("original", "Original"), ("retrain", "Retrain"), ("gkt", "GKT"),
                  ("unsir", "UNSIR"), ("geniu", "GENIU"), ("ir", "I-R"),
                  ("unrolling", "Unrolling"))
UNLEARNING = ("gkt", "unsir", "geniu", "ir", "unrolling")
EXTRA = ("ir_relabel",)
ABLATIONS = {"geniu_post_impair_repair": ("post_training", "impair_repair"),
             "geniu_impair_repair": ("geniu", "impair_repair"),
             "geniu_post": ("post_training", "in_batch"),
             "geniu": ("geniu", "in_batch")}


@dataclasses.dataclass(frozen=True)
class Table1Config:
  data: str = "tfds:fashion_mnist"
  preset: str = "paper"
  forget: tuple[int, ...] = (9,)
  seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
  methods: tuple[str, ...] = UNLEARNING + EXTRA + tuple(a for a in ABLATIONS if a != "geniu")
  lowering: str | None = None   # None: the preset's


def get_config(smoke: bool = False) -> Table1Config:
  """The paper's setting on Fashion-MNIST, or a seconds-long smoke run."""
  if smoke:
    return Table1Config(data="embedded", preset="smoke", seeds=(0,))
  return Table1Config()


def dataset_key(source: str) -> str | None:
  """Which dataset of the paper a source string is (None: unknown)."""
  s = source.lower()
  if s == "embedded" or "fashion" in s:
    return "fashion_mnist"
  for needle, key in (("kmnist", "kmnist"), ("kuzushiji", "kmnist"), ("cifar", "cifar10"),
                      ("mnist", "mnist")):
    if needle in s:
      return key
  return None


def _log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def run_seed(cfg: Table1Config, seed: int, ds: data_lib.Dataset,
             workdir: Path | None = None) -> dict:
  """One seed: train, retrain, every method; accuracies, times and infos.

  With a `workdir`, what is done so far is rewritten to seed{seed}.json after
  every method, so a long run that is stopped keeps its results.
  """
  run_cfg = preset_config(cfg.preset, ds.image_shape, seed=seed, lowering=cfg.lowering)
  data = runs.prepare_data(ds, cfg.forget, run_cfg.imbalance, seed, log=_log)

  def score(model) -> dict:
    r = runs.evaluate(model, data.x_test, data.y_test, data.num_classes, cfg.forget)
    return {"acc_r": r["acc_r"], "acc_f": r["acc_f"], "per_class": r["per_class"]}

  _log(f"[seed {seed}] original: GENIU training phase with the baseline recorder")
  t0 = time.perf_counter()
  original = train_lib.train(run_cfg, data.x_train, data.y_train, data.num_classes,
                             recorder=records.default_recorder(), log=_log)
  out = {"original": {**score(original.classifier),
                      "train_s": time.perf_counter() - t0},
         "record_bytes": records.record_bytes(original.records),
         "class_counts": [int(c) for c in data.counts]}
  available = registry.inputs_from(data.x_train, data.y_train, cfg.forget,
                                   artifacts=(original.generator, original.prompts),
                                   records=original.records)
  for name in ("retrain",) + tuple(cfg.methods):
    _log(f"[seed {seed}] {name} (access {registry.access_table()[name]})")
    key = jax.random.fold_in(jax.random.key(seed), zlib.crc32(name.encode()) % (2**31))
    model, info = registry.run_method(
        name, run_cfg, key, classifier=original.classifier, forget=cfg.forget,
        num_classes=data.num_classes, image_shape=data.x_train.shape[1:], **available)
    out[name] = {**score(model), "unlearn_ms": info.get("unlearn_ms"),
                 "compile_ms": info.get("compile_ms"), "info": command.jsonable(info)}
    _log(f"  acc_r {out[name]['acc_r']:.4f} acc_f {out[name]['acc_f']:.4f} "
         f"unlearn {out[name]['unlearn_ms']:.0f} ms")
    if workdir is not None:
      (workdir / f"seed{seed}.json").write_text(json.dumps(command.jsonable(out)))
  return out


def _stats(values) -> dict | None:
  values = [v for v in values if v is not None]
  if not values:
    return None
  return {"mean": float(np.mean(values)), "std": float(np.std(values)), "n": len(values)}


def aggregate(per_seed: list[dict], names: Sequence[str]) -> dict:
  return {name: {m: _stats([s[name].get(m) for s in per_seed])
                 for m in ("acc_r", "acc_f", "unlearn_ms", "compile_ms")}
          for name in names}


def _fmt(stat: dict | None, digits: int = 4) -> str:
  if stat is None:
    return "-"
  text = f"{stat['mean']:.{digits}f}"
  return text + (f" ± {stat['std']:.{digits}f}" if stat["n"] > 1 else "")


def _paper(value, digits: int = 4) -> str:
  return "-" if value is None else f"{value:.{digits}f}" if digits else f"{value:.0f}"


def format_markdown(result: dict) -> str:
  cfg, agg, paper = result["config"], result["aggregate"], result["paper"]
  t1, t4, t9 = (paper or {}).get("table1", {}), (paper or {}).get("table4", {}), \
      (paper or {}).get("table9", [])
  lines = [f"# GENIU Table 1 / 4 / 9 -- data `{cfg['data']}` (paper: {result['dataset']}), "
           f"preset `{cfg['preset']}`, forget {cfg['forget']}, seeds {cfg['seeds']}", "",
           "## Table 1: accuracy on the test split", "",
           "| Acc | " + " | ".join(title for _, title in TABLE1_COLUMNS) + " |",
           "|---|" + "---|" * len(TABLE1_COLUMNS)]
  for metric, label in (("acc_r", "D_r ↑"), ("acc_f", "D_f ↓")):
    lines.append(f"| {label} ours | " + " | ".join(
        _fmt(agg.get(n, {}).get(metric)) for n, _ in TABLE1_COLUMNS) + " |")
    lines.append(f"| {label} paper | " + " | ".join(
        _paper(t1.get(metric, {}).get(n)) for n, _ in TABLE1_COLUMNS) + " |")
  lines += ["", "I-R is amnesiac unlearning (`ir`); Graves et al.'s relabelling is "
            "`ir_relabel` below."]
  extra = [n for n in cfg["methods"] if n not in UNLEARNING and n in agg]
  if extra:
    lines += ["", "Other registered methods (not in the paper's Table 1):", "",
              "| method | D_r ↑ | D_f ↓ |", "|---|---|---|"]
    lines += [f"| {n} | {_fmt(agg[n]['acc_r'])} | {_fmt(agg[n]['acc_f'])} |" for n in extra]
  lines += ["", "## Table 4: unlearning time (ms)", "",
            "unlearn = wall time original -> unlearned model without XLA compilation; "
            "compile = the compilation it needed (ahead of time).", "",
            "| method | unlearn ms | compile ms | paper ms |", "|---|---|---|---|"]
  for n in [n for n, _ in TABLE1_COLUMNS[1:]] + extra:
    if n in agg:
      lines.append(f"| {n} | {_fmt(agg[n]['unlearn_ms'], 1)} | "
                   f"{_fmt(agg[n]['compile_ms'], 1)} | {_paper(t4.get(n), 0)} |")
  rows = [r for r in t9] or [{"proxy": p, "tuning": t} for p, t in ABLATIONS.values()]
  lines += ["", "## Table 9: ablation (paper: Fashion-MNIST)", "",
            "| proxy | tuning | method | Acc_f ours | Acc_r ours | Acc_f paper | Acc_r paper |",
            "|---|---|---|---|---|---|---|"]
  for row in rows:
    name = next(n for n, pt in ABLATIONS.items() if pt == (row["proxy"], row["tuning"]))
    a = agg.get(name, {})
    lines.append(f"| {row['proxy']} | {row['tuning']} | {name} | {_fmt(a.get('acc_f'))} | "
                 f"{_fmt(a.get('acc_r'))} | {_paper(row.get('acc_f'))} | "
                 f"{_paper(row.get('acc_r'))} |")
  lines += ["", f"Baseline records: {result['record_bytes'] / 1e6:.2f} MB per checkpoint.",
            "Paper numbers: mean of 5 seeds, every class forgotten in turn, paper preset."]
  return "\n".join(lines) + "\n"


def _paper_numbers(key: str | None) -> dict | None:
  if key is None:
    return None
  ref = json.loads(PAPER_RESULTS.read_text())
  return {"table1": ref["table1_single_majority_class_forgotten"].get(key, {}),
          "table4": {m: v.get(key) for m, v in ref["table4_unlearning_time_ms"].items()},
          "table9": ref["table9_ablation_fashion_mnist"] if key == "fashion_mnist" else []}


def run(cfg: Table1Config, workdir: str | Path) -> dict:
  """Runs every seed, writes workdir/table1.json and table1.md, returns the result."""
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  ds = data_lib.load(cfg.data)
  runs.check_classes(cfg.forget, ds.num_classes, "forget")
  per_seed = []
  for seed in cfg.seeds:
    per_seed.append(run_seed(cfg, seed, ds, workdir))
  names = [n for n in [c for c, _ in TABLE1_COLUMNS] + list(cfg.methods) if n in per_seed[0]]
  names = list(dict.fromkeys(names))
  key = dataset_key(cfg.data)
  result = {"config": command.jsonable(dataclasses.asdict(cfg)), "dataset": key,
            "access": registry.access_table(), "record_bytes": per_seed[0]["record_bytes"],
            "aggregate": aggregate(per_seed, names), "paper": _paper_numbers(key),
            "per_seed": command.jsonable(per_seed)}
  (workdir / "table1.json").write_text(json.dumps(result, indent=1))
  (workdir / "table1.md").write_text(format_markdown(result))
  return result


def main(argv: Sequence[str] | None = None) -> int:
  default = get_config()
  p = argparse.ArgumentParser(prog="python -m experiments.table1",
                              description=__doc__.splitlines()[0])
  p.add_argument("--data", default=default.data)
  p.add_argument("--preset", choices=PRESETS, default=default.preset)
  p.add_argument("--forget", type=int, nargs="+", default=list(default.forget))
  p.add_argument("--seeds", type=int, nargs="+", default=list(default.seeds))
  p.add_argument("--methods", nargs="+", default=list(default.methods))
  p.add_argument("--lowering", choices=LOWERINGS)
  p.add_argument("--out", required=True)
  args = p.parse_args(argv)
  unknown = set(args.methods) - set(registry.METHODS)
  if unknown:
    p.error(f"unknown methods {sorted(unknown)}; registered: {sorted(registry.METHODS)}")
  methods = tuple(args.methods) + (() if "geniu" in args.methods else ("geniu",))
  cfg = Table1Config(data=args.data, preset=args.preset, forget=tuple(args.forget),
                     seeds=tuple(args.seeds), methods=methods, lowering=args.lowering)
  result = run(cfg, args.out)
  print(format_markdown(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
