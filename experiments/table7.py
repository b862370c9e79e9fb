"""Table 7 of GENIU (arXiv 2406.07885): two majority classes, 0 and 1, forgotten together.

Appendix C: classes 0 and 1 of each dataset keep all their training images,
every other class keeps r = 0.1 of them (§5), and the unlearning request
forgets both majority classes at once. One cell per dataset and seed trains
that original; every method runs on it: the original itself, Retrain, GENIU
as Table 1's two pinned settings (`geniu_paper`: Eq. 10, B = 1, 100 rounds;
`geniu`: the cpu preset's setting -- sharpened forgotten proxies, the
trained B, 150 rounds), GKT, UNSIR, I-R and Unrolling SGD (the last three
also in their published code's `reference` setting). Acc_f is the
accuracy on the test images of both forgotten classes, Acc_r on the other
eight. 500 training images per class are held out as a validation split, as
in Table 1 (`experiments.table1`), and every method is scored on it too.

    python -m experiments.table7 --config cpu --workdir experiments/results/table7 \
        --originals runs/originals [--seeds 0 1 2]
    python -m experiments.table7 --config cpu --workdir experiments/results/table7 --report

`cpu`: Fashion-MNIST and MNIST (`scripts/get_mnist.sh` -> data_cache/mnist),
seed 0 (`--seeds` sets others; give the same to `--report`): 2 cells x 11
methods. Two full classes make the split ~1.5x Table 1's, so an original
takes ~6.5 min on a 2-core CPU, GKT ~1.5 min, Retrain (8 minority classes)
~1 min, UNSIR, I-R, Unrolling and GENIU ~1 min together, the reference
settings ~2 min: about 12 min per cell, 25 min in all. `paper`: 5 seeds, the
paper's schedule (an accelerator job). `smoke`: the embedded Fashion-MNIST
subset at a test-friendly size (plumbing only), ~2.5 min on a busy 2-core
CPU, nearly all compilation.
"""

from __future__ import annotations

import sys
from typing import Sequence

from experiments import table1, table2
from experiments.grid import report as R
from experiments.grid import tables
from experiments.grid.spec import GridConfig, MethodSpec, overrides

FORGET = ((0, 1),)
# Each baseline in both settings: ours, and the published code's (`reference`),
# which is what the paper's baseline numbers came from.
BASE_METHODS = (table1.ORIGINAL, table1.RETRAIN, table1.GENIU_CPU, table1.GENIU_PAPER,
                *(MethodSpec(name, name) for name in table1.BASELINES))
# (The smoke config runs the base methods: the reference settings have tests of their own.)
METHODS = (*BASE_METHODS,
           *(MethodSpec(f"{name}_reference", name, overrides(baseline_setting="reference"))
             for name in table1.BASELINES if name in table1.REFERENCE_BASELINES))


def get_config(variant: str = "cpu", seeds: Sequence[int] | None = None) -> GridConfig:
  if variant == "smoke":
    return GridConfig(name="table7", preset="smoke", datasets=(("fashion_mnist", "embedded"),),
                      forget_sets=FORGET, seeds=tuple(seeds or (0,)),
                      train_variants=(table2.SMOKE_VARIANT,), methods=BASE_METHODS)
  if variant == "cpu":
    return GridConfig(name="table7", preset="cpu", datasets=(table1.FASHION_MNIST, table1.MNIST),
                      forget_sets=FORGET, seeds=tuple(seeds or (0,)), validation_per_class=500,
                      methods=METHODS)
  if variant == "paper":
    return GridConfig(name="table7", preset="paper",
                      datasets=(table1.FASHION_MNIST, table1.MNIST), forget_sets=FORGET,
                      seeds=tuple(seeds or range(5)), validation_per_class=500, methods=METHODS)
  raise ValueError(f"unknown config {variant!r}")


def _paper(dataset: str):
  table = R.paper()["table7_classes_0_and_1_majority_forgotten"].get(dataset, {})
  return lambda method, metric: table.get(metric, {}).get(method)


def table7(records, cfg) -> R.Section:
  groups = R.group(tables.scored(records), "dataset")
  sections = [R.accuracy_table(rs, cfg, f"{dataset}: test split", _paper(dataset),
                               note=_note(rs))
              for (dataset,), rs in groups.items()]
  return R.Section("\n\n".join(s.markdown for s in sections),
                   [dict(row, dataset=d) for s, (d,) in zip(sections, groups) for row in s.rows])


def _note(records) -> str:
  seeds = sorted({r["seed"] for r in records})
  return (f"Classes 0 and 1 forgotten together; mean ± std over seeds {seeds}. Acc_f: "
          "both forgotten classes' test images; worst Acc_f: the largest over seeds. "
          "Paper: 5 seeds, `paper` preset; its GENIU column is Eq. 10 with B = 1 "
          "(`geniu_paper`).")


def validation(records, cfg) -> R.Section:
  """The same on the held-out validation images (no paper numbers)."""
  groups = R.group([r for r in tables.scored(records) if r.get("val_acc_r") is not None],
                   "dataset")
  sections = [R.accuracy_table(rs, cfg, f"{dataset}: validation split",
                               lambda method, metric: None, prefix="val_")
              for (dataset,), rs in groups.items()]
  return R.Section("\n\n".join(s.markdown for s in sections) or "No validation split.",
                   [dict(row, dataset=d) for s, (d,) in zip(sections, groups) for row in s.rows])


VIEWS = (R.View("Table 7", table7), R.View("Table 7 validation", validation))


def main(argv: Sequence[str] | None = None) -> int:
  return tables.main(get_config, VIEWS, argv, description=__doc__.splitlines()[0],
                     classes=False)


if __name__ == "__main__":
  sys.exit(main())
