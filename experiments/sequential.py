"""Sequential unlearning requests against one joint request (GENIU's stored artifacts reused).

GENIU keeps its prompts and generator so that later requests need no data
(abstract). A request forgets the union of what was forgotten before and
what it names (`geniu_jax.forget_requests`), as `geniu unlearn` does: the
unlearned checkpoint no longer holds the forgotten classes' prompts, so a
later request tunes on the remaining classes' proxies with the earlier
classes kept forgotten through the retained targets and the sharpened rows
(`geniu.unlearn.unlearn`, `dropped`). On each original
of Table 1 (majority class k forgotten first), the analysis `sequential`
forgets k, then k+1, then k+2 (mod K), each request tuning the previous
request's model with GENIU's setting; `joint` forgets the three at once from
the original. Both record, after each request, Acc_r over the classes not
forgotten yet and the accuracy of every forgotten class (validation and
test split).

    python -m experiments.sequential --config cpu --workdir experiments/results/sequential \\
        --originals runs/originals --existing-originals
    python -m experiments.sequential --config cpu --workdir experiments/results/sequential --report

`cpu`: Fashion-MNIST and MNIST, every class as the first request, seed 0
(Table 1's originals); three tunings and one joint tuning per original,
about 1-2 min per original on a 2-core CPU. `smoke`: the embedded subset.
"""

from __future__ import annotations

import functools
import sys
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from experiments import table1, table2
from experiments.grid import report as R
from experiments.grid import runner
from experiments.grid import tables
from experiments.grid.spec import GridConfig, MethodSpec
from geniu_jax.geniu import prompts as prompt_lib
from geniu_jax.geniu import sharpen as sharpen_lib
from geniu_jax.geniu import unlearn as unlearn_lib
from geniu_jax.models import functional as F

REQUESTS = 3
SEQUENTIAL = MethodSpec("sequential", "sequential", table1.GENIU_CPU.overrides)
JOINT = MethodSpec("joint", "joint", table1.GENIU_CPU.overrides)


def get_config(variant: str = "cpu", seeds: Sequence[int] | None = None,
               classes: Sequence[int] | None = None) -> GridConfig:
  # Smoke: Table 2's cell (class 9 forgotten), whose original other smoke tests share.
  base = table2.get_config(variant) if variant == "smoke" else table1.get_config(variant)
  if classes is not None:
    base = base.replace(forget_sets=tables.single_classes(classes, ()))
  return base.replace(name="sequential", seeds=tuple(seeds or (0,)),
                      methods=(table1.ORIGINAL, SEQUENTIAL, JOINT))


def requests_of(first: int, num_classes: int) -> list[list[int]]:
  """The cumulative forget sets: [k], [k, k+1], [k, k+1, k+2] (mod K)."""
  order = [(first + i) % num_classes for i in range(REQUESTS)]
  return [sorted(order[:i + 1]) for i in range(REQUESTS)]


@functools.lru_cache(maxsize=None)
def _program(cls_graphdef, gen_graphdef, rounds: int, lr: float, stop, objective, sharpen):
  """One jitted unlearning program per setting: every request and original of a
  setting reuses it (a fresh `make_unlearn_fn` per call would retrace it)."""
  return unlearn_lib.make_unlearn_fn(cls_graphdef, gen_graphdef, rounds=rounds, lr=lr,
                                     stop_forget_prob=stop, objective=objective,
                                     sharpen=sharpen)


