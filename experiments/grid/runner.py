"""Runs a grid: trains each original once, runs every method on it, stores records.

For each cell of this shard (`spec.cells`, `spec.shard`): make the imbalanced
split (the forgotten classes are the majority, §5), holding out the config's
validation images first; restore the original from `originals/<cell key>/`
or train it (GENIU's training phase with the baseline recorder, so I-R and
Unrolling SGD find their records) and save it; then every method not yet in
the store runs through `registry.run_method` -- one call path, GENIU
included, each method seeing only what it declared -- and is scored on the
test split and on the validation images. Unlearning never reads either: the
scores are computed after the method returns.

Determinism: a method's key is derived from the seed and the method's label,
and originals are restored bit for bit, so a grid that is killed and re-run
gives the records an uninterrupted run gives (timings aside).
"""

from __future__ import annotations

import functools
import sys
import time
import zlib
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from experiments.grid import spec as spec_lib
from experiments.grid import store as store_lib
from geniu_jax import checkpoint as ckpt_lib
from geniu_jax import data as data_lib
from geniu_jax import metrics, runs
from geniu_jax.config import Config
from geniu_jax.evaluation import unlearning as evaluation_lib
from geniu_jax.geniu import train as train_lib
from geniu_jax import jsonutil
from geniu_jax.methods import records, registry
from geniu_jax.models import functional as F

ORIGINALS = "originals"


def log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


@functools.lru_cache(maxsize=4)
def load_dataset(source: str) -> data_lib.Dataset:
  return data_lib.load(source)


class CellData:
  """The imbalanced training split, its validation hold-out and the test split."""

  def __init__(self, cell: spec_lib.Cell):
    ds = load_dataset(cell.source)
    cfg = cell.config()
    data = runs.prepare_data(ds, cell.forget, cfg.imbalance, cell.seed,
                             validation_per_class=cell.validation_per_class, log=None)
    self.cfg, self.num_classes = cfg, ds.num_classes
    self.image_shape = ds.image_shape
    self.x_train, self.y_train, self.counts = data.x_train, data.y_train, data.counts
    self.x_test, self.y_test = ds.x_test, ds.y_test
    self.x_val = data.x_test if cell.validation_per_class else None
    self.y_val = data.y_test if cell.validation_per_class else None

  @property
  def validation(self) -> tuple[np.ndarray, np.ndarray] | None:
    """The validation hold-out as (x, y), or None without one."""
    return None if self.x_val is None else (self.x_val, self.y_val)


_predict = jax.jit(lambda g, p, s, x: jnp.argmax(F.classifier_logits(g, p, s, x), -1),
                   static_argnums=0)


def predictions(model: F.SplitModel, x: np.ndarray, chunk: int = 1000) -> np.ndarray:
  """Argmax predictions in fixed-size chunks (one compile for every size)."""
  return metrics.map_chunks(_predict, model, x, chunk)


def score(model: F.SplitModel, data: CellData, forget, *, evaluation: dict | None = None
          ) -> dict:
  """Test (and validation) Acc_r, Acc_f, per class, and where the forgotten
  class's test images go (`forget_predicted`: counts per predicted class).

  `evaluation` (`Evaluation.kwargs`) adds membership inference and, against
  the cell's retrained model, JS, activation distance, relearn steps and AIN
  (`geniu_jax.evaluation.unlearning`).
  """
  k = data.num_classes
  pred = predictions(model, data.x_test)
  out = _accuracies(pred, data.y_test, k, forget)
  gone = np.isin(data.y_test, forget)
  out["forget_predicted"] = np.bincount(pred[gone], minlength=k).tolist()
  if data.x_val is not None:
    val = _accuracies(predictions(model, data.x_val), data.y_val, k, forget)
    out.update({f"val_{m}": v for m, v in val.items()})
  if evaluation is not None:
    extra = evaluation_lib.evaluate(model, x_train=data.x_train, y_train=data.y_train,
                                    x_test=data.x_test, y_test=data.y_test, num_classes=k,
                                    forget=forget, **evaluation)
    out.update({m: extra[m] for m in EVALUATION_FIELDS if m in extra})
  return out


EVALUATION_FIELDS = ("mia_confidence", "mia_entropy", "reference_mia_confidence",
                     "reference_mia_entropy", "js_to_reference", "activation_distance",
                     "relearn_steps", "relearn_steps_reference", "ain")
RELEARN_ALPHA = 0.5   # relearn until alpha x the original's accuracy (the GKT paper's AIN)


