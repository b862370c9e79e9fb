"""Choosing GENIU's data-free unlearning setting across the whole protocol (validation only).

Every class of Fashion-MNIST and of MNIST as the forgotten majority, three
training runs each: the originals of `experiments.table1` (same cells, so
`--originals` shares them), trained on the training split minus 500 images
of every class. Each candidate setting below unlearns every original from
its proxies alone; the held-out images then score it. The test split is
scored too (the store keeps it) but the choice never reads it.

The criterion, fixed before any candidate was run:
  1. a setting passes when its worst validation Acc_f over every
     (dataset, class, run) is <= 0.01;
  2. among the passing settings, the best worst-case validation
     Acc_r / the original's Acc_r wins; ties go to the cheaper setting
     (fewer rounds);
  3. if none passes, the lowest worst-case Acc_f wins, and the report says
     the goal was missed.
The candidates are compared on the cells every candidate has; a setting that
failed (`FAILED`) is reported on the cells it ran on and runs on no new cell.

Candidates: the teacher-kept retained term and the margin forget loss
(`geniu.unlearn.Objective`), B = 5, varying the margin, the number of rounds,
Adam's learning rate and the sharpening of the forgotten proxies
(`geniu.sharpen`); `geniu_margin2` (60 rounds, no sharpening) is the setting
they are meant to improve on.

    python -m experiments.geniu_setting --config cpu --workdir experiments/results/geniu_setting \
        --originals runs/originals
    python -m experiments.geniu_setting --config cpu --workdir experiments/results/geniu_setting --report

At `cpu`: 60 originals (shared with Table 1) x the candidates; a candidate
costs 2-10 s of tuning plus ~3 s of scoring per original on a 2-core CPU.
"""

from __future__ import annotations

import functools
import sys
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from experiments import table1
from experiments.grid import main as grid_main
from experiments.grid import report as R
from experiments.grid import runner
from experiments.grid.spec import GridConfig, MethodSpec, overrides
from geniu_jax.geniu import sharpen as sharpen_lib
from geniu_jax.geniu.generator import make_proxies
from geniu_jax.geniu.prompts import prompt_labels
from geniu_jax.models import functional as F

PASS_ACC_F = 0.01


def candidate(margin: float, rounds: int, lr: float, sharpen: float | None = None,
              mode: str = "forgotten", steps: int = 30) -> MethodSpec:
  label = (f"geniu_m{margin:g}_r{rounds}_lr{lr:g}" + (f"_sharp{sharpen:g}" if sharpen else "")
           + ("_all" if mode == "all" else ""))
  return MethodSpec(label, "geniu", overrides(
      retain_target="teacher", forget_loss="margin", forget_margin=margin,
      unlearn_rounds=rounds, unlearn_lr=lr, stop_forget_prob=None, sharpen_target=sharpen,
      sharpen_mode=mode, sharpen_steps=steps))


# Every proxy sharpened toward the forgotten class, with retained anchors
# (`geniu.sharpen`, mode `all`), at the margin, Adam rate and sharpening
# target of the `forgotten`-mode setting it extends; 60 steps, because a
# proxy of another class has further to go than one of the class itself.
# Varied: the target.
CANDIDATES = (candidate(2.0, 150, 1e-3, 0.9, "all", 60),
              candidate(2.0, 150, 1e-3, 0.99, "all", 60))
# Settings that failed the criterion (worst validation Acc_f > 0.01 on some
# cell; more cells cannot lower a maximum). Their records stay in the store
# and in the report, on the cells they ran on; new cells run only the
# candidates. `geniu_margin2` is the setting the others are meant to improve
# on, and SHARPEN_FORGOTTEN_ONLY the `cpu` preset's before mode `all` passed;
# Table 1 runs both on the test split of every cell.
SHARPEN_FORGOTTEN_ONLY = candidate(2.0, 150, 1e-3, 0.9)
FAILED = (table1.GENIU_MARGIN2, SHARPEN_FORGOTTEN_ONLY, candidate(2.0, 60, 1e-3, 0.9, "all", 60),
          candidate(4.0, 300, 1e-3), candidate(2.0, 60, 4e-4, 0.99),
          candidate(2.0, 60, 4e-4, 0.999), candidate(2.0, 60, 4e-4, 0.9999),
          candidate(2.0, 150, 1e-3, 0.99))


