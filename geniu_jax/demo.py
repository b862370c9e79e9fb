"""`geniu demo`: the whole story on the embedded Fashion-MNIST subset, no download.

Trains the original model with GENIU's training phase (imbalanced data,
majority class 9 "ankle boot"), retrains a model without class 9, unlearns
class 9 with GENIU, and reports Acc_r / Acc_f of the three on the embedded
test images, plus the unlearning time.
"""

from __future__ import annotations

import time
from typing import Callable

import jax

from geniu_jax import runs
from geniu_jax.config import get_config
from geniu_jax.methods import registry

DEMO_SOURCE = "embedded"
DEMO_CLASS = 9
# The embedded subset is ~1,000 images once imbalanced, so the `cpu` preset's
# 12 epochs of batch 256 would be only ~50 steps: smaller batches and more
# epochs give the classifier a comparable number of updates. The generator
# (~0.15 GFLOP per prompt and step, forward and backward) would then dominate
# a 2-core CPU, so it takes 50 steps per epoch instead of 100. Unlearning is
# the `cpu` preset's data-free setting (B = 5, <= 60 rounds, stop rule).
DEMO_OVERRIDES = {"batch_size": 64, "epochs": 20, "proxies_per_class": 5,
                  "generator_steps": 50, "prompt_steps": 100}


def run(log: Callable[[str], None] | None = print, preset: str = "cpu", **overrides) -> dict:
  """Returns {"original", "retrain", "geniu": {"acc_r", "acc_f"}, "unlearn_ms", ...}."""
  t_start = time.perf_counter()
  cfg = get_config(preset, **{**DEMO_OVERRIDES, **overrides})
  data = runs.prepare_data(DEMO_SOURCE, [DEMO_CLASS], cfg.imbalance, cfg.seed, log=log)
  forget = (DEMO_CLASS,)

  if log:
    log("[1/3] training the original model with GENIU's training phase")
  original = runs.train_geniu(cfg, data, log=log)

  # Both methods through the registry, which hands each only what it declared:
  # retrain the retained classes' images, GENIU the artifacts alone.
  available = registry.inputs_from(data.x_train, data.y_train, forget,
                                   artifacts=(original.generator, original.prompts))
  common = dict(classifier=original.classifier, forget=forget, num_classes=data.num_classes,
                image_shape=data.x_train.shape[1:], **available)
  key = jax.random.key(cfg.seed)
  if log:
    log("[2/3] retraining without the forgotten class (reference)")
  retrained, _ = registry.run_method("retrain", cfg, key, **common)

  if log:
    log("[3/3] GENIU unlearning (proxies only, no training data)")
  unlearned, info = registry.run_method("geniu", cfg, key, **common)

  def score(classifier):
    r = runs.evaluate(classifier, data.x_test, data.y_test, data.num_classes, forget)
    return {"acc_r": round(r["acc_r"], 4), "acc_f": round(r["acc_f"], 4)}

  return {
      "original": score(original.classifier),
      "retrain": score(retrained),
      "geniu": score(unlearned),
      "unlearn_ms": round(info["unlearn_ms"], 2),
      "compile_ms": round(info["compile_ms"], 1),
      "rounds_run": info["rounds_run"],
      "preset": cfg.preset,
      "total_s": round(time.perf_counter() - t_start, 1),
  }


def format_table(report: dict) -> str:
  rows = ["model       Acc_r   Acc_f", "----------  ------  ------"]
  for name in ("original", "retrain", "geniu"):
    r = report[name]
    rows.append(f"{name:<10}  {r['acc_r']:.4f}  {r['acc_f']:.4f}")
  rows.append(f"GENIU unlearning: {report['unlearn_ms']:.1f} ms for {report['rounds_run']} "
              f"rounds (compile {report['compile_ms']:.0f} ms); total {report['total_s']:.0f} s")
  return "\n".join(rows)
