"""Figure 5 / Appendix E of GENIU (arXiv 2406.07885): what GENIU adds to a training epoch.

GENIU trains its prompts, selects supervision samples and trains its
generator inside the training phase (Alg. 1). The paper reports the share of
each in a training epoch (Figure 5): prompts and generator about 10% each,
the selection about 20% on the MNIST-style datasets.

The analysis `training_cost` times, on a cell's training split with its
original's config, one piece of an epoch at a time, with the library's own
jitted steps (`geniu_jax.geniu`):

* `classifier_epoch`: one epoch of `train.make_train_step`, host loop over
  the shuffled batches, as `train.train` runs it;
* `selection_pass`: `selection.select_by_pass`, the paper's extra eval-mode
  pass over the training set (Alg. 1, line 5; `selection_source="pass"`);
* `selection_running`: the running top-B the cpu preset uses instead
  (`selection_source="epoch"`): an epoch of the train step WITH the top-B
  update minus one without it (`classifier_epoch_topb - classifier_epoch`;
  it can come out slightly negative, within the timing noise);
* `prompts`: the `prompt_steps` Adam steps on every prompt (Eq. 8,
  `prompts.train_prompts`);
* `generator`: the `generator_steps` steps of the VAE (Eq. 4-6,
  `generator.train_generator`) on the selected samples.

Each program is compiled ahead of time (`jit(f).lower(...).compile()`, the
compilation timed apart), run once to warm up, then timed `REPEATS` times
(by preset); the record keeps every time and the medians. The classifier
starts from the original's parameters (copies: the train step donates its
state); timings do not depend on the values. In `train.train` the prompts,
the gate, the selection and the generator run as one jitted program with a
`lax.cond`; timed apart they add up to it, less one dispatch.

    python -m experiments.figure5 --config cpu --workdir experiments/results/figure5 \\
        --originals runs/originals
    python -m experiments.figure5 --config cpu --workdir experiments/results/figure5 --report

`cpu`: Fashion-MNIST and MNIST, class 9 forgotten, seed 0 (`--seeds S ...` /
`--classes K ...` replace them; pass the same to `--report`): Table 1's
cells, so `--originals runs/originals` reuses its originals
(`--existing-originals`: only those). Per cell about 3-4 min on a 2-core CPU
(8 classifier epochs of ~15-20 s: warm-up + 3 repeats, with and without the
top-B update, at the cpu preset's winograd lowering; the rest and the
compilation ~1 min), plus ~5 min per original not yet trained: 7-17 min in
all. Timings on a busy machine are noisy; run it alone. `paper`: 5 repeats
at the paper's sizes (an accelerator job). `smoke`: the embedded
Fashion-MNIST subset, about 1 min on two busy CPU cores.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import table1, table2
from experiments.grid import report as R
from experiments.grid import runner
from experiments.grid import tables
from experiments.grid.spec import GridConfig, MethodSpec
from geniu_jax.geniu import generator as gen_lib
from geniu_jax.geniu import prompts as prompt_lib
from geniu_jax.geniu import selection as sel_lib
from geniu_jax.geniu import train as train_lib
from geniu_jax.methods import common

REPEATS = {"smoke": 1, "cpu": 3, "paper": 5}
TRAINING_COST = MethodSpec("training_cost", "training_cost")
# The stacked parts of an epoch, bottom to top, with the paper's orange for
# the selection.
PARTS = (("classifier_epoch", "classifier epoch", "tab:blue"),
         ("selection", "supervision selection", "tab:orange"),
         ("prompts", "noise prompts (Eq. 8)", "tab:green"),
         ("generator", "generator (Eq. 4-6)", "tab:red"))
SELECTIONS = (("pass", "selection_pass", "extra pass (Alg. 1)"),
              ("running", "selection_running", "running top-B"))


def get_config(variant: str = "cpu", seeds: Sequence[int] | None = None,
               classes: Sequence[int] | None = None) -> GridConfig:
  """`seeds` / `classes` (one forgotten class per cell) replace the defaults."""
  forget_sets = tables.single_classes(classes, (9,))
  if variant == "smoke":
    return GridConfig(name="figure5", preset="smoke",
                      datasets=(("fashion_mnist", "embedded"),), forget_sets=forget_sets,
                      seeds=tuple(seeds or (0,)), train_variants=(table2.SMOKE_VARIANT,),
                      methods=(TRAINING_COST,))
  if variant == "cpu":
    return GridConfig(name="figure5", preset="cpu",
                      datasets=(table1.FASHION_MNIST, table1.MNIST), forget_sets=forget_sets,
                      seeds=tuple(seeds or (0,)), validation_per_class=500,
                      methods=(TRAINING_COST,))
  if variant == "paper":
    return GridConfig(name="figure5", preset="paper",
                      datasets=(table1.FASHION_MNIST, table1.MNIST), forget_sets=forget_sets,
                      seeds=tuple(seeds or (0,)), validation_per_class=500,
                      methods=(TRAINING_COST,))
  raise ValueError(f"unknown config {variant!r}")


# --- the analysis -----------------------------------------------------------

def _copy(tree):
  return jax.tree.map(jnp.array, tree)


def time_repeats(run: Callable[[], Any], repeats: int) -> list[float]:
  """Seconds of `repeats` calls of `run` (which blocks on its results), after one warm-up."""
  run()
  out = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    run()
    out.append(time.perf_counter() - t0)
  return out


def _compile(jitted, *args):
  t0 = time.perf_counter()
  exe = jitted.lower(*args).compile()
  return exe, time.perf_counter() - t0


@runner.register_analysis("training_cost")
def training_cost(ctx: runner.Context) -> tuple[None, dict]:
  """Seconds of each part of a GENIU training epoch on this cell (module docstring)."""
  cfg, data, original = ctx.cfg, ctx.data, ctx.original
  if original.generator is None:
    raise ValueError("the original has no GENIU generator and prompts")
  repeats = common.by_preset(cfg, REPEATS, method=None)
  num_classes = data.num_classes
  per_class = int(original.prompts.shape[0]) // num_classes
  x_all = jnp.asarray(data.x_train, jnp.float32)
  y_all = jnp.asarray(data.y_train, jnp.int32)
  n = int(y_all.shape[0])
  batch = min(cfg.batch_size, n)
  steps = n // batch
  order = common.host_rng(ctx.key).permutation(n)[: steps * batch].reshape(steps, batch)
  cls = original.classifier
  frozen = (cls.graphdef, cls.params, cls.stats)
  compile_s, seconds = {}, {}

  # Classifier epochs, without and with the running top-B (the train step
  # donates its state, so each program carries its own copy along).
  cls_opt = train_lib.classifier_optimizer(cfg, cfg.epochs * steps)
  for name, selection in (("classifier_epoch", None), ("classifier_epoch_topb", cfg.selection)):
    step = train_lib.make_train_step(cls.graphdef, cls_opt, selection, None)
    carry = {"state": train_lib.ClassifierState(_copy(cls.params), _copy(cls.stats),
                                                cls_opt.init(cls.params))}
    topb0 = sel_lib.init_topb(num_classes, per_class) if selection else None
    exe, compile_s[name] = _compile(step, carry["state"], topb0, None, x_all, y_all,
                                    jnp.asarray(order[0], jnp.int32))

    def epoch(exe=exe, carry=carry, with_topb=selection is not None):
      topb = sel_lib.init_topb(num_classes, per_class) if with_topb else None
      state = carry["state"]
      for idx in order:
        state, topb, _, _, _ = exe(state, topb, None, x_all, y_all, jnp.asarray(idx, jnp.int32))
      carry["state"] = jax.block_until_ready(state)

    seconds[name] = time_repeats(epoch, repeats)

  prompt_opt = optax.adam(cfg.prompt_lr)
  prompts_fn = jax.jit(lambda classifier, state: prompt_lib.train_prompts(
      state, classifier, num_classes, prompt_opt, cfg.prompt_steps))
  pstate = prompt_lib.PromptState(jnp.asarray(original.prompts),
                                  prompt_opt.init(jnp.asarray(original.prompts)))
  exe, compile_s["prompts"] = _compile(prompts_fn, frozen, pstate)
  seconds["prompts"] = time_repeats(lambda: jax.block_until_ready(exe(frozen, pstate)), repeats)

  pass_fn = jax.jit(lambda classifier, x, y: sel_lib.select_by_pass(
      classifier, x, y, num_classes, per_class, cfg.selection))
  exe, compile_s["selection_pass"] = _compile(pass_fn, frozen, x_all, y_all)
  seconds["selection_pass"] = time_repeats(
      lambda: jax.block_until_ready(exe(frozen, x_all, y_all)), repeats)
  targets = x_all[sel_lib.supervision_indices(exe(frozen, x_all, y_all))]

  gen = original.generator
  gen_opt = optax.adam(cfg.generator_lr)
  gen_fn = jax.jit(lambda state, z, x, key: gen_lib.train_generator(
      state, gen.graphdef, z, x, key, gen_opt, cfg.generator_steps, cfg.kl_weight))
  gstate = gen_lib.GeneratorState(gen.params, gen_opt.init(gen.params))
  z = jnp.asarray(original.prompts)
  exe, compile_s["generator"] = _compile(gen_fn, gstate, z, targets, ctx.key)
  seconds["generator"] = time_repeats(
      lambda: jax.block_until_ready(exe(gstate, z, targets, ctx.key)), repeats)

  ms = {k: 1e3 * statistics.median(v) for k, v in seconds.items()}
  ms["selection_running"] = ms["classifier_epoch_topb"] - ms["classifier_epoch"]
  return None, {"ms": ms, "samples_ms": {k: [1e3 * s for s in v] for k, v in seconds.items()},
                "compile_ms_by_part": {k: 1e3 * s for k, s in compile_s.items()},
                "repeats": repeats, "train_samples": n, "batch_size": batch,
                "steps_per_epoch": steps, "proxies_per_class": per_class,
                "prompt_steps": cfg.prompt_steps, "generator_steps": cfg.generator_steps,
                "lowering": cfg.lowering,
                "timing": "median wall after a warm-up, AOT compile apart"}


# --- the report -------------------------------------------------------------

def epoch_parts(ms: dict, selection: str) -> dict[str, float]:
  """Seconds of each stacked part of an epoch with the `pass` or `running` selection."""
  key = dict((s, k) for s, k, _ in SELECTIONS)[selection]
  return {"classifier_epoch": ms["classifier_epoch"] / 1e3,
          "selection": max(ms[key], 0.0) / 1e3,
          "prompts": ms["prompts"] / 1e3, "generator": ms["generator"] / 1e3}


def _cost_records(records) -> list[dict]:
  return [r for r in records if isinstance(r.get("info", {}).get("ms"), dict)]


def _mean_parts(rs: list[dict], selection: str) -> dict[str, float]:
  parts = [epoch_parts(r["info"]["ms"], selection) for r in rs]
  return {k: float(np.mean([p[k] for p in parts])) for k, _, _ in PARTS}


def figure5(records, cfg) -> R.Section:
  groups = R.group(_cost_records(records), "dataset")
  rows, csv_rows, bars = [], [], []
  for (dataset,), rs in groups.items():
    for selection, _, label in SELECTIONS:
      parts = _mean_parts(rs, selection)
      total = sum(parts.values())
      bars.append((f"{dataset}\n{label}", parts))
      rows.append([dataset, label] + [f"{parts[k]:.3f} ({parts[k] / total:.0%})"
                                      for k, _, _ in PARTS] + [f"{total:.3f}", len(rs)])
      csv_rows.append({"dataset": dataset, "selection": selection, "n": len(rs),
                       **{f"{k}_s": parts[k] for k, _, _ in PARTS},
                       **{f"{k}_share": parts[k] / total for k, _, _ in PARTS},
                       "epoch_s": total})

  def figure(out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.5 * max(len(bars), 2) + 2.5, 4))
    xs = np.arange(len(bars))
    bottom = np.zeros(len(bars))
    for key, label, color in PARTS:
      heights = np.asarray([parts[key] for _, parts in bars])
      ax.bar(xs, heights, 0.6, bottom=bottom, label=label, color=color)
      bottom += heights
    ax.set_xticks(xs, [name for name, _ in bars], fontsize=7)
    ax.set_ylabel("seconds per training epoch")
    ax.set_title("Figure 5: time costs in the training phase (median per epoch)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)

  md = R.markdown_table(["dataset", "selection"] + [label for _, label, _ in PARTS]
                        + ["epoch s", "n"], rows)
  return R.Section(md + (
      "\n\nSeconds (share of the epoch), mean over runs of each part's median. The "
      "selection is either the paper's extra eval-mode pass or the running top-B over "
      "the epoch's logits (an epoch with the update minus one without; negative "
      "differences count as 0). Paper (Figure 5, MNIST-style datasets): prompts and "
      "generator about 10% each, the selection about 20%."), csv_rows, figure)


def compile_table(records, cfg) -> R.Section:
  rows, csv_rows = [], []
  for r in _cost_records(records):
    comp = r["info"].get("compile_ms_by_part", {})
    rows.append([r["dataset"], r["seed"]] + [f"{comp.get(k, float('nan')) / 1e3:.1f}"
                                             for k in sorted(comp)])
    csv_rows.append({"dataset": r["dataset"], "seed": r["seed"],
                     **{f"{k}_compile_s": v / 1e3 for k, v in comp.items()},
                     "lowering": r["info"].get("lowering"), "device": r.get("device")})
  names = sorted({k for r in _cost_records(records)
                  for k in r["info"].get("compile_ms_by_part", {})})
  md = R.markdown_table(["dataset", "seed"] + [f"{k} s" for k in names], rows)
  return R.Section(md + "\n\nCompilation, paid once per process (not in Figure 5).", csv_rows)


VIEWS = (R.View("Figure 5", figure5), R.View("Compilation", compile_table))



def main(argv: Sequence[str] | None = None) -> int:
  return tables.main(get_config, VIEWS, argv, description=__doc__.splitlines()[0])


if __name__ == "__main__":
  sys.exit(main())
