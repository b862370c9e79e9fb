"""GENIU's unlearning phase (Alg. 2) as the registered method `geniu`.

The one path of GENIU unlearning: `geniu unlearn`, the grid runner, the demo
and the Python API all run `registry.run_method("geniu", ...)`, which lands
here. The proxies x'_k = g(z_k) come from the training-phase artifacts
(`registry.Artifacts`), never from data; then in-batch tuning (Eq. 10, or the
objective and sharpened batch the config asks for: `geniu.unlearn.unlearn`).

Classes forgotten by earlier requests whose prompts the checkpoint no longer
holds (`Artifacts.dropped`) are kept forgotten without proxies. A config
asking for fewer proxies per class than were trained (`proxies_per_class`
B' < B) uses the first B' ranks of each class: one trained original serves
every B' <= B.

One jitted program per (graphdefs, setting) -- `program`, a bounded cache --
compiled ahead of time and timed apart from the run (`common.Stopwatch`).
`warm`, run right after training, also exports it (`methods.exported`) and
compiles it, so that with the persistent compilation cache on, a later
request in a new process neither traces nor compiles the program: it
deserialises it and loads the executable (the report's `program` says which
way it went).
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from geniu_jax.config import Config
from geniu_jax.geniu import prompts as prompt_lib
from geniu_jax.geniu import sharpen as sharpen_lib
from geniu_jax.geniu import unlearn as unlearn_lib
from geniu_jax.methods import common
from geniu_jax.methods import exported as exported_lib
from geniu_jax.methods.registry import TUNING_SETTINGS, Access, Artifacts, Grant, register
from geniu_jax.models import functional as F

# Above this mean own-class probability of the forgotten proxies after
# tuning, the class is probably not forgotten (`geniu unlearn` warns).
NOT_FORGOTTEN_PROB = 0.5


def setting(cfg: Config) -> dict:
  """The static settings of the unlearning program that `cfg` sets."""
  return dict(rounds=cfg.unlearn_rounds, lr=cfg.unlearn_lr,
              stop_forget_prob=cfg.stop_forget_prob,
              objective=unlearn_lib.objective_from_config(cfg),
              sharpen=sharpen_lib.from_config(cfg))


@functools.lru_cache(maxsize=16)
def program(classifier_graphdef, generator_graphdef, **static):
  """`geniu.unlearn.make_unlearn_fn` for one setting, kept for reuse (bounded)."""
  return unlearn_lib.make_unlearn_fn(classifier_graphdef, generator_graphdef, **static)


def _program_for(classifier: F.SplitModel, generator: F.SplitModel, cfg: Config):
  return program(classifier.graphdef, generator.graphdef, **setting(cfg))


def program_args(classifier: F.SplitModel, generator: F.SplitModel, prompts, forget,
                 dropped) -> tuple:
  """The program's arguments; no dropped classes gives the program of a fresh
  checkpoint (and its compilation cache entry)."""
  return (classifier.params, classifier.stats, generator.params, jnp.asarray(prompts),
          jnp.asarray(forget, jnp.int32),
          jnp.asarray(sorted(dropped), jnp.int32) if dropped else None)


def warm(classifier: F.SplitModel, generator: F.SplitModel, cfg: Config, prompts) -> float:
  """Exports and compiles the program of a one-class request (into the
  persistent cache and beside it, when the cache is on). Returns the ms spent."""
  watch = common.Stopwatch()
  args = program_args(classifier, generator, prompts, [0], ())
  fn = _program_for(classifier, generator, cfg)
  name = exported_lib.key(cfg, setting(cfg), args)
  flat = None
  if exported_lib.save(fn, args, name) is not None:
    flat, _ = exported_lib.load(name)
  if flat is not None:
    watch.compiled(flat, *exported_lib.flat_args(args))
  else:
    watch.compiled(fn, *args)
  return (time.perf_counter() - watch.start) * 1e3


def proxy_checks(info: unlearn_lib.TuningInfo) -> dict:
  """The proxy checks of a tuning run, before and after (floats)."""
  last = int(info.rounds_run)
  return {"forget_proxy_prob_before": float(info.forget_prob[0]),
          "forget_proxy_prob": float(info.forget_prob[last]),
          "retained_proxy_acc_before": float(info.retain_proxy_acc[0]),
          "retained_proxy_acc": float(info.retain_proxy_acc[last])}


@register("geniu", {Access.ARTIFACTS},
          "GENIU: proxies g(z) from the training-phase artifacts, in-batch tuning (Eq. 10)",
          settings=TUNING_SETTINGS)
def geniu(grant: Grant, cfg: Config, key: jax.Array) -> tuple[F.SplitModel, dict]:
  """Alg. 2 on `grant.artifacts` with `cfg`'s unlearning setting.

  Returns the tuned classifier and an info dict: `unlearn_ms`, `compile_ms`,
  `rounds_run`, the proxy checks before and after (`proxy_checks`), the
  traces every 10 rounds (`forget_prob_trace`, `retain_proxy_acc_trace`),
  `proxies` (the number tuned on) and the setting.
  """
  del key  # Alg. 2 is deterministic given the artifacts
  watch = common.Stopwatch()
  artifacts: Artifacts = grant.artifacts
  dropped = tuple(int(k) for k in artifacts.dropped)
  forget = [k for k in grant.forget if k not in dropped]
  with_prompts = grant.num_classes - len(dropped)
  prompts = jnp.asarray(artifacts.prompts)
  stored = prompts.shape[0] // with_prompts
  prompts = prompt_lib.first_ranks(prompts, with_prompts, min(cfg.proxies_per_class, stored))
  args = program_args(grant.classifier, artifacts.generator, prompts, forget, dropped)
  flat, how = exported_lib.load(exported_lib.key(cfg, setting(cfg), args))
  if flat is not None:
    outputs = jax.block_until_ready(watch.run(flat, *exported_lib.flat_args(args)))
    params, info = exported_lib.unflatten(grant.classifier.params, outputs)
  else:
    fn = _program_for(grant.classifier, artifacts.generator, cfg)
    params, info = jax.block_until_ready(watch.run(fn, *args))
  objective = unlearn_lib.objective_from_config(cfg)
  report = {"rounds_run": int(info.rounds_run), **proxy_checks(info),
            "forget_prob_trace": np.asarray(info.forget_prob[::10]).tolist(),
            "retain_proxy_acc_trace": np.asarray(info.retain_proxy_acc[::10]).tolist(),
            "proxies": int(prompts.shape[0]), "objective": objective._asdict(),
            "sharpen_target": cfg.sharpen_target, "sharpen_mode": cfg.sharpen_mode,
            "precision": cfg.precision, "program": how, **watch.report()}
  return F.SplitModel(grant.classifier.graphdef, params, grant.classifier.stats), report
