"""Retraining from scratch on the retained classes: the reference of Table 1.

The retrained model is what exact unlearning would give: the classifier of
the original run (same preset, same seed, same optimizer and schedule) trained
only on the retained classes' samples of the same imbalanced split (with the
plateau schedule, stepped on the retained classes of the validation split
the original's rule stepped on). Its head
keeps all K outputs; the forgotten classes simply never appear as labels.
Only the classifier is trained (`train(..., geniu=False)`): no prompts or
generator, no records.

Timing: `train` runs a Python loop of jitted steps, so compilation cannot be
split off ahead of time here; `unlearn_ms` is the whole wall time including
compilation and `compile_ms` is reported as None.
"""

from __future__ import annotations

import time

import numpy as np

from geniu_jax.config import Config
from geniu_jax.geniu import train as train_lib
from geniu_jax.methods.registry import Access, Grant, register
from geniu_jax.models import functional as F


@register("retrain", {Access.RETAINED_DATA},
          "retrain from scratch on the retained classes (reference, exact unlearning)")
def retrain(grant: Grant, cfg: Config, key) -> tuple[F.SplitModel, dict]:
  """Trains a fresh classifier on `grant.retained_data` with `cfg` (seed = cfg.seed)."""
  del key  # the run is seeded by cfg.seed, like the original training
  t0 = time.perf_counter()
  x, y = grant.retained_data
  validation = grant.retained_validation if cfg.lr_schedule == "plateau" else None
  result = train_lib.train(cfg, np.asarray(x), np.asarray(y), grant.num_classes,
                           geniu=False, recorder=None, log=None, validation=validation)
  wall_ms = (time.perf_counter() - t0) * 1e3
  last = result.history[-1] if result.history else {}
  return result.classifier, {"unlearn_ms": wall_ms, "compile_ms": None,
                             "timing": "wall incl. compile", "epochs": cfg.epochs,
                             "train_acc": last.get("train_acc"),
                             "train_samples": int(len(y))}
