"""bfloat16 against float32: accuracy and time of training and of GENIU's unlearning.

`Config.precision = "bfloat16"` computes the classifier in bfloat16 with
float32 parameters, optimizer state and BatchNorm statistics (mixed
precision; `geniu_jax.models.allcnn`). Two questions, on Table 1's cells:

* unlearning in bfloat16 on a float32 original (`geniu_bf16`) against the
  same setting in float32 (`geniu`): Acc_r, Acc_f and the in-loop time;
* training in bfloat16 (the `bf16` training variant: originals, and GENIU's
  prompts and generator, trained in bfloat16) then unlearning in bfloat16.

    python -m experiments.precision --config cpu --workdir experiments/results/precision \\
        --originals runs/originals
    python -m experiments.precision --config cpu --workdir experiments/results/precision --report

`cpu`: Fashion-MNIST, classes 0, 4 and 9, seeds 0 and 1 (the float32
originals are Table 1's; `--classes` / `--seeds` replace them); about 5 min
per bfloat16 original and 1 min per unlearning on a 2-core CPU. `smoke`: the
embedded subset, plumbing only.
"""

from __future__ import annotations

import sys
from typing import Sequence

import numpy as np

from experiments import table1, table2
from experiments.grid import report as R
from experiments.grid import tables
from experiments.grid.spec import GridConfig, MethodSpec, TrainVariant, overrides

BF16 = TrainVariant("bf16", overrides(precision="bfloat16"))
GENIU_BF16 = MethodSpec("geniu_bf16", "geniu",
                        table1.GENIU_CPU.overrides + overrides(precision="bfloat16"))
METHODS = (table1.ORIGINAL, table1.GENIU_CPU, GENIU_BF16)


def get_config(variant: str = "cpu", seeds: Sequence[int] | None = None,
               classes: Sequence[int] | None = None) -> GridConfig:
  if variant == "smoke":
    base = table2.get_config("smoke")
    return base.replace(name="precision", train_variants=(table2.SMOKE_VARIANT,),
                        methods=METHODS)
  base = table1.get_config(variant)
  return base.replace(name="precision", datasets=(table1.FASHION_MNIST,),
                      forget_sets=tables.single_classes(classes, (0, 4, 9)),
                      seeds=tuple(seeds or (0, 1)), train_variants=(TrainVariant(), BF16),
                      methods=METHODS)


def precision_table(records, cfg) -> R.Section:
  rows, csv_rows = [], []
  scored = tables.scored(records)
  for (variant, label), rs in sorted(R.group(scored, "train_variant", "method").items(),
                                     key=lambda kv: (kv[0][0] != "default", kv[0][1])):
    acc_r, acc_f = R.stat(r["acc_r"] for r in rs), R.stat(r["acc_f"] for r in rs)
    ms = [r["unlearn_ms"] for r in rs if r.get("unlearn_ms") is not None]
    train_s = [r["info"].get("train_s") for r in rs if r["info"].get("train_s")]
    row = {"training": variant, "method": label, "cells": len(rs), "acc_r": acc_r.mean,
           "acc_f": acc_f.mean, "worst_acc_f": acc_f.max,
           "unlearn_ms": float(np.median(ms)) if ms else None,
           "train_s": float(np.median(train_s)) if train_s else None}
    csv_rows.append(row)
    rows.append([variant, label, len(rs), R.fmt(acc_r), R.fmt(acc_f), f"{acc_f.max:.4f}",
                 "" if row["unlearn_ms"] is None else f"{row['unlearn_ms']:.0f}",
                 "" if row["train_s"] is None else f"{row['train_s']:.0f}"])
  md = R.markdown_table(["training", "method", "cells", "Acc_r", "Acc_f", "worst Acc_f",
                         "unlearn ms (median)", "training s (median)"], rows)
  return R.Section(md + "\n\nTest split; mean ± std over cells. `geniu_bf16` unlearns in "
                   "bfloat16; `training bf16` originals were trained in bfloat16. Times are "
                   "wall clock on the machine the README names, with whatever else ran "
                   "there.", csv_rows)


VIEWS = (R.View("Precision", precision_table),)


def main(argv: Sequence[str] | None = None) -> int:
  return tables.main(get_config, VIEWS, argv, description=__doc__.splitlines()[0])


if __name__ == "__main__":
  sys.exit(main())
