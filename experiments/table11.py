"""Table 11 of GENIU (arXiv 2406.07885): start the noise training at a training accuracy t.

Appendix G.5: the noise prompts (Eq. 8), the supervision selection (§4.4)
and the generator (Eq. 4-6) start at the first epoch whose classifier
training accuracy reaches t, t in {0.4, 0.6, 0.7}, or from the first epoch
(`none`, §5); `Config.noise_start_acc`, see `geniu_jax.geniu.train`. The
paper: the later the start, the more the prompts are fitted to a classifier
already skewed to the majority, and the worse the unlearning (Acc_r 0.7711
-> 0.7436). Each t is a training variant, so every (class, t, seed) cell
trains its own original; on it run the original and GENIU as Table 1's two
pinned settings (`geniu_paper`: Eq. 10, B = 1, 100 rounds, the paper's;
`geniu`: the cpu preset's setting, the trained B, 150 rounds).
Fashion-MNIST, as the paper. The second view says when the noise started
and how many epochs trained the generator, from the originals' histories.

Which class? The paper does not say; its `none` row is Table 1's
Fashion-MNIST mean over every class, so the `paper` config forgets every
class and `cpu` forgets class 9 (`--classes` adds others). Ours: mean ± std
over every record of a t (forgotten classes x seeds).

    python -m experiments.table11 --config cpu --workdir experiments/results/table11 \\
        --originals runs/originals [--classes 0 1 ... 9] [--seeds 0 1 2 3 4]
    python -m experiments.table11 --config cpu --workdir experiments/results/table11 --report

`cpu`: class 9, seeds 0-2: 12 cells (4 t x 3 seeds) x 3 methods. The `none`
cells are Table 1's (500 validation images per class held out, as there), so
`--originals runs/originals` reuses them. About 4.5 min per new original on a
2-core CPU and ~0.5 min of GENIU per cell: about 45 min with Table 1's
originals, an hour without. `paper`: every class, 5 seeds (an accelerator
job). `smoke`: the embedded Fashion-MNIST subset, plumbing only: ~2.5 min on
a busy 2-core CPU, nearly all compilation.
"""

from __future__ import annotations

import sys
from typing import Sequence

import numpy as np

from experiments import table1, table2
from experiments.grid import report as R
from experiments.grid import tables
from experiments.grid.spec import GridConfig, TrainVariant, overrides

PAPER_KEY = "table11_noise_start_threshold_fashion_mnist"
THRESHOLDS = (None, 0.4, 0.6, 0.7)
METHODS = (table1.ORIGINAL, table1.GENIU_CPU, table1.GENIU_PAPER)


def label(t: float | None) -> str:
  """The paper's name of a threshold (`none`, `0.4`, ...)."""
  return "none" if t is None else f"{t:g}"


def variants(base: tuple = ()) -> tuple[TrainVariant, ...]:
  # `none` adds no field, so its cells are the default training's (Table 1's).
  return tuple(TrainVariant(label(t), overrides(**dict(base), **(
      {} if t is None else {"noise_start_acc": t}))) for t in THRESHOLDS)


def get_config(variant: str = "cpu", seeds: Sequence[int] | None = None,
               classes: Sequence[int] | None = None) -> GridConfig:
  if variant == "smoke":
    return GridConfig(name="table11", preset="smoke", datasets=(("fashion_mnist", "embedded"),),
                      forget_sets=tables.single_classes(classes, (9,)),
                      seeds=tuple(seeds or (0,)),
                      train_variants=variants(table2.SMOKE_VARIANT.overrides), methods=METHODS)
  if variant in ("cpu", "paper"):
    return GridConfig(name="table11", preset=variant, datasets=(table1.FASHION_MNIST,),
                      forget_sets=tables.single_classes(
                          classes, (9,) if variant == "cpu" else range(10)),
                      seeds=tuple(seeds or ((0, 1, 2) if variant == "cpu" else range(5))),
                      validation_per_class=500, train_variants=variants(), methods=METHODS)
  raise ValueError(f"unknown config {variant!r}")


_paper_of = tables.geniu_row_lookup(PAPER_KEY)


def table11(records, cfg) -> R.Section:
  rs = [r for r in records if r["dataset"] == "fashion_mnist"]
  section = tables.settings_table(
      rs, cfg, setting_of=lambda r: r["train_variant"],
      settings=[v.label for v in cfg.train_variants], paper_of=_paper_of, setting_name="t",
      note=("t: the classifier's training accuracy at which prompts, selection and generator "
            "start (`none`: the first epoch). Mean ± std over every record of a t. The "
            "paper's GENIU is Eq. 10 with B = 1 (`geniu_paper`), every class, 5 seeds."))
  return section


def noise_start(records, cfg) -> R.Section:
  """From the originals' histories: the epoch the noise started, generator epochs."""
  originals = [r for r in records if r["method"] == "original"
               and isinstance((r.get("info") or {}).get("history"), list)]
  rows, csv_rows = [], []
  for v in cfg.train_variants:
    rs = [r for r in originals if r["train_variant"] == v.label]
    if not rs:
      continue
    starts = [_start_epoch(r["info"]["history"]) for r in rs]
    gen = [((r["info"].get("checks") or {}).get("generator_epochs")) for r in rs]
    final = [r["info"]["history"][-1]["train_acc"] for r in rs if r["info"]["history"]]
    never = sum(s is None for s in starts)
    start, gens, acc = R.stat(starts), R.stat(gen), R.stat(final)
    rows.append([v.label, len(rs), R.fmt(start, 1), never, R.fmt(gens, 1), R.fmt(acc, 3)])
    csv_rows.append({"t": v.label, "runs": len(rs), "start_epoch": start and start.mean,
                     "never_started": never, "generator_epochs": gens and gens.mean,
                     "final_train_acc": acc and acc.mean,
                     "epochs": len(rs[0]["info"]["history"])})
  md = R.markdown_table(["t", "runs", "first noise epoch", "runs never started",
                         "generator epochs", "final train acc"], rows)
  return R.Section(md + "\n\nEpochs count from 1; generator epochs: epochs in which every "
                   "prompt was classified correctly, so the generator trained.", csv_rows)


def _start_epoch(history: list[dict]) -> int | None:
  started = [row["epoch"] for row in history if row.get("noise_started", True)]
  return int(np.min(started)) if started else None


VIEWS = (R.View("Table 11", table11), R.View("Table 11 noise start", noise_start))


def main(argv: Sequence[str] | None = None) -> int:
  return tables.main(get_config, VIEWS, argv, description=__doc__.splitlines()[0])


if __name__ == "__main__":
  sys.exit(main())