def tune(ctx: runner.Context, model: F.SplitModel, forget: list[int],
          dropped: list[int]) -> F.SplitModel:
  """One GENIU request on `model` with the original's artifacts: forget
  `forget` (their prompts still held) with the prompts of `dropped`
  (forgotten earlier) gone, as `geniu unlearn` stores them."""
  ck, cfg = ctx.original, ctx.cfg
  k = ctx.data.num_classes
  per_class = min(cfg.proxies_per_class, ck.prompts.shape[0] // k)
  prompts = prompt_lib.first_ranks(jnp.asarray(ck.prompts), k, per_class)
  prompts = jnp.asarray(prompt_lib.drop_classes(prompts, k, [], dropped))
  fn = _program(model.graphdef, ck.generator.graphdef, cfg.unlearn_rounds, cfg.unlearn_lr,
                cfg.stop_forget_prob, unlearn_lib.objective_from_config(cfg),
                sharpen_lib.from_config(cfg))
  params, _ = fn(model.params, model.stats, ck.generator.params, prompts,
                 jnp.asarray(forget, jnp.int32),
                 jnp.asarray(dropped, jnp.int32) if dropped else None)
  return F.SplitModel(model.graphdef, params, model.stats)


def _accuracies(ctx: runner.Context, model: F.SplitModel, forget: list[int]) -> dict:
  out = {}
  for split, x, y in (("", ctx.data.x_test, ctx.data.y_test),
                      ("val_", ctx.data.x_val, ctx.data.y_val)):
    if x is None:
      continue
    pred = runner.predictions(model, x)
    kept = ~np.isin(y, forget)
    out[split + "acc_r"] = float((pred[kept] == y[kept]).mean())
    out[split + "acc_f_by_class"] = {str(c): float((pred[y == c] == c).mean()) for c in forget}
  return out


@runner.register_analysis("sequential")
def sequential(ctx: runner.Context):
  model, steps, dropped = ctx.original.classifier, [], []
  for forget in requests_of(ctx.cell.forget[0], ctx.data.num_classes):
    new = [c for c in forget if c not in dropped]
    model = tune(ctx, model, new, dropped)
    steps.append({"forget": forget, **_accuracies(ctx, model, forget)})
    dropped = forget
  return model, {"steps": steps}


@runner.register_analysis("joint")
def joint(ctx: runner.Context):
  forget = requests_of(ctx.cell.forget[0], ctx.data.num_classes)[-1]
  model = tune(ctx, ctx.original.classifier, forget, [])
  return model, {"steps": [{"forget": forget, **_accuracies(ctx, model, forget)}]}


def sequential_table(records, cfg) -> R.Section:
  """Mean over originals, per dataset: after each request, Acc_r and the
  accuracy of the first, second and third forgotten class."""
  rows, csv_rows = [], []
  for (dataset, label), rs in R.group(records, "dataset", "method").items():
    if label not in ("sequential", "joint"):
      continue
    offset = REQUESTS - 1 if label == "joint" else 0
    for i in range(len(rs[0]["info"]["steps"])):
      row = {"dataset": dataset, "method": label, "request": i + 1 + offset, "cells": len(rs)}
      for split in ("", "val_"):
        steps = [r["info"]["steps"][i] for r in rs if split + "acc_r" in r["info"]["steps"][i]]
        if not steps:
          continue
        row[split + "acc_r"] = float(np.mean([s[split + "acc_r"] for s in steps]))
        for j in range(REQUESTS):
          by_cell = [s[split + "acc_f_by_class"].get(str((r["forget"][0] + j)
                                                          % len(r["per_class"])))
                     for s, r in zip(steps, rs)]
          vals = [v for v in by_cell if v is not None]
          row[f"{split}acc_f_{j + 1}"] = max(vals) if vals else None
      csv_rows.append(row)
      rows.append([dataset, label, row["request"], row["cells"], R.fmt_paper(row.get("acc_r"))]
                  + [R.fmt_paper(row.get(f"acc_f_{j + 1}")) for j in range(REQUESTS)])
  order = sorted(range(len(rows)), key=lambda i: (rows[i][0], rows[i][1] != "sequential",
                                                  rows[i][2]))
  rows, csv_rows = [rows[i] for i in order], [csv_rows[i] for i in order]
  md = R.markdown_table(["dataset", "setting", "after request", "originals", "Acc_r (mean)"]
                        + [f"worst Acc of forgotten class {j + 1}" for j in range(REQUESTS)],
                        rows)
  return R.Section(md + "\n\nTest split. Request i forgets class k+i-1 (k: the original's "
                   "majority) and keeps the earlier ones forgotten; `joint` forgets all three "
                   "in one request. Acc_r is over the classes not forgotten by then; a "
                   "forgotten class's accuracy is the worst over originals.", csv_rows)


VIEWS = (R.View("Sequential requests", sequential_table),)


def main(argv: Sequence[str] | None = None) -> int:
  return tables.main(get_config, VIEWS, argv, description=__doc__.splitlines()[0])


if __name__ == "__main__":
  sys.exit(main())