class Evaluation:
  """The evaluation of one cell's records: its retrained model (kept beside the
  original, so a resumed grid still has it) and what is computed once of it."""

  def __init__(self, cell: spec_lib.Cell, data: CellData, original: ckpt_lib.Checkpoint,
               originals: epath.Path):
    self.path = originals / f"{cell.key}.retrain"
    self.reference = (ckpt_lib.restore(self.path).classifier
                      if (self.path / "metadata.json").exists() else None)
    gone = np.isin(data.y_train, cell.forget)
    own = predictions(original.classifier, data.x_train[gone]) == data.y_train[gone]
    self.relearning = evaluation_lib.Relearning(target=RELEARN_ALPHA * float(own.mean()))
    self.key = jax.random.fold_in(jax.random.key(cell.seed), 7)
    self.cache: dict = {}
    self.cell, self.data = cell, data

  def keep_reference(self, model: F.SplitModel) -> None:
    """Stores the retrained model the first time one is made for the cell."""
    if self.reference is not None:
      return
    cfg = self.data.cfg
    meta = ckpt_lib.make_metadata(cfg, source=self.cell.source,
                                  image_shape=self.data.image_shape,
                                  num_classes=self.data.num_classes, majority=self.cell.forget,
                                  extra={"retrained_without": list(self.cell.forget)})
    ckpt_lib.save(self.path, model, None, None, meta)
    self.reference = model

  def kwargs(self, method: spec_lib.MethodSpec) -> dict:
    # The retrained model is scored without a reference: it is the reference.
    reference = None if method.method == "retrain" else self.reference
    return dict(reference=reference, relearning=self.relearning, key=self.key,
                reference_cache=self.cache)


def _accuracies(pred, y, num_classes, forget) -> dict:
  correct = np.bincount(y[pred == y], minlength=num_classes)
  count = np.bincount(y, minlength=num_classes)
  return metrics.unlearning_accuracies(correct, count, forget)


def original_path(originals: epath.Path, cell: spec_lib.Cell) -> epath.Path:
  return originals / cell.key


def obtain_original(cell: spec_lib.Cell, data: CellData, originals: epath.Path
                    ) -> tuple[ckpt_lib.Checkpoint, bool]:
  """Restores the cell's original, or trains and saves it. Returns (it, trained?)."""
  path = original_path(originals, cell)
  if (path / "metadata.json").exists():
    return ckpt_lib.restore(path), False
  log(f"  training the original ({len(data.y_train)} images)")
  t0 = time.perf_counter()
  result = train_lib.train(data.cfg, data.x_train, data.y_train, data.num_classes,
                           recorder=records.default_recorder(), log=None,
                           validation=data.validation)
  train_s = time.perf_counter() - t0
  training = runs.TrainingData(data.x_train, data.y_train, data.x_test, data.y_test,
                               data.num_classes, cell.source, cell.forget, data.counts)
  runs.save_run(path, data.cfg, training, result,
                extra={"grid_cell": cell.fields(), "train_s": train_s})
  return ckpt_lib.restore(path), True


def method_key(seed: int, label: str) -> jax.Array:
  return jax.random.fold_in(jax.random.key(seed), zlib.crc32(label.encode()) % (2**31))


class Context(NamedTuple):
  """What an analysis gets: the cell, its data, its original and settings."""
  cell: spec_lib.Cell
  data: CellData
  original: ckpt_lib.Checkpoint
  cfg: Config            # the preset + the variant's and the method's overrides
  key: jax.Array
  workdir: epath.Path    # for arrays an analysis keeps (e.g. images for a figure)
  record_key: str
  originals: epath.Path | None = None   # where the grid keeps every cell's original


# Analyses: things a table measures on an original that are not unlearning
# methods (the original itself, Table 2's perception, Figure 7's curve ...).
# Each returns (a classifier to score, or None; an info dict stored in its record).
ANALYSES: dict[str, Callable[[Context], tuple[F.SplitModel | None, dict]]] = {}


def register_analysis(name: str):
  """Decorator adding an analysis that a MethodSpec can name as its method."""
  def wrap(fn):
    if name in registry.METHODS:
      raise ValueError(f"analysis {name!r} would shadow the registered method")
    ANALYSES[name] = fn
    return fn
  return wrap


@register_analysis("original")
def _original(ctx: Context) -> tuple[F.SplitModel, dict]:
  meta = ctx.original.metadata
  return ctx.original.classifier, {"train_s": meta.get("train_s"), "history": meta.get("history"),
                                   "checks": meta.get("checks")}


def run_one(method: spec_lib.MethodSpec, cell: spec_lib.Cell, data: CellData,
            original: ckpt_lib.Checkpoint, workdir: epath.Path,
            originals: epath.Path | None = None) -> tuple[F.SplitModel | None, dict]:
  """One method (through the registry) or analysis on one original. The info
  holds the full effective config, so a record says what ran even after a
  preset changes."""
  cfg = spec_lib.method_config(cell, method)
  key = method_key(cell.seed, method.label)
  if cfg.precision != data.cfg.precision:   # e.g. bfloat16 unlearning of a float32 original
    graphdef = F.classifier_graphdef(data.num_classes, data.image_shape, cfg.width,
                                     cfg.lowering, cfg.precision)
    original = original._replace(classifier=original.classifier._replace(graphdef=graphdef))
  if method.method in ANALYSES:
    ctx = Context(cell, data, original, cfg, key, workdir, spec_lib.record_key(cell, method),
                  originals)
    model, info = ANALYSES[method.method](ctx)
    return model, dict(info, config=cfg.to_dict())
  available = registry.inputs_from(data.x_train, data.y_train, cell.forget,
                                   artifacts=(original.generator, original.prompts),
                                   records=original.records,
                                   validation=data.validation)
  model, info = registry.run_method(
      method.method, cfg, key, classifier=original.classifier, forget=cell.forget,
      num_classes=data.num_classes, image_shape=data.image_shape, **available)
  return model, dict(info, config=cfg.to_dict())


