"""Every evaluation of an unlearned model in one call: what `geniu evaluate` and the grids report.

Evaluation may read data (unlearning may not): the test split, and the
training split the original was trained on, rebuilt from the checkpoint's
metadata. Beside Acc_r / Acc_f / per-class accuracy (`geniu_jax.metrics`):

* `mia_confidence`, `mia_entropy` (`evaluation.mia`): members are retained
  TRAINING images, non-members TEST images of the retained classes (the same
  classes, so the attack learns membership, not class), the attacked set the
  forgotten classes' training images; each side capped at `attack_samples`
  (seeded subsample) to bound the SVC's cost;
* with a reference model (the retrained one): `js_to_reference` and
  `activation_distance` of the output distributions on the whole test split
  (`evaluation.distance`), and the relearn time of the model and of the
  reference on the forgotten training images with their AIN
  (`evaluation.relearn`).

Read each attack against the retrained model's value, which is the target
(`reference_mia_confidence`, `reference_mia_entropy`).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import numpy as np

from geniu_jax import metrics
from geniu_jax.evaluation import distance, mia, relearn
from geniu_jax.models import functional as F


class Relearning(NamedTuple):
  """How relearn time is measured.

  Attributes:
    target: accuracy on the forgotten training images to reach (the GKT
      paper's alpha x the original's accuracy there; the caller scales it).
    max_steps: cap; a model that does not get there reports None.
    lr: Adam learning rate.
    batch_size: images per step.
  """
  target: float = 0.5
  max_steps: int = 200
  lr: float = 1e-3
  batch_size: int = 64


_probs_jit = jax.jit(lambda g, p, s, x: jax.nn.softmax(F.classifier_logits(g, p, s, x)),
                     static_argnums=0)


def probabilities(model: F.SplitModel, x: np.ndarray, chunk: int = 1000) -> np.ndarray:
  """[N, K] softmax outputs in eval mode, in fixed-size chunks (one compile)."""
  return metrics.map_chunks(_probs_jit, model, x, chunk)


def _subsample(rng: np.random.Generator, n: int, cap: int) -> np.ndarray:
  return np.sort(rng.permutation(n)[:cap]) if n > cap else np.arange(n)


def attacks(model: F.SplitModel, x_train, y_train, x_test, y_test, forget: Sequence[int], *,
            seed: int = 0, attack_samples: int = 2000) -> dict:
  """{"mia_confidence", "mia_entropy"} of `model` (None when a side is empty)."""
  rng = np.random.default_rng(seed)
  gone_train = np.isin(y_train, forget)
  kept_test = ~np.isin(y_test, forget)
  sides = {"members": (x_train[~gone_train], y_train[~gone_train]),
           "non_members": (x_test[kept_test], y_test[kept_test]),
           "forgotten": (x_train[gone_train], y_train[gone_train])}
  if any(len(y) == 0 for _, y in sides.values()):
    return {"mia_confidence": None, "mia_entropy": None}
  conf, ent = {}, {}
  for name, (x, y) in sides.items():
    idx = _subsample(rng, len(y), attack_samples)
    probs = probabilities(model, x[idx])
    conf[name], ent[name] = mia.true_class_probs(probs, y[idx]), mia.entropy(probs)
  return {"mia_confidence": mia.confidence_mia(conf["members"], conf["non_members"],
                                               conf["forgotten"], seed=seed),
          "mia_entropy": mia.entropy_mia(ent["members"], ent["non_members"],
                                         ent["forgotten"], seed=seed)}


def evaluate(model: F.SplitModel, *, x_train, y_train, x_test, y_test, num_classes: int,
             forget: Sequence[int], reference: F.SplitModel | None = None,
             relearning: Relearning | None = Relearning(), key: jax.Array,
             attack_samples: int = 2000, reference_cache: dict | None = None) -> dict:
  """Accuracies, membership inference and (given `reference`) distance and relearn time.

  Args:
    model: the model to evaluate (eval-mode BatchNorm throughout).
    x_train, y_train: the training split the original was trained on.
    x_test, y_test: the test split.
    num_classes: K.
    forget: the forgotten classes.
    reference: the retrained model, or None.
    relearning: relearn-time setting, None to skip it (it fine-tunes).
    key: randomness of the attacks' subsamples and of relearning.
    attack_samples: cap per side of the membership-inference attacks.
    reference_cache: a dict kept between calls with the same reference, data,
      key and settings (a grid scores many methods against one retrained
      model): the reference's own results are computed once.

  Returns:
    `metrics.evaluate`'s dict plus `mia_confidence`, `mia_entropy` and,
    with a reference, `reference_mia_confidence`, `reference_mia_entropy`,
    `js_to_reference`, `activation_distance`, `relearn_steps`,
    `relearn_steps_reference`, `ain` (None where undefined).
  """
  attack_key, relearn_key = jax.random.split(key)
  seed = int(jax.random.randint(attack_key, (), 0, 2**31 - 1))
  out = metrics.evaluate(model, x_test, y_test, num_classes, forget)
  out.update(attacks(model, x_train, y_train, x_test, y_test, forget, seed=seed,
                     attack_samples=attack_samples))
  if reference is None:
    return out
  cache = {} if reference_cache is None else reference_cache
  if "attacks" not in cache:
    cache["attacks"] = attacks(reference, x_train, y_train, x_test, y_test, forget, seed=seed,
                               attack_samples=attack_samples)
    cache["probs"] = probabilities(reference, x_test)
  ref = cache["attacks"]
  out.update(reference_mia_confidence=ref["mia_confidence"],
             reference_mia_entropy=ref["mia_entropy"])
  p, q = probabilities(model, x_test), cache["probs"]
  out.update(js_to_reference=distance.js_divergence(p, q),
             activation_distance=distance.activation_distance(p, q))
  gone = np.isin(y_train, forget)
  if relearning is None or not gone.any():
    return out
  kw = dict(target_acc=relearning.target, max_steps=relearning.max_steps, lr=relearning.lr,
            batch_size=min(relearning.batch_size, int(gone.sum())), key=relearn_key)
  steps = relearn.relearn_steps(model, x_train[gone], y_train[gone], **kw)
  if "relearn_steps" not in cache:
    cache["relearn_steps"] = relearn.relearn_steps(reference, x_train[gone], y_train[gone], **kw)
  steps_ref = cache["relearn_steps"]
  out.update(relearn_steps=steps, relearn_steps_reference=steps_ref,
             ain=relearn.anamnesis_index(steps, steps_ref))
  return out
