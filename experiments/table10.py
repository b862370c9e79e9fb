"""Table 10 and Figure 6 of GENIU (arXiv 2406.07885): how the supervision samples are chosen.

Appendix G.2: the VAE learns to map each noise prompt z_k to a supervision
sample of class k chosen per epoch (§4.4). The paper picks the samples of
maximum softmax entropy and compares the minimum; we add `random` (B
samples of each class drawn uniformly, `geniu_jax.geniu.selection`), the
control that says whether entropy matters at all. Each rule is a training
variant, so every (class, rule, seed) cell trains its own original; on it
run GENIU as Table 1's two pinned settings (`geniu_paper`: Eq. 10, B = 1,
100 rounds, the paper's; `geniu`: the cpu preset's setting, the trained B,
150 rounds), the original, and the analysis `geniu_proxies`, which
keeps the original's proxies g(z_k) (WORKDIR/arrays/<record key>.npz, with
the prompts) and how many of them the original classifies as their class.

* Table 10: Acc_r / Acc_f per forgotten class (the paper forgets each
  Fashion-MNIST class in turn), mean ± std over seeds, the paper's beside.
* Figure 6: the first-rank proxy of every class, one row per rule, from one
  original per rule (the same forgotten class and seed in every row).

    python -m experiments.table10 --config cpu --workdir experiments/results/table10 \\
        --originals runs/originals [--classes 9] [--seeds 0 1 2]
    python -m experiments.table10 --config cpu --workdir experiments/results/table10 --report

`cpu`: every class, seed 0: 30 cells (10 classes x 3 rules) x 4 methods. The
max-entropy cells are Table 1's (the rule is the default; 500 validation
images per class held out, as there), so `--originals runs/originals` reuses
Table 1's originals. About 4.5 min per new original on a 2-core CPU and
~0.5 min of GENIU per cell: about 1 h 50 min with Table 1's originals, 2 h
35 min without. `paper`: 5 seeds at the paper's schedule (an accelerator
job). `smoke`: the embedded Fashion-MNIST subset, classes 9 and 1, plumbing
only (too little training for the generator's gate to open): ~3.5 min on a
busy 2-core CPU, nearly all compilation.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import jax
import numpy as np

from experiments import table1, table2
from experiments.grid import report as R
from experiments.grid import runner, tables
from experiments.grid.spec import GridConfig, MethodSpec, TrainVariant, overrides
from geniu_jax.geniu import prompts as prompt_lib
from geniu_jax.geniu.generator import make_proxies

PAPER_KEY = "table10_supervision_selection_fashion_mnist"
RULES = ("max_entropy", "min_entropy", "random")
PROXIES = MethodSpec("proxies", "geniu_proxies")
METHODS = (table1.ORIGINAL, table1.GENIU_CPU, table1.GENIU_PAPER, PROXIES)


def variants(base: tuple = ()) -> tuple[TrainVariant, ...]:
  return tuple(TrainVariant(rule, overrides(**dict(base), selection=rule)) for rule in RULES)


def get_config(variant: str = "cpu", seeds: Sequence[int] | None = None,
               classes: Sequence[int] | None = None) -> GridConfig:
  if variant == "smoke":
    return GridConfig(name="table10", preset="smoke", datasets=(("fashion_mnist", "embedded"),),
                      forget_sets=tables.single_classes(classes, (9, 1)),
                      seeds=tuple(seeds or (0,)),
                      train_variants=variants(table2.SMOKE_VARIANT.overrides), methods=METHODS)
  if variant in ("cpu", "paper"):
    return GridConfig(name="table10", preset=variant, datasets=(table1.FASHION_MNIST,),
                      forget_sets=tables.single_classes(classes, range(10)),
                      seeds=tuple(seeds or ((0,) if variant == "cpu" else range(5))),
                      validation_per_class=500, train_variants=variants(), methods=METHODS)
  raise ValueError(f"unknown config {variant!r}")


# --- the analysis -------------------------------------------------------------

_proxies = jax.jit(lambda generator, z: make_proxies(generator.graphdef, generator.params, z))


@runner.register_analysis("geniu_proxies")
def proxies_analysis(ctx: runner.Context) -> tuple[None, dict]:
  """Keeps the original's proxies g(z) of every class and rank (Figure 6)."""
  original = ctx.original
  if original.generator is None:
    raise ValueError("the original has no GENIU generator and prompts")
  k = ctx.data.num_classes
  prompts = np.asarray(original.prompts)
  per_class = prompts.shape[0] // k
  proxies = np.asarray(_proxies(original.generator, prompts))
  labels = np.asarray(prompt_lib.prompt_labels(k, per_class))
  correct = runner.predictions(original.classifier, proxies) == labels
  arrays = table2.save_arrays(ctx.workdir, ctx.record_key,
                              {"proxies": proxies, "prompts": prompts, "labels": labels})
  checks = original.metadata.get("checks") or {}
  return None, {
      "arrays": arrays, "selection": ctx.cfg.selection, "proxies_per_class": per_class,
      # Proxies the original puts in their own class: the gate of Alg. 1
      # needs the prompts there, a proxy far from its class says the VAE
      # learned little from the chosen samples.
      "proxy_accuracy": float(correct.mean()),
      "proxy_accuracy_per_class": [float(correct[labels == c].mean()) for c in range(k)],
      "generator_epochs": checks.get("generator_epochs")}


