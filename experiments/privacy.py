"""What GENIU's stored artifacts give away: the forgotten class, and training images.

GENIU keeps noise prompts z_k and a VAE g after training so that later
unlearning requests need no data (abstract); the paper calls the prompts
"indistinguishable" noise. Two questions about that artifact, on each
original of Table 1 (its majority class k is forgotten):

* `artifact_audit`, generation rate: how often does what the kept artifact
  can produce show the forgotten class? Images from five sources -- the
  forgotten class's proxies g(z_k) (what an unlearned checkpoint no longer
  holds), the retained classes' proxies (what it keeps), latents sampled
  around those (the VAE's posterior), g of fresh N(0, 1) prompts, and the
  decoder on latents from the prior -- are classified by three judges: the
  original, the unlearned model (GENIU's `cpu` setting) and an independent
  classifier, the original of the same dataset and seed whose majority is
  k+1 (trained on other images, with class k as a minority). The rate is the
  share of images a judge puts in class k; real test images of the retained
  classes give each judge's false-positive rate. A retrained model cannot
  judge: it was trained without class k and never predicts it.
* `artifact_audit`, nearest neighbours: the Euclidean distance from every
  stored proxy g(z) to its nearest training image, in pixel space and in the
  original's penultimate features, against the same distance from real test
  images (which the model never saw) to the training set. A proxy much
  closer to a training image than test images are is a near-copy of it.

    python -m experiments.privacy --config cpu --workdir experiments/results/privacy \\
        --originals runs/originals --existing-originals
    python -m experiments.privacy --config cpu --workdir experiments/results/privacy --report

`cpu`: Fashion-MNIST and MNIST, every class, seed 0 (Table 1's originals);
about 1 min per original on a 2-core CPU (one GENIU tuning, the rest is
forward passes). `smoke`: the embedded subset, class 9.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments import sequential, table1, table2
from experiments.grid import report as R
from experiments.grid import runner
from experiments.grid import tables
from experiments.grid.spec import GridConfig, MethodSpec
from geniu_jax import checkpoint as ckpt_lib
from geniu_jax import metrics
from geniu_jax.geniu.generator import make_proxies
from geniu_jax.geniu.prompts import prompt_labels
from geniu_jax.models import functional as F

AUDIT = MethodSpec("artifact_audit", "artifact_audit", table1.GENIU_CPU.overrides)
SAMPLES = 1000         # fresh prompts, prior latents and real test images per original
POSTERIOR_DRAWS = 20   # latents sampled around each retained proxy
SOURCES = ("forgotten_proxies", "retained_proxies", "posterior", "random_prompts", "prior",
           "real_retained")
JUDGES = ("original", "unlearned", "independent")


def get_config(variant: str = "cpu", seeds: Sequence[int] | None = None,
               classes: Sequence[int] | None = None) -> GridConfig:
  base = table2.get_config(variant) if variant == "smoke" else table1.get_config(variant)
  if classes is not None:
    base = base.replace(forget_sets=tables.single_classes(classes, ()))
  return base.replace(name="privacy", seeds=tuple(seeds or (0,)),
                      methods=(table1.ORIGINAL, AUDIT))


@functools.partial(jax.jit, static_argnums=0)
def _posterior(graphdef, params, z: jax.Array, key: jax.Array) -> jax.Array:
  """g with its latent sampled (mu + sigma * eps), one draw per row of z."""
  return F.generator_apply(graphdef, params, z, key)[0]


@functools.partial(jax.jit, static_argnums=0)
def _prior(graphdef, params, latents: jax.Array) -> jax.Array:
  return nnx.merge(graphdef, params).decode(latents)


@functools.partial(jax.jit, static_argnums=0)
def _proxies(graphdef, params, z: jax.Array) -> jax.Array:
  return make_proxies(graphdef, params, z)


@functools.partial(jax.jit, static_argnums=0)
def _penultimate(graphdef, params, stats, x: jax.Array) -> jax.Array:
  return F.classifier_features(graphdef, params, stats, x)[1][-1].mean(axis=(1, 2))


def _features(model: F.SplitModel, x: np.ndarray) -> np.ndarray:
  return metrics.map_chunks(_penultimate, model, x)


def nearest(queries: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(Euclidean distance to the nearest row of `reference`, its index) per query row."""
  q = queries.reshape(len(queries), -1).astype(np.float64)
  r = reference.reshape(len(reference), -1).astype(np.float64)
  d2 = (q * q).sum(1)[:, None] - 2.0 * q @ r.T + (r * r).sum(1)[None, :]
  idx = d2.argmin(1)
  return np.sqrt(np.maximum(d2[np.arange(len(q)), idx], 0.0)), idx


def _independent_judge(ctx: runner.Context) -> F.SplitModel | None:
  """The original of the same dataset and seed whose majority is the next class."""
  if ctx.originals is None:
    return None
  other = ctx.cell.forget[0] + 1
  cell = dataclasses.replace(ctx.cell, forget=(other % ctx.data.num_classes,))
  path = runner.original_path(ctx.originals, cell)
  if not (path / "metadata.json").exists():
    return None
  return ckpt_lib.restore(path).classifier


def _rates(judges: dict, images: dict, forget: Sequence[int]) -> dict:
  out = {}
  for judge, model in judges.items():
    if model is None:
      continue
    out[judge] = {name: float(np.isin(runner.predictions(model, x), forget).mean())
                  for name, x in images.items()}
  return out