DIAGNOSTICS = MethodSpec("proxy_diagnostics", "proxy_diagnostics")


def get_config(variant: str = "cpu") -> GridConfig:
  base = table1.get_config(variant)
  return base.replace(name="geniu_setting", methods=(
      table1.ORIGINAL, DIAGNOSTICS, BATCH_DIAGNOSTICS) + CANDIDATES, retired=FAILED)


@functools.partial(jax.jit, static_argnums=0)
def _penultimate(graphdef, params, stats, x):
  logits, acts = F.classifier_features(graphdef, params, stats, x)
  return jax.nn.softmax(logits), jnp.mean(acts[-1], axis=(1, 2))


@runner.register_analysis("proxy_diagnostics")
def proxy_diagnostics(ctx: runner.Context):
  """Where the forgotten class's proxies sit relative to its real images, as the
  ORIGINAL model sees them (validation images; an analysis, not unlearning):

  * own-class probability of the forgotten proxies and of the real images;
  * coverage: the share of real forgotten images whose nearest proxy (cosine
    distance of the original's pooled last-block features) is one of the
    forgotten class's proxies -- low coverage means the proxies stand for a
    corner of the class, and tuning on them need not move the rest of it;
  * the same share for every proxy class (where the real images go instead).
  """
  ck, data, forget = ctx.original, ctx.data, list(ctx.cell.forget)
  c, g = ck.classifier, ck.generator
  k = data.num_classes
  labels = np.asarray(prompt_labels(k, ck.prompts.shape[0] // k))
  proxies = make_proxies(g.graphdef, g.params, ck.prompts)
  p_proxy, f_proxy = _penultimate(c.graphdef, c.params, c.stats, proxies)
  real = data.x_val[np.isin(data.y_val, forget)]
  p_real, f_real = _penultimate(c.graphdef, c.params, c.stats, jnp.asarray(real))

  nearest = labels[np.asarray(jnp.argmax(_unit(f_real) @ _unit(f_proxy).T, axis=-1))]
  is_f = np.isin(labels, forget)
  own = np.asarray(p_proxy)[np.arange(len(labels)), labels]
  return None, {
      "proxy_own_prob": float(own[is_f].mean()),
      "real_own_prob": float(np.asarray(p_real)[:, forget].sum(-1).mean()),
      "retained_proxy_acc": float((np.asarray(p_proxy).argmax(-1) == labels)[~is_f].mean()),
      "coverage": float(np.isin(nearest, forget).mean()),
      "nearest_proxy_class": np.bincount(nearest, minlength=k).tolist(),
  }


BATCH_DIAGNOSTICS = MethodSpec("batch_diagnostics", "batch_diagnostics")
# The tuning batches compared: the paper's, and the two sharpening modes at
# the candidates' target and step counts.
BATCHES = {"proxies": None,
           "forgotten": sharpen_lib.Sharpening(0.9, 0.01, 30, "forgotten"),
           "all": sharpen_lib.Sharpening(0.9, 0.01, 60, "all")}


@runner.register_analysis("batch_diagnostics")
def batch_diagnostics(ctx: runner.Context):
  """Coverage of the forgotten class by each tuning batch (validation images).

  For the paper's batch and each sharpening mode: the share of the class's
  real validation images whose nearest batch image (cosine distance of the
  original's pooled last-block features) is labelled with a forgotten class
  -- i.e. is pushed out of the class by tuning -- and the mean probability
  the original gives those batch images their forgotten label.
  """
  ck, data, forget = ctx.original, ctx.data, list(ctx.cell.forget)
  c, g = ck.classifier, ck.generator
  k = data.num_classes
  proxies = make_proxies(g.graphdef, g.params, ck.prompts)
  labels = prompt_labels(k, ck.prompts.shape[0] // k)
  _, f_real = _penultimate(c.graphdef, c.params, c.stats,
                           jnp.asarray(data.x_val[np.isin(data.y_val, forget)]))
  out = {}
  for name, sharpening in BATCHES.items():
    x, y = sharpen_lib.tuning_batch(c.graphdef, c.params, c.stats, proxies, labels,
                                    jnp.asarray(forget, jnp.int32), sharpening)
    p, f = _penultimate(c.graphdef, c.params, c.stats, x)
    y = np.asarray(y)
    nearest = y[np.asarray(jnp.argmax(_unit(f_real) @ _unit(f).T, axis=-1))]
    gone = np.isin(y, forget)
    out[f"coverage_{name}"] = float(np.isin(nearest, forget).mean())
    out[f"forgotten_rows_{name}"] = int(gone.sum())
    out[f"forgotten_rows_prob_{name}"] = float(np.asarray(p)[np.arange(len(y)), y][gone].mean())
  return None, out


def _unit(v):
  return v / (jnp.linalg.norm(v, axis=-1, keepdims=True) + 1e-12)


def scores(records, cfg, split: str = "val_") -> list[dict]:
  """Per setting: worst Acc_f and Acc_r ratios. The candidates are compared on
  the cells every candidate has; a failed setting on the cells it ran on."""
  originals = {r["original"]: r for r in records if r["method"] == "original"}
  candidates = [m.label for m in cfg.methods if m.method == "geniu"]
  by_cell = {k[0]: {r["method"]: r for r in rs}
             for k, rs in R.group([r for r in records if r["original"] in originals],
                                  "original").items()}
  out = []
  for label in candidates + [m.label for m in cfg.retired]:
    needed = set(candidates) if label in candidates else {label}
    rs = [cell[label] for cell in by_cell.values() if set(cell) >= needed]
    if not rs:
      continue
    acc_f = [r[split + "acc_f"] for r in rs]
    ratios = [r[split + "acc_r"] / originals[r["original"]][split + "acc_r"] for r in rs]
    rounds = rs[0]["info"]["config"]["unlearn_rounds"]
    worst = max(range(len(rs)), key=lambda i: acc_f[i])
    out.append({"setting": label, "cells": len(rs), "worst_acc_f": max(acc_f),
                "worst_cell": f"{rs[worst]['dataset']}/{rs[worst]['forget'][0]}/s{rs[worst]['seed']}",
                "cells_over": sum(a > PASS_ACC_F for a in acc_f),
                "mean_acc_f": sum(acc_f) / len(acc_f),
                "ratio_mean": sum(ratios) / len(ratios), "ratio_worst": min(ratios),
                "rounds": rounds,
                "unlearn_ms": sum(r["unlearn_ms"] or 0 for r in rs) / len(rs)})
  return out


def choose(rows: list[dict]) -> dict | None:
  """The criterion of the module docstring."""
  passing = [r for r in rows if r["worst_acc_f"] <= PASS_ACC_F]
  if passing:
    return max(passing, key=lambda r: (r["ratio_worst"], -r["rounds"]))
  return min(rows, key=lambda r: (r["worst_acc_f"], -r["ratio_worst"])) if rows else None


def _table(rows, chosen) -> str:
  body = [[("**" + r["setting"] + "**") if chosen and r is chosen else r["setting"],
           r["cells"], f"{r['worst_acc_f']:.4f}", r["worst_cell"], r["cells_over"],
           f"{r['mean_acc_f']:.4f}", f"{r['ratio_mean']:.3f}", f"{r['ratio_worst']:.3f}",
           f"{r['unlearn_ms']:.0f}"] for r in rows]
  return R.markdown_table(["setting", "cells", "worst Acc_f", "worst cell",
                           f"cells Acc_f > {PASS_ACC_F}", "mean Acc_f", "Acc_r / orig (mean)",
                           "Acc_r / orig (worst)", "unlearn ms"], body)


def selection(records, cfg) -> R.Section:
  rows = scores(records, cfg, "val_")
  chosen = choose(rows)
  verdict = "-" if chosen is None else (
      f"Chosen: **{chosen['setting']}** "
      + ("(passes)" if chosen["worst_acc_f"] <= PASS_ACC_F else "(no setting passes)"))
  return R.Section(_table(rows, chosen) + "\n\n" + verdict,
                   [dict(r, split="val", chosen=chosen is r) for r in rows])


def test_split(records, cfg) -> R.Section:
  val_chosen = choose(scores(records, cfg, "val_"))
  rows = scores(records, cfg, "")
  chosen = next((r for r in rows if val_chosen and r["setting"] == val_chosen["setting"]), None)
  return R.Section(_table(rows, chosen) + "\n\nThe same cells on the test split; the "
                   "choice above used only the validation split.",
                   [dict(r, split="test") for r in rows])


def diagnostics(records, cfg) -> R.Section:
  """Per cell: the proxy diagnostics beside what each setting left of the class."""
  val_chosen = choose(scores(records, cfg, "val_"))
  shown = ["geniu_margin2"] + ([val_chosen["setting"]] if val_chosen else [])
  rows, csv_rows = [], []
  for (original,), rs in R.group(records, "original").items():
    by = {r["method"]: r for r in rs}
    d = by.get("proxy_diagnostics")
    if d is None:
      continue
    i = d["info"]
    left = [by[m]["val_acc_f"] if m in by else None for m in shown]
    rows.append([d["dataset"], d["forget"][0], d["seed"], f"{i['proxy_own_prob']:.3f}",
                 f"{i['real_own_prob']:.3f}", f"{i['coverage']:.3f}",
                 f"{i['retained_proxy_acc']:.2f}"] + [R.fmt_paper(v) for v in left])
    csv_rows.append({"dataset": d["dataset"], "class": d["forget"][0], "seed": d["seed"],
                     **{k: v for k, v in i.items() if k not in ("config",)},
                     **{f"val_acc_f_{m}": v for m, v in zip(shown, left)}})
  rows.sort(key=lambda r: (r[0], r[2], r[1]))
  md = R.markdown_table(["dataset", "class", "seed", "p_f(forgotten proxies)",
                         "p_f(real val images)", "coverage", "retained proxies correct"]
                        + [f"val Acc_f {m}" for m in shown], rows)
  return R.Section(md + "\n\ncoverage: share of the class's real validation images whose "
                   "nearest proxy (original's features) is one of its own proxies.", csv_rows)


def batch_coverage(records, cfg) -> R.Section:
  """Per cell: how much of the forgotten class each tuning batch covers."""
  rows, csv_rows = [], []
  for r in records:
    if r["method"] != "batch_diagnostics":
      continue
    i = r["info"]
    rows.append([r["dataset"], r["forget"][0], r["seed"]]
                + [f"{i['coverage_' + b]:.3f}" for b in BATCHES]
                + [f"{i['forgotten_rows_prob_' + b]:.3f}" for b in BATCHES])
    csv_rows.append({"dataset": r["dataset"], "class": r["forget"][0], "seed": r["seed"],
                     **{k: v for k, v in i.items() if k != "config"}})
  rows.sort(key=lambda row: (row[0], row[2], row[1]))
  md = R.markdown_table(["dataset", "class", "seed"] + [f"coverage: {b}" for b in BATCHES]
                        + [f"p_f of forgotten rows: {b}" for b in BATCHES], rows)
  return R.Section(md + "\n\ncoverage: share of the class's real validation images whose "
                   "nearest batch image (original's features) is labelled forgotten; "
                   "`proxies`: the generator's batch; `forgotten`, `all`: the sharpening "
                   "modes (`geniu.sharpen`).", csv_rows)


VIEWS = (R.View("Selection on the validation split", selection),
         R.View("Proxy diagnostics", diagnostics),
         R.View("Coverage of the tuning batches", batch_coverage),
         R.View("Test split (not used to choose)", test_split))


def main(argv: Sequence[str] | None = None) -> int:
  return grid_main.main(get_config, VIEWS, argv, description=__doc__.splitlines()[0])


if __name__ == "__main__":
  sys.exit(main())
