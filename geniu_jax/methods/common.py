"""Shared machinery of the unlearning methods: timing, AOT compile cache, fine-tuning.

Timing (Table 4). Every method measures itself with a `Stopwatch`:
``unlearn_ms`` is the wall time from the original model to the unlearned one
(host-side data selection, transfers, every device step) MINUS the XLA
compilation it triggered, and ``compile_ms`` is that compilation, measured by
compiling ahead of time (``jit(f).lower(*args).compile()``) before running.
Executables are kept in one bounded cache (`EXECUTABLES`, the
`MAX_EXECUTABLES` most recently used, per function and argument shapes) with
the time their compilation took, and every run that uses one reports that
time as its ``compile_ms``: the compilation the run needs, whatever ran
before it in the process, while a repeated run reuses the executable (each
AOT compile, even one loaded from the persistent cache, maps new code, and a
long process that compiled afresh every run ran out of mappings). Only the
compilation a run actually did is taken out of its ``unlearn_ms``, the
number the paper reports (its PyTorch baselines have no compile step). The
jitted functions themselves are kept in bounded caches
(`functools.lru_cache(maxsize=16)`), so tracing is not repeated either.

Fine-tuning. The data-access baselines (UNSIR's impair and repair, I-R's
repair, relabelling, Unrolling's incremental training) all run "ordinary
training steps on some batches". They share one jitted step per
(classifier, optimizer family), with the learning rate and other
hyperparameters injected as arrays (`optax.inject_hyperparams`), and a host
loop over host-gathered batches of a fixed size: so every such phase of every
method reuses ONE compiled program per batch size instead of compiling a scan
per dataset size (compilation dominates on a small CPU). BatchNorm runs in
train mode, as in the reference implementations (``model.train()``).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from geniu_jax.config import Config
from geniu_jax.models import functional as F

def _signature(args) -> tuple:
  leaves, treedef = jax.tree.flatten(args)
  return treedef, tuple((jnp.shape(x), jnp.result_type(x), isinstance(x, (int, float)))
                        for x in leaves)


MAX_EXECUTABLES = 32
# (jitted, argument signature) -> (executable, seconds its compilation took),
# least recently used first.
EXECUTABLES: collections.OrderedDict = collections.OrderedDict()


class Stopwatch:
  """Wall time of one unlearning run, with AOT compilation counted separately.

  Attributes:
    start: `time.perf_counter()` at the start of the run.
    compile_s: compilation this run actually did (taken out of its wall time).
    needed_s: compilation its programs needed (`compile_ms`), done now or
      earlier in the process.
  """

  def __init__(self):
    self.start = time.perf_counter()
    self.compile_s = 0.0
    self.needed_s = 0.0
    self._used: set = set()

  def compiled(self, jitted: Callable, *args) -> Callable:
    """The compiled executable of `jitted` for these arguments (`EXECUTABLES`)."""
    key = (jitted, _signature(args))
    if key in EXECUTABLES:
      EXECUTABLES.move_to_end(key)
      exe, seconds = EXECUTABLES[key]
    else:
      t0 = time.perf_counter()
      exe = jitted.lower(*args).compile()
      seconds = time.perf_counter() - t0
      self.compile_s += seconds
      EXECUTABLES[key] = (exe, seconds)
      while len(EXECUTABLES) > MAX_EXECUTABLES:
        EXECUTABLES.popitem(last=False)
    if key not in self._used:
      self._used.add(key)
      self.needed_s += seconds
    return exe

  def run(self, jitted: Callable, *args):
    """Compiles (if needed, timed apart) and runs `jitted(*args)`."""
    return self.compiled(jitted, *args)(*args)

  def report(self) -> dict:
    wall = time.perf_counter() - self.start
    return {"unlearn_ms": (wall - self.compile_s) * 1e3, "compile_ms": self.needed_s * 1e3,
            "timing": "wall minus AOT compile"}


def init_split(watch: "Stopwatch", module_cls, *args, key: jax.Array, **kwargs) -> F.SplitModel:
  """`models.functional.init_split`, its one jitted program compiled and run
  by `watch` (so the compilation counts as compilation)."""
  return F.init_split(module_cls, *args, key=key, run=watch.run, **kwargs)


def by_preset(cfg: Config, table: dict[str, Any], reference: Any = None, *,
              method: str | None) -> Any:
  """The setting of `cfg.preset` in `table`, or `reference`, the published
  code's, when `cfg.baseline_setting` asks for it; then the fields of
  `cfg.method_settings` named `method.field` set over it (None: a plain
  per-preset value that takes none). A preset the table lacks, or a field
  the setting lacks, raises."""
  if cfg.baseline_setting == "reference":
    if reference is None:
      raise ValueError("this method has no `reference` setting; use baseline_setting "
                       "'recommended'")
    chosen = reference
  elif cfg.preset not in table:
    raise ValueError(f"no setting for preset {cfg.preset!r} (this method has {sorted(table)})")
  else:
    chosen = table[cfg.preset]
  return chosen if method is None else with_method_settings(chosen, cfg.method_settings, method)


def with_method_settings(settings: Any, pairs, method: str) -> Any:
  """`settings` (a dataclass, or a plain value) with the ("method.field",
  value) pairs of this `method` applied; a number's type must match the field's."""
  mine = {key.partition(".")[2]: value for key, value in pairs
          if key.partition(".")[0] == method}
  if not mine:
    return settings
  if not dataclasses.is_dataclass(settings):
    raise ValueError(f"method {method!r} has no settings to set (got {sorted(mine)})")
  known = {f.name for f in dataclasses.fields(settings)}
  bad = sorted(set(mine) - known)
  if bad:
    raise ValueError(f"method {method!r} has no setting {', '.join(bad)}; its settings: "
                     f"{', '.join(sorted(known))}")
  for name, value in mine.items():
    old = getattr(settings, name)
    # bool is an int subclass: True must not pass as a count, nor 1 as a flag.
    same = isinstance(value, type(old)) and isinstance(value, bool) == isinstance(old, bool)
    ok = (old is None or value is None or same
          or (isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool)))
    if not ok:
      raise ValueError(f"{method}.{name} must be a {type(old).__name__}, got {value!r}")
  return dataclasses.replace(settings, **mine)


def split_data(data: tuple[np.ndarray, np.ndarray], forget: Sequence[int]):
  """(x_forget, y_forget, x_retain, y_retain) from a granted (x, y)."""
  x, y = (np.asarray(a) for a in data)
  mask = np.isin(y, np.asarray(forget))
  return x[mask], y[mask], x[~mask], y[~mask]


def subsample_per_class(x, y, per_class: int, rng: np.random.Generator):
  """At most `per_class` random samples of every class present (capped by what exists)."""
  keep = np.concatenate([rng.permutation(np.flatnonzero(y == k))[:per_class]
                         for k in np.unique(y)])
  keep = np.sort(keep)
  return x[keep], y[keep]


def host_rng(key: jax.Array) -> np.random.Generator:
  """A numpy generator seeded from a JAX key (host-side shuffling)."""
  return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())


# --- fine-tuning -----------------------------------------------------------

def _sgd_wd(learning_rate, momentum, weight_decay):
  # torch.optim.SGD(momentum, weight_decay): g += wd * w; buf = mu * buf + g; w -= lr * buf.
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.sgd(learning_rate, momentum=momentum))


def make_optimizer(kind: str, **hparams) -> optax.GradientTransformation:
  """`adam` (learning_rate) or `sgd` (learning_rate, momentum, weight_decay), injected."""
  if kind == "adam":
    return optax.inject_hyperparams(optax.adam)(learning_rate=hparams["learning_rate"])
  if kind == "sgd":
    return optax.inject_hyperparams(_sgd_wd)(
        learning_rate=hparams["learning_rate"], momentum=hparams.get("momentum", 0.0),
        weight_decay=hparams.get("weight_decay", 0.0))
  raise ValueError(f"unknown optimizer {kind!r}")


@functools.lru_cache(maxsize=16)
def fit_step(graphdef, kind: str) -> Callable:
  """Jitted `(params, stats, opt_state, x, y) -> (params, stats, opt_state, loss, grads)`.

  One CE step in BatchNorm train mode; `grads` are the step's gradients at the
  incoming params (Unrolling SGD records the first one).
  """
  optimizer = make_optimizer(kind, learning_rate=0.0, momentum=0.0, weight_decay=0.0)

  def step(params, stats, opt_state, x, y):
    def loss_fn(p):
      logits, new_stats = F.classifier_apply(graphdef, p, stats, x, train=True)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new_stats

    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_stats, opt_state, loss, grads

  return jax.jit(step)


def epoch_batches(n: int, batch_size: int, epochs: int, rng: np.random.Generator) -> np.ndarray:
  """[steps, batch] sample indices: each epoch a permutation, the last batch of an
  epoch topped up from the start of that permutation so every batch has one shape."""
  batch = min(batch_size, n)
  rows = []
  for _ in range(epochs):
    perm = rng.permutation(n)
    steps = -(-n // batch)
    perm = np.concatenate([perm, perm[: steps * batch - n]])
    rows.append(perm.reshape(steps, batch))
  return np.concatenate(rows) if rows else np.zeros((0, batch), np.int64)


def fit(watch: Stopwatch, classifier: F.SplitModel, x: np.ndarray, y: np.ndarray,
        batches: np.ndarray, *, kind: str, **hparams) -> tuple[F.SplitModel, dict]:
  """Runs one training step per row of `batches` (indices into x, y).

  Returns the trained model and {"losses": [...], "first_grads": grads of step 0}.
  """
  step = fit_step(classifier.graphdef, kind)
  optimizer = make_optimizer(kind, **hparams)
  params, stats = classifier.params, classifier.stats
  opt_state = optimizer.init(params)
  losses, first_grads = [], None
  for i, idx in enumerate(batches):
    args = (params, stats, opt_state, jnp.asarray(x[idx]), jnp.asarray(y[idx], jnp.int32))
    params, stats, opt_state, loss, grads = watch.run(step, *args)
    losses.append(loss)
    if i == 0:
      first_grads = grads
  jax.block_until_ready(params)
  return (F.SplitModel(classifier.graphdef, params, stats),
          {"losses": [float(v) for v in losses], "first_grads": first_grads})