def _neighbour_stats(queries: np.ndarray, test: np.ndarray, train: np.ndarray) -> dict:
  """NN distances of `queries` and of real test images to the training set."""
  d_q, _ = nearest(queries, train)
  d_t, _ = nearest(test, train)
  return {"proxy_median": float(np.median(d_q)), "test_median": float(np.median(d_t)),
          "ratio": float(np.median(d_q) / np.median(d_t)),
          # Near-copies: closer than all but 1 % of test images are to theirs.
          "closer_than_test_p01": float((d_q < np.quantile(d_t, 0.01)).mean()),
          "closer_than_test_p05": float((d_q < np.quantile(d_t, 0.05)).mean())}


@runner.register_analysis("artifact_audit")
def artifact_audit(ctx: runner.Context):
  ck, forget = ctx.original, list(ctx.cell.forget)
  k = ctx.data.num_classes
  gen = ck.generator
  labels = np.asarray(prompt_labels(k, ck.prompts.shape[0] // k))
  gone = np.isin(labels, forget)
  proxies = np.asarray(_proxies(gen.graphdef, gen.params, jnp.asarray(ck.prompts)))
  key_prompts, key_prior, key_post = jax.random.split(ctx.key, 3)
  shape = tuple(ctx.data.image_shape)
  latent_dim = gen.params["to_mu"]["kernel"].shape[-1]
  kept = jnp.asarray(ck.prompts)[~gone]
  draws = jnp.repeat(kept, POSTERIOR_DRAWS, axis=0)
  retained_test = ~np.isin(ctx.data.y_test, forget)
  images = {
      "forgotten_proxies": proxies[gone],
      "retained_proxies": proxies[~gone],
      "posterior": np.asarray(_posterior(gen.graphdef, gen.params, draws, key_post)),
      "random_prompts": np.asarray(_proxies(gen.graphdef, gen.params, jax.random.normal(
          key_prompts, (SAMPLES, *shape)))),
      "prior": np.asarray(_prior(gen.graphdef, gen.params,
                                 jax.random.normal(key_prior, (SAMPLES, latent_dim)))),
      "real_retained": ctx.data.x_test[retained_test][:SAMPLES],
  }
  unlearned = sequential.tune(ctx, ck.classifier, forget, [])
  judges = {"original": ck.classifier, "unlearned": unlearned,
            "independent": _independent_judge(ctx)}
  test = ctx.data.x_test[:SAMPLES]
  train = ctx.data.x_train
  original = ck.classifier
  features = {name: _features(original, x) for name, x in
              (("proxies", proxies), ("test", test), ("train", train))}
  _, idx = nearest(proxies, train)
  info = {
      "rates": _rates(judges, images, forget),
      "counts": {name: int(len(x)) for name, x in images.items()},
      "pixel": _neighbour_stats(proxies, test, train),
      "feature": _neighbour_stats(features["proxies"], features["test"], features["train"]),
      # Whether a proxy's nearest training image is of the proxy's own class.
      "nearest_same_class": float((ctx.data.y_train[idx] == labels).mean()),
  }
  return unlearned, info


def rates_table(records, cfg) -> R.Section:
  """Mean over originals of the share of images judged as the forgotten class."""
  rows, csv_rows = [], []
  audits = [r for r in records if r["method"] == AUDIT.label]
  for (dataset,), rs in R.group(audits, "dataset").items():
    for judge in JUDGES:
      have = [r["info"]["rates"][judge] for r in rs if judge in r["info"]["rates"]]
      if not have:
        continue
      row = {"dataset": dataset, "judge": judge, "originals": len(have)}
      row.update({s: float(np.mean([h[s] for h in have])) for s in SOURCES})
      worst = {s: float(np.max([h[s] for h in have])) for s in SOURCES}
      csv_rows.append(dict(row, **{f"worst_{s}": v for s, v in worst.items()}))
      rows.append([dataset, judge, len(have)]
                  + [f"{row[s]:.3f} ({worst[s]:.3f})" for s in SOURCES])
  md = R.markdown_table(["dataset", "judge", "originals"] + list(SOURCES), rows)
  return R.Section(md + "\n\nShare of images the judge puts in the forgotten class: mean over "
                   "originals (worst in brackets). `real_retained`: real test images of the "
                   "retained classes (the judge's false-positive rate).", csv_rows)


def neighbours_table(records, cfg) -> R.Section:
  rows, csv_rows = [], []
  audits = [r for r in records if r["method"] == AUDIT.label]
  for (dataset,), rs in R.group(audits, "dataset").items():
    for space in ("pixel", "feature"):
      stats = [r["info"][space] for r in rs]
      row = {"dataset": dataset, "space": space, "originals": len(rs),
             **{f: float(np.mean([s[f] for s in stats])) for f in stats[0]}}
      if space == "pixel":
        row["nearest_same_class"] = float(np.mean([r["info"]["nearest_same_class"]
                                                   for r in rs]))
      csv_rows.append(row)
      rows.append([dataset, space, len(rs), f"{row['proxy_median']:.3f}",
                   f"{row['test_median']:.3f}", f"{row['ratio']:.2f}",
                   f"{row['closer_than_test_p01']:.3f}", f"{row['closer_than_test_p05']:.3f}"])
  md = R.markdown_table(["dataset", "space", "originals", "proxy NN distance (median)",
                         "test NN distance (median)", "ratio",
                         "proxies closer than 99 % of test images",
                         "closer than 95 %"], rows)
  return R.Section(md + "\n\nEuclidean distance to the nearest training image, mean over "
                   "originals of the per-original medians; pixel space ([0, 1] pixels) and "
                   "the original's penultimate features.", csv_rows)


VIEWS = (R.View("Forgotten-class generation rate", rates_table),
         R.View("Nearest training images", neighbours_table))


def main(argv: Sequence[str] | None = None) -> int:
  return tables.main(get_config, VIEWS, argv, description=__doc__.splitlines()[0])


if __name__ == "__main__":
  sys.exit(main())
