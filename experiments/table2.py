"""Table 2 and Figures 3/4 of GENIU (arXiv 2406.07885): the original's perception of noise.

On each original (the forgotten class is the majority, as in every table of
the paper) the analysis `perception` asks the paper's question: does noise
fitted to an imbalanced original look like the majority class to it? It
compares D_KL(p_obs || p_ref) (`geniu_jax.perception.table2`) of

* GKT's noise: samples of GKT's generator, trained data-free on the original
  as the `gkt` method trains it, that the original assigns to a retained class;
* GENIU's noise: the proxies g(z_k) of the retained classes, from the
  original's stored prompts and VAE, one per class (B = 1, the paper's);
* UNSIR's noise, which exists for the forgotten class only (the paper leaves
  it out; reported apart, not comparable),

against the reference perception p_ref of the majority class's real training
images (every one the original was trained on). Reading training data makes
this an analysis of the original, not an unlearning method. Larger is better:
the less the noise of the other classes looks like the majority.

For Figures 3 and 4 the analysis also keeps, per class, one GKT noise image
and its reconstruction by GENIU's VAE (`make_proxies`, the same path as the
`gkt_vae` method of Table 3), and GENIU's prompt z_k and proxy g(z_k), in
WORKDIR/arrays/perception_<record key>.npz; the report draws them.

    python -m experiments.table2 --config cpu --workdir experiments/results/table2 \\
        --originals runs/originals
    python -m experiments.table2 --config cpu --workdir experiments/results/table2 --report

`cpu`: Fashion-MNIST and MNIST, class 9 forgotten (the class of the paper's
figures), seed 0. `--seeds S ...` / `--classes K ...` replace them (pass the
same to `--report`). The cells are Table 1's (`experiments.table1`, 500
validation images per class), so `--originals runs/originals` reuses the
originals a Table 1 run trained (`--existing-originals`: only those). Per
cell about 2.5 min on a 2-core CPU (GKT's generator ~1.5 min, UNSIR's noise
and the rest ~1 min), plus ~5 min for an original not yet trained: 5-15 min
in all. `paper`: 5 seeds at the paper's schedule (an accelerator job).
`smoke`: the embedded Fashion-MNIST subset; 1-2.5 min on two busy CPU cores,
nearly all of it compilation (`--compilation-cache DIR` keeps it for reruns).
"""

from __future__ import annotations

import io
import sys
import uuid
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from experiments import table1
from experiments.grid import report as R
from experiments.grid import runner
from experiments.grid import tables
from experiments.grid.spec import GridConfig, MethodSpec, TrainVariant, overrides
from geniu_jax import perception as P
from geniu_jax.geniu.generator import make_proxies
from geniu_jax.geniu.prompts import first_ranks

ARRAYS = "arrays"
# Images kept per class for the figures (the paper shows one).
FIGURE_PER_CLASS = 1
# Compared with GENIU's proxies: one per class, as in the paper (a cpu
# original stores B = 5 ranks; the first is the most entropic sample's).
PERCEPTION = MethodSpec("perception", "perception", overrides(proxies_per_class=1))
# The smoke cell every analysis module shares, so the tests train one
# original for all of them. `patches` compiles faster than `winograd` (what
# `auto` picks on a CPU) and, unlike `native`, keeps the convolution
# gradients inside a scan (VAE, GKT) fast on a CPU (~20x at 28x28).
SMOKE_VARIANT = TrainVariant("smoke", overrides(lowering="patches"))


