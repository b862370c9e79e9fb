"""What a grid experiment runs: its config, its cells, their keys and shards.

A grid is the product datasets x forget sets x imbalance settings x training
variants x seeds. Each point is a *cell*: one original model, trained once
with GENIU's training phase (the forgotten classes are the majority, as in
every table of the paper), on which every method of the config runs. A
(cell, method) pair gives one record of the store.

Keys are content hashes of the fields that decide the numbers, so the same
cell in a re-run, on another host or in another experiment sharing an
originals directory, gets the same key; the data source's local path is not
part of it (the dataset's name is), so hosts may keep the files in different
places.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Iterator, Sequence

from geniu_jax.config import Config, get_config as preset_config

Overrides = tuple[tuple[str, Any], ...]
# Config fields read only by unlearning: not part of an original's key.
UNLEARNING_FIELDS = ("unlearn_lr", "unlearn_rounds", "stop_forget_prob", "retain_target",
                     "forget_loss", "forget_margin", "sharpen_target", "sharpen_step",
                     "sharpen_steps", "sharpen_mode")
# Methods and analyses that never read the unlearning fields: their records
# keep their keys when a preset's unlearning setting changes (a retrain is
# minutes of CPU). Anything not listed is keyed on every field, the safe side.
IGNORES_UNLEARNING_FIELDS = frozenset({
    "original", "retrain", "gkt", "unsir", "ir", "ir_relabel", "unrolling",
    "proxy_diagnostics", "batch_diagnostics", "geniu_proxies", "perception", "training_cost"})
# The paper's presets adapt to the image size (CIFAR-10 schedule at 32x32).
IMAGE_SHAPES = {"cifar10": (32, 32, 3)}


def overrides(**fields: Any) -> Overrides:
  """A hashable, ordered form of Config field overrides."""
  return tuple(sorted(fields.items()))


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """One column of a table.

  Attributes:
    label: the name in records and reports (e.g. `geniu_paper`).
    method: a registered method (`geniu_jax.methods.registry.METHODS`) or
      `original` (the original model, evaluated as is).
    overrides: Config fields set for this method only (unlearning settings).
    seeds: the seeds it runs on; None: every seed of the grid.
  """
  label: str
  method: str
  overrides: Overrides = ()
  seeds: tuple[int, ...] | None = None


@dataclasses.dataclass(frozen=True)
class TrainVariant:
  """Training-phase settings of a row of a table (Tables 10-12 vary them)."""
  label: str = "default"
  overrides: Overrides = ()


@dataclasses.dataclass(frozen=True)
class GridConfig:
  """One experiment.

  Attributes:
    name: the experiment's name (stored in every record).
    preset: `smoke` | `cpu` | `paper` (geniu_jax.config).
    datasets: (name, source) pairs; the name (`fashion_mnist`, `mnist`,
      `kmnist`, `cifar10`) picks the paper's numbers, the source is a
      `geniu_jax.data.load` string and may be replaced on the command line.
    forget_sets: the forgotten classes of each cell; they are the majority.
    seeds: training seeds (data subsampling and initialisation).
    imbalances: minority keep-rates r (a float or K rates); None: the preset's.
    train_variants: training settings, one original per variant.
    methods: the methods run on every original.
    validation_per_class: images of every class held out of the training
      split before it is made imbalanced; every method is also scored on
      them, so unlearning settings can be chosen without the test split.
    curve_every: Figure 7: evaluate GENIU's parameters every k tuning rounds
      (0: off).
    evaluate: also record membership inference and, against the cell's
      retrained model (kept as `originals/<cell key>.retrain`), JS
      divergence, activation distance, relearn steps and AIN
      (`runner.Evaluation`); the retrain method must run first to have one.
    retired: methods whose records the report still reads, on the cells they
      ran on, but that run on no new cell (e.g. settings that already failed a
      selection criterion no further cell can make them pass).
  """
  name: str
  preset: str
  datasets: tuple[tuple[str, str], ...]
  forget_sets: tuple[tuple[int, ...], ...]
  seeds: tuple[int, ...]
  methods: tuple[MethodSpec, ...]
  imbalances: tuple[Any, ...] = (None,)
  train_variants: tuple[TrainVariant, ...] = (TrainVariant(),)
  validation_per_class: int = 0
  curve_every: int = 0
  evaluate: bool = False
  retired: tuple[MethodSpec, ...] = ()

  def replace(self, **fields) -> "GridConfig":
    return dataclasses.replace(self, **fields)


@dataclasses.dataclass(frozen=True)
class Cell:
  """One original model of the grid and the settings it was trained with."""
  dataset: str
  source: str
  forget: tuple[int, ...]
  imbalance: Any
  variant: TrainVariant
  seed: int
  preset: str
  validation_per_class: int

  def config(self) -> Config:
    """The run config of the original: preset, imbalance, variant, seed."""
    cfg = preset_config(self.preset, IMAGE_SHAPES.get(self.dataset), seed=self.seed,
                        imbalance=_tuple(self.imbalance))
    return dataclasses.replace(cfg, **dict(self.variant.overrides))

  def fields(self) -> dict[str, Any]:
    """What decides the original's numbers (the key's content): the data and
    every training setting that differs from the Config defaults, so a
    changed preset trains new originals and a new Config field does not."""
    return {"dataset": self.dataset, "majority": list(self.forget),
            "validation_per_class": self.validation_per_class,
            "train": config_fields(self.config(), exclude=UNLEARNING_FIELDS)}

  @property
  def key(self) -> str:
    return content_key(self.fields())

  def describe(self) -> str:
    imb = "" if self.imbalance is None else f" r={self.imbalance}"
    var = "" if self.variant.label == "default" else f" {self.variant.label}"
    return f"{self.dataset} forget {list(self.forget)}{imb}{var} seed {self.seed}"


def _tuple(value):
  return tuple(value) if isinstance(value, list) else value


def _jsonable(value):
  if isinstance(value, tuple):
    return [_jsonable(v) for v in value]
  if isinstance(value, dict):
    return {k: _jsonable(v) for k, v in value.items()}
  return value


def content_key(fields: dict) -> str:
  """A short stable hash of JSON-able fields."""
  text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def method_config(cell: Cell, method: MethodSpec) -> Config:
  return dataclasses.replace(cell.config(), **dict(method.overrides))


# Fields that decide nothing while sharpening is off (sharpen_target None).
_SHARPENING_DETAILS = ("sharpen_step", "sharpen_steps", "sharpen_mode")


def config_fields(cfg: Config, exclude: Sequence[str] = ()) -> dict[str, Any]:
  """The fields of `cfg` that differ from the Config defaults and decide the numbers."""
  default = Config().to_dict()
  fields = cfg.to_dict()
  if fields["sharpen_target"] is None:
    exclude = tuple(exclude) + _SHARPENING_DETAILS
  return {k: v for k, v in fields.items() if k not in exclude and v != default[k]}


def record_key(cell: Cell, method: MethodSpec) -> str:
  """The store key of one (cell, method) record: the cell and the method's
  effective settings, so a record made with other settings (a preset that
  changed since) is not taken for this one."""
  exclude = UNLEARNING_FIELDS if method.method in IGNORES_UNLEARNING_FIELDS else ()
  return content_key({"cell": cell.key, "label": method.label, "method": method.method,
                      "config": config_fields(method_config(cell, method), exclude)})


def cells(cfg: GridConfig, sources: dict[str, str] | None = None) -> list[Cell]:
  """Every cell, seed-major: all of seed 0 comes first, so a grid stopped
  early has whole seeds rather than whole classes."""
  sources = sources or {}
  out = []
  for seed in cfg.seeds:
    for name, source in cfg.datasets:
      for forget in cfg.forget_sets:
        for imbalance in cfg.imbalances:
          for variant in cfg.train_variants:
            out.append(Cell(name, sources.get(name, source), tuple(forget), imbalance,
                            variant, seed, cfg.preset, cfg.validation_per_class))
  return out


def methods_for(cfg: GridConfig, cell: Cell) -> list[MethodSpec]:
  return [m for m in cfg.methods if m.seeds is None or cell.seed in m.seeds]


def parse_shard(text: str) -> tuple[int, int]:
  """`i/n` -> (i, n), 0 <= i < n."""
  try:
    i, n = (int(v) for v in text.split("/"))
  except ValueError:
    raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
  if n < 1 or not 0 <= i < n:
    raise ValueError(f"--shard {text}: need n >= 1 and 0 <= i < n")
  return i, n


def shard(all_cells: list[Cell], index: int, count: int) -> list[Cell]:
  """The cells of shard `index` of `count`: every count-th cell of the grid's
  order, so shards are disjoint, cover the grid, and each gets a share of
  every seed. A cell is one original, so no original is trained twice."""
  return [c for i, c in enumerate(all_cells) if i % count == index]


def iter_work(cfg: GridConfig, grid_cells: list[Cell]) -> Iterator[tuple[Cell, MethodSpec]]:
  for cell in grid_cells:
    for method in methods_for(cfg, cell):
      yield cell, method
