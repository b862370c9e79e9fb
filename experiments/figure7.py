"""Figure 7 / Appendix G.3 of GENIU (arXiv 2406.07885): impact of the unlearning rounds.

The paper records the unlearned model's accuracy on the forgotten and the
retained classes' test data after every round of in-batch tuning: Acc_f
falls to zero within the first rounds while Acc_r dips, then recovers and
levels off. Here the analysis `tuning_curve_<k>` runs GENIU's in-batch tuning
on a cell's original, with one GENIU setting's rounds, learning rate and
objective, as ONE jitted scan (`geniu_jax.geniu.unlearn.tuning_snapshots`,
data-free: the original's proxies only), keeps the parameters after every k
rounds, and scores each snapshot on the test split (and the validation
hold-out, where the cell has one): only the evaluation reads data. Its
record holds the curves; its Acc_r / Acc_f are those of the last round,
i.e. of the GENIU setting itself (no stop rule). k is the config's
`curve_every`, carried in the analysis's name so that records of another k
are other records.

The figure draws Acc_r and Acc_f against the round, one line per setting,
with Retrain's level (a dashed line) where the store has Retrain's record for
the cell (`retrain` is in the config; `--methods` may leave it out).

    python -m experiments.figure7 --config cpu --workdir experiments/results/figure7 \\
        --originals runs/originals
    python -m experiments.figure7 --config cpu --workdir experiments/results/figure7 --report

`cpu`: Fashion-MNIST, class 9 forgotten, seed 0 (`--seeds S ...` /
`--classes K ...` replace them; pass the same to `--report`); Table 1's cell,
so `--originals runs/originals` reuses its original. The settings
`geniu_paper` (Eq. 10, B = 1, 100 rounds) and `geniu` (the cpu
preset's setting, B = 5, 150 rounds), every 5 rounds: 20 + 12 snapshots,
each scored on 10,000 test and 5,000 validation images, about 1.5 min on a
2-core CPU; Retrain about 3.5 min; ~5 min more if the original is not
trained yet. `paper`: Fashion-MNIST and MNIST at the paper's schedule, every
round (an accelerator job). `smoke`: the embedded Fashion-MNIST subset,
every 10 rounds; 1-1.5 min on two busy CPU cores, mostly compilation.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Sequence

import jax
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
from geniu_jax.geniu.generator import make_proxies
from geniu_jax.models import functional as F

SETTINGS = (table1.GENIU_PAPER, table1.GENIU_CPU)
CURVE_METRICS = ("acc_r", "acc_f", "val_acc_r", "val_acc_f")

_proxies = jax.jit(lambda generator, z: make_proxies(generator.graphdef, generator.params, z))


def curve(ctx: runner.Context, every: int) -> tuple[F.SplitModel, dict]:
  """Acc_r / Acc_f after every `every` rounds of in-batch tuning (module docstring)."""
  cfg, original, forget = ctx.cfg, ctx.original, ctx.cell.forget
  if original.generator is None:
    raise ValueError("the original has no GENIU generator and prompts")
  cls = original.classifier
  num_classes = ctx.data.num_classes
  # The proxies the `geniu` method tunes on: the first min(B, stored) ranks.
  stored = original.prompts.shape[0] // num_classes
  per_class = min(cfg.proxies_per_class, stored)
  prompts = prompt_lib.first_ranks(jnp.asarray(original.prompts), num_classes, per_class)
  proxies = _proxies(original.generator, prompts)
  labels = prompt_lib.prompt_labels(num_classes, per_class)
  forget_ids = jnp.asarray(forget, jnp.int32)
  # The batch the `geniu` method tunes on.
  proxies, labels = sharpen_lib.tuning_batch(cls.graphdef, cls.params, cls.stats, proxies,
                                             labels, forget_ids, sharpen_lib.from_config(cfg))
  snapshots = unlearn_lib.tuning_snapshots(
      cls.params, cls.graphdef, cls.stats, proxies, labels, forget_ids,
      rounds=cfg.unlearn_rounds, lr=cfg.unlearn_lr, every=every,
      objective=unlearn_lib.objective_from_config(cfg))
  count = cfg.unlearn_rounds // every
  models = [cls] + [F.SplitModel(cls.graphdef, jax.tree.map(lambda a, i=i: a[i], snapshots),
                                 cls.stats) for i in range(count)]
  scores = [runner.score(m, ctx.data, forget) for m in models]
  curves = {m: [s[m] for s in scores] for m in CURVE_METRICS if m in scores[0]}
  return models[-1], {"rounds": [every * i for i in range(count + 1)], "curves": curves,
                      "every": every, "proxies_per_class": per_class,
                      "objective": unlearn_lib.objective_from_config(cfg).describe()}


def curve_method(every: int) -> str:
  """The analysis `tuning_curve_<every>`, registered on first use."""
  name = f"tuning_curve_{every}"
  if name not in runner.ANALYSES:
    runner.register_analysis(name)(functools.partial(curve, every=every))
  return name


def methods(every: int) -> tuple[MethodSpec, ...]:
  """A curve per GENIU setting (label `curve_<setting>`), then Retrain."""
  curves = tuple(MethodSpec(f"curve_{s.label}", curve_method(every), s.overrides)
                 for s in SETTINGS)
  return curves + (table1.RETRAIN,)


def get_config(variant: str = "cpu", seeds: Sequence[int] | None = None,
               classes: Sequence[int] | None = None) -> GridConfig:
  """`seeds` / `classes` (one forgotten class per cell) replace the defaults."""
  forget_sets = tables.single_classes(classes, (9,))
  if variant == "smoke":
    return GridConfig(name="figure7", preset="smoke",
                      datasets=(("fashion_mnist", "embedded"),), forget_sets=forget_sets,
                      seeds=tuple(seeds or (0,)), train_variants=(table2.SMOKE_VARIANT,),
                      curve_every=10, methods=methods(10))
  if variant == "cpu":
    return GridConfig(name="figure7", preset="cpu", datasets=(table1.FASHION_MNIST,),
                      forget_sets=forget_sets, seeds=tuple(seeds or (0,)),
                      validation_per_class=500, curve_every=5, methods=methods(5))
  if variant == "paper":
    return GridConfig(name="figure7", preset="paper",
                      datasets=(table1.FASHION_MNIST, table1.MNIST), forget_sets=forget_sets,
                      seeds=tuple(seeds or (0,)), validation_per_class=500, curve_every=1,
                      methods=methods(1))
  raise ValueError(f"unknown config {variant!r}")


# --- the report -------------------------------------------------------------

def _curve_records(records) -> list[dict]:
  return [r for r in records if isinstance(r.get("info", {}).get("curves"), dict)]


def _retrain(records, cell_records) -> dict | None:
  originals = {r["original"] for r in cell_records}
  return next((r for r in records if r.get("registry_method") == "retrain"
               and r["original"] in originals), None)


def figure7(records, cfg) -> R.Section:
  curves = _curve_records(records)
  cells = R.group(curves, "dataset", "forget", "seed")
  rows, csv_rows = [], []
  for (dataset, forget, seed), rs in cells.items():
    retrain = _retrain(records, rs)
    for r in rs:
      c, rounds = r["info"]["curves"], r["info"]["rounds"]
      for i, rnd in enumerate(rounds):
        csv_rows.append({"dataset": dataset, "forget": forget[0], "seed": seed,
                         "method": r["method"], "round": rnd,
                         **{m: c[m][i] for m in CURVE_METRICS if m in c},
                         "retrain_acc_r": retrain and retrain.get("acc_r"),
                         "retrain_acc_f": retrain and retrain.get("acc_f")})
      first_zero = next((rnd for rnd, f in zip(rounds, c["acc_f"]) if f == 0.0), None)
      rows.append([dataset, forget[0], seed, r["method"], f"{c['acc_r'][0]:.4f}",
                   f"{min(c['acc_r']):.4f} (round {rounds[int(np.argmin(c['acc_r']))]})",
                   f"{c['acc_r'][-1]:.4f}", f"{c['acc_f'][-1]:.4f}",
                   "-" if first_zero is None else first_zero,
                   "-" if retrain is None else f"{retrain['acc_r']:.4f} / {retrain['acc_f']:.4f}"])

  def figure(out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(cells), 2, figsize=(9, 3.2 * len(cells)), squeeze=False)
    for row, ((dataset, forget, seed), rs) in enumerate(cells.items()):
      retrain = _retrain(records, rs)
      for col, (metric, name) in enumerate((("acc_r", "Acc_r (retained classes)"),
                                            ("acc_f", "Acc_f (forgotten class)"))):
        ax = axes[row][col]
        for i, r in enumerate(rs):
          ax.plot(r["info"]["rounds"], r["info"]["curves"][metric], marker=".",
                  color=f"C{i}", label=r["method"])
        if retrain is not None and retrain.get(metric) is not None:
          ax.axhline(retrain[metric], color="gray", linestyle="--", label="retrain")
        ax.set_xlabel("in-batch tuning round")
        ax.set_ylabel(name)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{dataset}, class {forget[0]} forgotten, seed {seed}", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Figure 7: impact of the unlearning rounds (test split)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)

  md = R.markdown_table(["dataset", "class", "seed", "setting", "Acc_r round 0", "lowest Acc_r",
                         "final Acc_r", "final Acc_f", "first round Acc_f = 0",
                         "retrain Acc_r / Acc_f"], rows)
  return R.Section(md + (
      "\n\nTest split; round 0 is the original. The CSV has every evaluated round, with the "
      "validation scores where the cell holds validation images. Paper (Figure 7): Acc_f "
      "drops to zero within the first rounds while Acc_r dips slightly, then Acc_r rises "
      "and levels off."), csv_rows, figure)


VIEWS = (R.View("Figure 7", figure7),)



def main(argv: Sequence[str] | None = None) -> int:
  return tables.main(get_config, VIEWS, argv, description=__doc__.splitlines()[0])


if __name__ == "__main__":
  sys.exit(main())