def get_config(variant: str = "cpu", seeds: Sequence[int] | None = None,
               classes: Sequence[int] | None = None) -> GridConfig:
  """`seeds` / `classes` (one forgotten class per cell) replace the defaults."""
  forget_sets = tables.single_classes(classes, (9,))
  if variant == "smoke":
    return GridConfig(name="table2", preset="smoke", datasets=(("fashion_mnist", "embedded"),),
                      forget_sets=forget_sets, seeds=tuple(seeds or (0,)),
                      train_variants=(SMOKE_VARIANT,), methods=(PERCEPTION,))
  if variant == "cpu":
    return GridConfig(name="table2", preset="cpu", datasets=(table1.FASHION_MNIST, table1.MNIST),
                      forget_sets=forget_sets, seeds=tuple(seeds or (0,)),
                      validation_per_class=500, methods=(PERCEPTION,))
  if variant == "paper":
    return GridConfig(name="table2", preset="paper",
                      datasets=(table1.FASHION_MNIST, table1.MNIST), forget_sets=forget_sets,
                      seeds=tuple(seeds or range(5)), validation_per_class=500,
                      methods=(PERCEPTION,))
  raise ValueError(f"unknown config {variant!r}")


# --- the analysis -----------------------------------------------------------

_reconstruct = jax.jit(lambda generator, z: make_proxies(generator.graphdef, generator.params, z))


def save_arrays(workdir, name: str, arrays: dict[str, np.ndarray]) -> str:
  """Writes WORKDIR/arrays/<name>.npz whole (temporary name, then rename);
  returns its path relative to WORKDIR, as the record stores it."""
  folder = epath.Path(workdir) / ARRAYS
  folder.mkdir(parents=True, exist_ok=True)
  buf = io.BytesIO()
  np.savez_compressed(buf, **arrays)
  tmp = folder / f".{name}.{uuid.uuid4().hex}.tmp"
  try:
    tmp.write_bytes(buf.getvalue())
    tmp.replace(folder / f"{name}.npz")
  except BaseException:
    if tmp.exists():
      tmp.unlink()
    raise
  return f"{ARRAYS}/{name}.npz"


def load_arrays(root, relative: str) -> dict[str, np.ndarray] | None:
  path = epath.Path(root) / relative
  if not path.exists():
    return None
  with np.load(io.BytesIO(path.read_bytes())) as f:
    return dict(f)


def first_per_class(classes: np.ndarray, per_class: int) -> np.ndarray:
  """Indices of the first `per_class` samples of every class present, by class.

  GKT's samples are i.i.d. draws, so the first ones are a random pick.
  """
  if not len(classes):
    return np.zeros(0, np.int64)
  return np.concatenate([np.flatnonzero(classes == c)[:per_class] for c in np.unique(classes)])


def figure_arrays(original, noises: dict[str, P.MethodNoise], per_class: int = FIGURE_PER_CLASS
                  ) -> dict[str, np.ndarray]:
  """Figure 3: GKT noise of the retained classes and its VAE reconstruction;
  Figure 4: GENIU's first-rank prompt z_k and proxy g(z_k) of every class."""
  generator = original.generator
  num_classes = int(original.classifier.params["head"]["kernel"].shape[-1])
  out = {}
  if "gkt" in noises:
    gkt = noises["gkt"]
    pick = first_per_class(gkt.classes, per_class)
    out["gkt_noise"] = gkt.x[pick]
    out["gkt_classes"] = gkt.classes[pick]
    out["gkt_reconstruction"] = (np.asarray(_reconstruct(generator, jnp.asarray(gkt.x[pick])))
                                 if len(pick) else gkt.x[pick])
  prompts = first_ranks(jnp.asarray(original.prompts), num_classes, 1)
  out["geniu_prompts"] = np.asarray(prompts)
  out["geniu_proxies"] = np.asarray(_reconstruct(generator, prompts))
  out["geniu_classes"] = np.arange(num_classes)
  return out