def make_record(cfg: spec_lib.GridConfig, cell: spec_lib.Cell, method: spec_lib.MethodSpec,
                scores: dict, info: dict) -> dict:
  info = dict(info)
  return {
      "experiment": cfg.name, "dataset": cell.dataset, "source": cell.source,
      "forget": list(cell.forget), "majority": list(cell.forget),
      "imbalance": spec_lib._jsonable(cell.config().imbalance), "seed": cell.seed,
      "preset": cell.preset, "train_variant": cell.variant.label,
      "method": method.label, "registry_method": method.method,
      "settings": spec_lib._jsonable({**dict(cell.variant.overrides), **dict(method.overrides)}),
      "original": cell.key, **scores,
      "unlearn_ms": info.pop("unlearn_ms", None), "compile_ms": info.pop("compile_ms", None),
      "info": jsonutil.plain(info), "versions": ckpt_lib.package_versions(),
      "device": str(jax.devices()[0].device_kind), "host": store_lib.host(),
      "finished": store_lib.now(),
  }


class Progress:
  """done / total records of this shard, elapsed, ETA from this run's pace."""

  def __init__(self, total: int, done: int):
    self.total, self.done, self.start_done = total, done, done
    self.t0 = time.perf_counter()

  def line(self, what: str) -> str:
    elapsed = time.perf_counter() - self.t0
    ran = self.done - self.start_done
    eta = "?" if ran == 0 else _hms(elapsed / ran * (self.total - self.done))
    return f"[{self.done}/{self.total} | {_hms(elapsed)} elapsed | ETA {eta}] {what}"


def _hms(seconds: float) -> str:
  s = int(seconds)
  return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def run(cfg: spec_lib.GridConfig, workdir, *, shard: tuple[int, int] = (0, 1),
        sources: dict[str, str] | None = None, originals=None, train: bool = True,
        reevaluate: bool = False,
        after_record: Callable[[dict], None] | None = None) -> store_lib.Store:
  """Fills the store with this shard's missing records.

  `train=False` skips the cells whose original is not there yet (e.g. to run
  cheap settings on the originals another grid has trained so far).
  `reevaluate` (with `cfg.evaluate`) also re-makes the scored records that
  lack the evaluation columns, e.g. made before evaluation was switched on:
  `mia_confidence`, or `js_to_reference` where the cell's retrained model is
  now kept. A re-made record replaces the old one whole.
  """
  store = store_lib.Store(workdir)
  originals = epath.Path(originals) if originals else store.root / ORIGINALS
  grid_cells = spec_lib.shard(spec_lib.cells(cfg, sources), *shard)
  work = list(spec_lib.iter_work(cfg, grid_cells))
  done = store.done()
  if reevaluate and cfg.evaluate:
    with_reference = {c.key for c in grid_cells
                      if (originals / f"{c.key}.retrain" / "metadata.json").exists()}
    done -= {r["key"] for r in store.read_records() if "acc_r" in r and (
        "mia_confidence" not in r
        or (r.get("method") != "retrain" and r.get("original") in with_reference
            and r.get("js_to_reference") is None))}
  progress = Progress(len(work), sum(spec_lib.record_key(c, m) in done for c, m in work))
  log(progress.line(f"{cfg.name}: shard {shard[0]}/{shard[1]}, {len(grid_cells)} cells"))
  for cell in grid_cells:
    todo = [m for m in spec_lib.methods_for(cfg, cell)
            if spec_lib.record_key(cell, m) not in done]
    if not todo:
      continue
    if not train and not (original_path(originals, cell) / "metadata.json").exists():
      continue
    log(progress.line(cell.describe()))
    data = CellData(cell)
    original, _ = obtain_original(cell, data, originals)
    evaluation = Evaluation(cell, data, original, originals) if cfg.evaluate else None
    for method in todo:
      model, info = run_one(method, cell, data, original, store.root, originals)
      if evaluation is not None and method.method == "retrain" and model is not None:
        evaluation.keep_reference(model)
      scores = {} if model is None else score(
          model, data, cell.forget,
          evaluation=None if evaluation is None else evaluation.kwargs(method))
      record = make_record(cfg, cell, method, scores, info)
      store.write(spec_lib.record_key(cell, method), record)
      progress.done += 1
      result = "done" if model is None else (f"acc_r {record['acc_r']:.4f} "
                                             f"acc_f {record['acc_f']:.4f}")
      log(progress.line(f"{cell.describe()} {method.label}: {result}"))
      if after_record:
        after_record(record)
  return store