# --- the report ---------------------------------------------------------------

def class_name(dataset: str, k: int) -> str:
  return R.FMNIST_CLASSES[k] if dataset == "fashion_mnist" and k < 10 else f"class {k}"


def table10(records, cfg) -> R.Section:
  """Per GENIU setting: rows = (rule, metric), columns = forgotten classes + mean."""
  ref = R.paper()[PAPER_KEY]
  recs = [r for r in tables.scored(records) if R.registry_name(cfg, r["method"]) == "geniu"]
  parts, csv_rows = [], []
  for (dataset, label), rs in R.group(recs, "dataset", "method").items():
    classes = sorted({r["forget"][0] for r in rs})
    by = R.group(rs, "train_variant", "forget")
    rows = []
    for rule in [v.label for v in cfg.train_variants]:
      paper_rule = ref.get(rule, {}) if dataset == "fashion_mnist" else {}
      for metric in tables.METRICS:
        paper_row = paper_rule.get(metric, {})
        cells = []
        for c in classes:
          s = R.stat(r.get(metric) for r in by.get((rule, (c,)), []))
          p = paper_row.get(class_name(dataset, c))
          cells.append(f"{R.fmt(s, 3)} ({R.fmt_paper(p, 3)})")
          csv_rows.append({"dataset": dataset, "method": label, "selection": rule,
                           "class": c, "metric": metric, "mean": s and s.mean,
                           "std": s and s.std, "n": s.n if s else 0, "paper": p})
        every = R.stat(r.get(metric) for c in classes for r in by.get((rule, (c,)), []))
        known = [paper_row.get(class_name(dataset, c)) for c in classes]
        paper_mean = (float(np.mean(known)) if known and None not in known else None)
        cells.append(f"{R.fmt(every, 3)} ({R.fmt_paper(paper_mean, 3)})")
        csv_rows.append({"dataset": dataset, "method": label, "selection": rule,
                         "class": "mean", "metric": metric, "mean": every and every.mean,
                         "std": every and every.std, "n": every.n if every else 0,
                         "paper": paper_mean})
        rows.append([rule, metric, *cells])
    header = ["selection", "metric", *(class_name(dataset, c) for c in classes), "mean"]
    parts.append(f"### {dataset}, {label}\n\n" + R.markdown_table(header, rows))
  note = ("Each cell: ours (the paper's). Ours: mean ± std over seeds; `mean`: over the "
          "classes shown and the seeds, beside the paper's mean over the same classes. The "
          "paper compares max and min entropy with GENIU's Eq. 10 setting (`geniu_paper`); "
          "`random` (B samples per class drawn uniformly) is ours and has no paper numbers.")
  return R.Section("\n\n".join(parts + [note]) if parts else "No GENIU records.", csv_rows)