@runner.register_analysis("perception")
def perception_analysis(ctx: runner.Context) -> tuple[None, dict]:
  """Table 2's KLs of GKT's, GENIU's and UNSIR's noise on one original (module docstring)."""
  original, forget = ctx.original, ctx.cell.forget
  if original.generator is None:
    raise ValueError("the original has no GENIU generator and prompts")
  reference = ctx.data.x_train[np.isin(ctx.data.y_train, forget)]
  noises = P.table2_noise(original.classifier, forget, ctx.cfg, key=ctx.key,
                          image_shape=ctx.data.image_shape,
                          artifacts=(original.generator, original.prompts))
  rows = P.table2(original.classifier, reference, noises)
  arrays = save_arrays(ctx.workdir, f"perception_{ctx.record_key}",
                       figure_arrays(original, noises))
  return None, {"kl": {m: row["kl"] for m, row in rows.items()}, "table2": rows,
                "reference_samples": int(len(reference)),
                "noise": {m: n.info for m, n in noises.items()}, "arrays": arrays}


# --- the report -------------------------------------------------------------

def _perception_records(records) -> list[dict]:
  return [r for r in records if isinstance(r.get("info", {}).get("kl"), dict)]


def table2(records, cfg) -> R.Section:
  """Per dataset: mean ± std of each method's KL over the runs, the paper's beside."""
  ref = R.paper()["table2_kl_obs_ref_higher_is_better"]
  rows, csv_rows = [], []
  for (dataset,), rs in R.group(_perception_records(records), "dataset").items():
    kl = {m: R.stat(r["info"]["kl"].get(m) for r in rs) for m in P.TABLE2_METHODS}
    # Compared only on the runs where both have noise to score.
    both = [r for r in rs if None not in (r["info"]["kl"].get("geniu"),
                                          r["info"]["kl"].get("gkt"))]
    wins = sum(r["info"]["kl"]["geniu"] > r["info"]["kl"]["gkt"] for r in both)
    rows.append([dataset, R.fmt(kl["gkt"]), R.fmt_paper(ref["gkt"].get(dataset)),
                 R.fmt(kl["geniu"]), R.fmt_paper(ref["geniu"].get(dataset)),
                 f"{wins}/{len(both)}", R.fmt(kl["unsir"]), len(rs)])
    for m, s in kl.items():
      csv_rows.append({"dataset": dataset, "method": m, "kl_mean": s and s.mean,
                       "kl_std": s and s.std, "n": s and s.n, "kl_min": s and s.min,
                       "kl_max": s and s.max, "paper": ref.get(m, {}).get(dataset)})
  md = R.markdown_table(["dataset", "GKT ours", "GKT paper", "GENIU ours", "GENIU paper",
                         "runs GENIU > GKT", "UNSIR (forgotten-class noise)", "n"], rows)
  return R.Section(md + (
      "\n\nD_KL(p_obs || p_ref) in nats, larger is better: p_ref is the original's mean "
      "softmax on the majority (forgotten) class's training images, p_obs on the noise of "
      "the other classes. Mean ± std over runs (classes x seeds). UNSIR has noise of the "
      "forgotten class only, so its KL is not comparable (the paper leaves it out)."), csv_rows)


# Figures 3/4 show one run per dataset, as the paper's do: class 9 the
# majority (its captions), where the store has it.
FIGURE_CLASS = 9


def _shown(records) -> list[dict]:
  """One record per dataset: class FIGURE_CLASS (else the lowest), lowest seed."""
  out = {}
  for r in sorted(_perception_records(records),
                  key=lambda r: (r["forget"] != [FIGURE_CLASS], r["forget"], r["seed"])):
    out.setdefault(r["dataset"], r)
  return list(out.values())


