"""Whole runs as library calls: prepare data, train, unlearn, evaluate.

The CLI, the experiments and the benchmarks all go through these functions, so
a run from Python and a run from the shell are the same run.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import numpy as np

from geniu_jax import checkpoint as ckpt_lib
from geniu_jax import data as data_lib
from geniu_jax import metrics
from geniu_jax.config import Config
from geniu_jax.geniu import train as train_lib
from geniu_jax.models import functional as F


class TrainingData(NamedTuple):
  """An imbalanced training split and an evaluation split.

  Attributes:
    x_train, y_train: the imbalanced training split.
    x_test, y_test: the test split, or with `held_out` a balanced validation
      split held out of the training data (`prepare_data`).
    num_classes, source, majority, counts: the dataset's K, its source string,
      the majority classes and the training split's class counts.
    held_out: whether x_test/y_test are that validation split.
  """
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  source: str
  majority: tuple[int, ...]
  counts: np.ndarray
  held_out: bool = False


def check_classes(classes: Sequence[int], num_classes: int, what: str) -> tuple[int, ...]:
  """Validates a list of class ids (in range, distinct, not every class)."""
  classes = tuple(int(k) for k in classes)
  if not classes:
    raise data_lib.DataError(f"no {what} classes given")
  bad = [k for k in classes if not 0 <= k < num_classes]
  if bad:
    raise data_lib.DataError(f"{what} classes {bad} are outside [0, {num_classes})")
  if len(set(classes)) != len(classes):
    raise data_lib.DataError(f"{what} classes {list(classes)} contain duplicates")
  if len(set(classes)) >= num_classes:
    raise data_lib.DataError(f"cannot {what} every one of the {num_classes} classes")
  return classes


def holdout_balanced(x: np.ndarray, y: np.ndarray, per_class: int, seed: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Splits off `per_class` samples of every class as a balanced validation set.

  Returns (x_rest, y_rest, x_val, y_val). Used to choose hyperparameters
  without looking at the test split.
  """
  rng = np.random.default_rng(seed)
  val = np.concatenate([rng.permutation(np.flatnonzero(y == k))[:per_class]
                        for k in np.unique(y)])
  rest = np.setdiff1d(np.arange(len(y)), val)
  return x[rest], y[rest], x[np.sort(val)], y[np.sort(val)]


def prepare_data(source: str | data_lib.Dataset, majority: Sequence[int],
                 imbalance, seed: int, validation_per_class: int = 0,
                 log: Callable[[str], None] | None = print) -> TrainingData:
  """Loads a source and makes the paper's imbalanced training split (§3, §5).

  With `validation_per_class > 0` a balanced validation set is held out of the
  training split first and returned in place of the test split.
  """
  ds = data_lib.load(source) if isinstance(source, str) else source
  majority = check_classes(majority, ds.num_classes, "majority")
  rate = data_lib.parse_imbalance(imbalance, ds.num_classes)
  x, y, x_eval, y_eval = ds.x_train, ds.y_train, ds.x_test, ds.y_test
  if validation_per_class:
    x, y, x_eval, y_eval = holdout_balanced(x, y, validation_per_class, seed)
  x, y = data_lib.make_imbalanced(x, y, majority, rate, ds.num_classes, seed)
  counts = data_lib.class_counts(y, ds.num_classes)
  if log:
    log(f"{ds.name}: {len(y)} training images, " + data_lib.format_counts(counts))
  return TrainingData(x, y, x_eval, y_eval, ds.num_classes, ds.name, majority, counts,
                      held_out=bool(validation_per_class))


def training_data_of(meta: dict, log: Callable[[str], None] | None = None) -> TrainingData:
  """The split a checkpoint was trained on, rebuilt from its metadata: same
  source, majority, rates and seed, and the same validation hold-out (returned
  as the evaluation split, `held_out`) when it had one."""
  per_class = (meta.get("validation_per_class")
               or (meta.get("grid_cell") or {}).get("validation_per_class", 0))
  return prepare_data(meta["data_source"], meta["majority"], meta["imbalance"], meta["seed"],
                      validation_per_class=per_class, log=log)


def train_geniu(cfg: Config, data: TrainingData, *, geniu: bool = True, recorder=None,
                log: Callable[[str], None] | None = print, state_dir=None,
                resume: bool = False) -> train_lib.TrainResult:
  """`train.train` on `data`; the plateau rule steps on its held-out split."""
  if cfg.lr_schedule == "plateau" and not data.held_out:
    raise ValueError("lr_schedule 'plateau' steps on the loss of a validation split held out "
                     "of the training data, never the test split: prepare the data with "
                     "validation_per_class > 0 (geniu train --validation-per-class N)")
  return train_lib.train(cfg, data.x_train, data.y_train, data.num_classes,
                         geniu=geniu, recorder=recorder, log=log, state_dir=state_dir,
                         resume=resume, validation=(data.x_test, data.y_test)
                         if data.held_out else None)


def save_run(out: str, cfg: Config, data: TrainingData, result: train_lib.TrainResult,
             extra: dict | None = None):
  """Writes a trained run; its metadata keeps the history and the sanity checks.

  `checks` (`train.training_checks`) is what `geniu unlearn` reads to refuse a
  generator that never trained; results that carry none (e.g. from
  `sweep.train_many`) get it from their history, without the class check.
  """
  checks = result.checks
  if checks is None:
    checks = train_lib.training_checks(result.history, None,
                                       geniu=result.generator is not None,
                                       noise_start_acc=cfg.noise_start_acc)
  meta = ckpt_lib.make_metadata(
      cfg, source=data.source, image_shape=data.x_train.shape[1:],
      num_classes=data.num_classes, majority=data.majority,
      extra=dict(extra or {}, class_counts=[int(c) for c in data.counts],
                 history=result.history, checks=checks))
  return ckpt_lib.save(out, result.classifier, result.generator, result.prompts, meta,
                       records=result.records)


def evaluate(classifier: F.SplitModel, x, y, num_classes: int, forget: Sequence[int]) -> dict:
  return metrics.evaluate(classifier, x, y, num_classes, forget)