def _proxy_records(records) -> list[dict]:
  return [r for r in records if isinstance(r.get("info"), dict) and r["info"].get("arrays")
          and r["info"].get("selection")]


def shown(records, cfg) -> list[dict]:
  """One proxies record per rule: the first forgotten class (config order) and
  lowest seed that every rule has, so that the rows differ in the rule only."""
  recs = _proxy_records(records)
  rules = [v.label for v in cfg.train_variants]
  order = {tuple(f): i for i, f in enumerate(cfg.forget_sets)}
  cells = R.group(recs, "dataset", "forget", "seed")
  for key in sorted(cells, key=lambda key: (order.get(key[1], len(order)), key[2])):
    by_rule = {r["train_variant"]: r for r in cells[key]}
    if all(rule in by_rule for rule in rules):
      return [by_rule[rule] for rule in rules]
  first = {}
  for r in sorted(recs, key=lambda r: r["seed"]):
    first.setdefault(r["train_variant"], r)
  return [first[rule] for rule in rules if rule in first]


def figure6(records, cfg) -> R.Section:
  rows_shown = shown(records, cfg)
  rows = [{"selection": r["train_variant"], "dataset": r["dataset"], "forget": r["forget"][0],
           "seed": r["seed"], "arrays": r["info"]["arrays"],
           "proxy_accuracy": r["info"].get("proxy_accuracy"),
           "generator_epochs": r["info"].get("generator_epochs")} for r in rows_shown]

  def figure(out: Path) -> None:
    panels = []
    for r in rows_shown:
      arrays = table2.load_arrays(out.parent, r["info"]["arrays"]) or {}
      if "proxies" not in arrays:
        continue
      labels = arrays["labels"]
      k = int(labels.max()) + 1
      first = arrays["proxies"][:k]  # prompt i is class i % K, rank i // K
      caps = [class_name(r["dataset"], c) + (" (forgotten)" if c in r["forget"] else "")
              for c in range(k)]
      panels.append((f"{r['train_variant']}\n(class {r['forget'][0]}, seed {r['seed']})",
                     first, caps, False))
    table2.image_grid(out, panels or [("no arrays", np.zeros((0, 1, 1, 1)), [], False)],
                      "Figure 6: GENIU's proxies g(z_k) by supervision-sample selection")

  md = R.markdown_table(
      ["selection", "forgotten class", "seed", "proxies in their own class",
       "generator epochs"],
      [[r["selection"], r["forget"], r["seed"], R.fmt_paper(r["proxy_accuracy"], 2),
        r["generator_epochs"]] for r in rows])
  note = ("The first-rank proxy g(z_k) of every class, one original per rule; `proxies in "
          "their own class`: the share of all B x K proxies the original assigns to their "
          "class.")
  every = R.group(_proxy_records(records), "train_variant")
  if every:
    note += " Over every original in the store: " + "; ".join(
        f"{rule} {R.fmt(R.stat(r['info'].get('proxy_accuracy') for r in rs), 2)} "
        f"({len(rs)} originals)" for (rule,), rs in every.items()) + "."
  if any(r["generator_epochs"] == 0 for r in rows):
    note += (" A row with 0 generator epochs never opened the gate of Alg. 1: its proxies "
             "are the untrained VAE's.")
  return R.Section(md + "\n\n" + note, rows, figure)


VIEWS = (R.View("Table 10", table10), R.View("Figure 6", figure6))


def main(argv: Sequence[str] | None = None) -> int:
  return tables.main(get_config, VIEWS, argv, description=__doc__.splitlines()[0])


if __name__ == "__main__":
  sys.exit(main())