def _image(ax, img: np.ndarray, normalise: bool) -> None:
  img = np.asarray(img, np.float32)
  if normalise:  # prompts are unbounded noise; stretch each to [0, 1]
    img = (img - img.min()) / max(float(img.max() - img.min()), 1e-12)
  if img.shape[-1] == 1:
    ax.imshow(img[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
  else:
    ax.imshow(np.clip(img, 0.0, 1.0))


def image_grid(out: Path, panels: list[tuple[str, np.ndarray, list[str], bool]],
               title: str) -> None:
  """Rows of images: (row label, images [n, H, W, C], column captions, normalise?)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  if not panels:
    fig = plt.figure(figsize=(6, 1.5))
    fig.text(0.5, 0.5, f"{title}\n(nothing to show: see the report)", ha="center",
             va="center", fontsize=9)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return
  cols = max([len(images) for _, images, _, _ in panels] + [1])
  fig, axes = plt.subplots(len(panels), cols, figsize=(1.3 * cols + 1.6, 1.45 * len(panels)),
                           squeeze=False)
  for row, (label, images, captions, normalise) in enumerate(panels):
    for col in range(cols):
      ax = axes[row][col]
      ax.set_xticks([])
      ax.set_yticks([])
      if col < len(images):
        _image(ax, images[col], normalise)
        ax.set_title(captions[col], fontsize=7)
      else:
        ax.axis("off")
    axes[row][0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  # "tight" grows the canvas to the row labels and title a one-column grid cuts.
  fig.savefig(out, dpi=110, bbox_inches="tight")
  plt.close(fig)


def _images_view(kind: str):
  """Figure 3 (`gkt`) or Figure 4 (`geniu`) from the arrays of the shown records."""
  def render(records, cfg) -> R.Section:
    shown = _shown(records)
    rows = []
    for r in shown:
      rows.append({"dataset": r["dataset"], "forget": r["forget"][0], "seed": r["seed"],
                   "arrays": r["info"].get("arrays"), "kind": kind})

    def figure(out: Path) -> None:
      panels = []
      for r in shown:
        arrays = load_arrays(out.parent, r["info"]["arrays"]) or {}
        name = f"{r['dataset']} (class {r['forget'][0]} forgotten, seed {r['seed']})"
        if kind == "gkt" and len(arrays.get("gkt_noise", ())):
          caps = [f"class {c}" for c in arrays["gkt_classes"]]
          panels += [(f"{name}\nGKT noise", arrays["gkt_noise"], caps, False),
                     ("VAE reconstruction", arrays["gkt_reconstruction"], caps, False)]
        elif kind == "geniu" and "geniu_prompts" in arrays:
          caps = [f"class {c}" + (" (forgotten)" if c in r["forget"] else "")
                  for c in arrays["geniu_classes"]]
          panels += [(f"{name}\nGENIU prompt z", arrays["geniu_prompts"], caps, True),
                     ("proxy g(z)", arrays["geniu_proxies"], caps, False)]
      title = ("Figure 3: GKT's noise (upper) and its reconstruction by GENIU's VAE (lower)"
               if kind == "gkt" else "Figure 4: GENIU's prompts (upper) and proxies (lower)")
      image_grid(out, panels, title)

    what = ("GKT's noise of the retained classes (one sample the original assigns to each) "
            "and its reconstruction by the original's GENIU VAE (as `gkt_vae`, Table 3)"
            if kind == "gkt" else
            "GENIU's first-rank prompt z_k of every class (each stretched to [0, 1]) and its "
            "proxy g(z_k)")
    runs = ", ".join(f"{row['dataset']} class {row['forget']} seed {row['seed']}"
                     for row in rows) or "none"
    md = f"{what}; one run per dataset ({runs})."
    if kind == "gkt":
      empty = [r["dataset"] for r in shown if not r["info"]["table2"]["gkt"]["samples"]]
      if empty:
        md += (f" No GKT sample was assigned to a retained class on {', '.join(empty)}: "
               "nothing to show there.")
    return R.Section(md, rows, figure)

  return render


VIEWS = (R.View("Table 2", table2), R.View("Figure 3", _images_view("gkt")),
         R.View("Figure 4", _images_view("geniu")))


def main(argv: Sequence[str] | None = None) -> int:
  return tables.main(get_config, VIEWS, argv, description=__doc__.splitlines()[0])


if __name__ == "__main__":
  sys.exit(main())
