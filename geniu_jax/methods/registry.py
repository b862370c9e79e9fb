"""One registry of unlearning methods with one signature and declared data access.

Every method is `fn(grant: Grant, cfg: Config, key) -> (SplitModel, info dict)`.
A method declares, once, what it may touch at unlearning time
(`Access`); `run_method` builds a `Grant` that holds only those things, and a
`Grant` raises `AccessError` for anything else. So a data-free method such as
GENIU or GKT cannot receive training data by mistake: the caller may hand
`run_method` everything it has, and the method still sees only its share.

A method also declares the `Config` fields of its unlearning setting it reads
(`Method.settings`), so a caller (the CLI, the grid) can refuse a setting the
method would ignore.

The built-in methods live in the sibling modules (`geniu_unlearning`,
`geniu_variants`, `retrain`, `gkt`, `unsir`, `ir`, `unrolling`, `gkt_vae`) and
register themselves when the package `geniu_jax.methods` is imported.
`inputs_from` builds the keyword inputs of `run_method` from a training split.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from geniu_jax.config import Config
from geniu_jax.models.functional import SplitModel


class Access(enum.Enum):
  MODEL = "model"                  # the original classifier (always granted)
  ARTIFACTS = "artifacts"          # GENIU's generator and prompts
  RETAINED_DATA = "retained_data"  # training data of the retained classes
  ALL_DATA = "all_data"            # the whole training set
  RECORDS = "records"              # training-time records (I-R, Unrolling)


class AccessError(PermissionError):
  """A method asked for something it did not declare."""


class Artifacts(NamedTuple):
  """GENIU's training-phase artifacts (`Access.ARTIFACTS`).

  Attributes:
    generator: the VAE generator g.
    prompts: [B * K', H, W, C] noise prompts, B per class of the K' classes
      that still have them (ascending class order).
    dropped: the classes forgotten by earlier requests whose prompts the
      checkpoint no longer holds (`geniu_jax.forget_requests`).
  """
  generator: SplitModel
  prompts: Any
  dropped: tuple[int, ...] = ()


# Config fields of GENIU-style in-batch tuning, and of the baselines' choice
# between their recommended and their reference setting.
TUNING_SETTINGS = frozenset({
    "unlearn_rounds", "unlearn_lr", "stop_forget_prob", "retain_target", "forget_loss",
    "forget_margin", "sharpen_target", "sharpen_mode", "sharpen_step", "sharpen_steps",
    "proxies_per_class"})
BASELINE_SETTINGS = frozenset({"baseline_setting", "method_settings"})


_FIELD_ACCESS = {"artifacts": Access.ARTIFACTS, "retained_data": Access.RETAINED_DATA,
                 "retained_validation": Access.RETAINED_DATA,
                 "all_data": Access.ALL_DATA, "records": Access.RECORDS}


class Grant:
  """What one method may use. Attributes outside its declared access raise."""

  def __init__(self, method: str, access: frozenset[Access], *, classifier: SplitModel,
               forget: tuple[int, ...], num_classes: int, image_shape: tuple[int, ...],
               **granted: Any):
    self._method, self._access = method, access
    self.classifier, self.forget = classifier, tuple(forget)
    self.num_classes, self.image_shape = num_classes, tuple(image_shape)
    self._granted = granted

  def __getattr__(self, name: str) -> Any:
    if name.startswith("_") or name not in _FIELD_ACCESS:
      raise AttributeError(name)
    if _FIELD_ACCESS[name] not in self._access:
      raise AccessError(f"method {self._method!r} did not declare access to {name}")
    value = self._granted.get(name)
    if value is None:
      raise AccessError(f"method {self._method!r} needs {name}, but none was provided")
    return value

  @property
  def retained_classes(self) -> tuple[int, ...]:
    return tuple(k for k in range(self.num_classes) if k not in self.forget)


@dataclasses.dataclass(frozen=True)
class Method:
  """A registered method.

  Attributes:
    name: its registry name.
    access: what it may use at unlearning time.
    fn: `fn(grant, cfg, key) -> (unlearned classifier, info)`; info has
      `unlearn_ms` and `compile_ms` (`methods.common.Stopwatch`).
    description: one line for listings.
    settings: the `Config` fields of the unlearning setting it reads.
  """
  name: str
  access: frozenset[Access]
  fn: Callable[[Grant, Config, Any], tuple[SplitModel, dict]]
  description: str = ""
  settings: frozenset[str] = frozenset()


METHODS: dict[str, Method] = {}


def register(name: str, access: set[Access], description: str = "",
             settings: Sequence[str] = ()):
  """Decorator adding an unlearning function to `METHODS`."""
  def wrap(fn):
    METHODS[name] = Method(name, frozenset(access) | {Access.MODEL}, fn, description,
                           frozenset(settings))
    return fn
  return wrap


def run_method(name: str, cfg: Config, key, *, classifier: SplitModel,
               forget, num_classes: int, image_shape, **available: Any
               ) -> tuple[SplitModel, dict]:
  """Runs a registered method, handing it only what it declared.

  `available` may hold artifacts (`Artifacts`), retained_data=(x, y),
  retained_validation=(x, y) (the retained classes of a validation split held
  out of the training data), all_data=(x, y), records=...; anything
  undeclared is withheld.
  """
  if name not in METHODS:
    raise ValueError(f"unknown method {name!r}; registered: {sorted(METHODS)}")
  method = METHODS[name]
  unknown = set(available) - set(_FIELD_ACCESS)
  if unknown:
    raise ValueError(f"unknown inputs {sorted(unknown)}")
  granted = {k: v for k, v in available.items() if _FIELD_ACCESS[k] in method.access}
  grant = Grant(name, method.access, classifier=classifier, forget=tuple(forget),
                num_classes=num_classes, image_shape=image_shape, **granted)
  return method.fn(grant, cfg, key)


def inputs_from(x_train=None, y_train=None, forget=(), *, artifacts=None,
                records=None, validation=None) -> dict[str, Any]:
  """Everything a caller may offer `run_method`, from an (imbalanced) training split.

  `retained_data` holds only the samples of the classes not in `forget`;
  `all_data` the whole split; `validation` (x, y), a split held out of the
  training data, gives `retained_validation`. Entries that are None are left out, so a method
  that needs them gets an `AccessError` naming what is missing.
  """
  available: dict[str, Any] = {}
  if x_train is not None:
    x, y = np.asarray(x_train), np.asarray(y_train)
    keep = ~np.isin(y, np.asarray(tuple(forget), dtype=y.dtype))
    available["all_data"] = (x, y)
    available["retained_data"] = (x[keep], y[keep])
  if validation is not None and len(validation[1]):
    x, y = np.asarray(validation[0]), np.asarray(validation[1])
    keep = ~np.isin(y, np.asarray(tuple(forget), dtype=y.dtype))
    available["retained_validation"] = (x[keep], y[keep])
  if artifacts is not None and artifacts[0] is not None:  # (None, None): no GENIU phase
    available["artifacts"] = Artifacts(*artifacts)
  if records is not None:
    available["records"] = records
  return available


def access_table() -> dict[str, list[str]]:
  """{method: sorted access names} of every registered method (for reports)."""
  return {name: sorted(a.value for a in m.access) for name, m in sorted(METHODS.items())}
