"""`geniu unlearn --method NAME --ckpt DIR --forget K --out DIR [--json]` for any method.

`geniu_jax.cli.cmd_unlearn` handles plain `geniu` itself and calls
`registry.cli_unlearn` (which lands here) for every other registered method.
The checkpoint supplies the model and, when the method declared them, the
GENIU artifacts and the baseline records. Methods that declared training data
get the SAME imbalanced split the checkpoint was trained on, rebuilt from its
metadata ("data_source", "majority", "imbalance", "seed") with
`runs.prepare_data`; rebuilding it is not counted as unlearning time.

The report, the last line on stdout with --json, is
{"method", "forget", "unlearn_ms", "compile_ms", "timing", ...method info}:
`unlearn_ms` is the wall time from the original model to the unlearned one
without XLA compilation, `compile_ms` the compilation it needed (see
`methods.common`; None where it cannot be split off, i.e. `retrain`).
The unlearned classifier is saved with `checkpoint.save` (the GENIU
generator and the retained classes' prompts are carried over unless
--drop-generator, records are not: they describe the original training).
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Callable

import jax
import numpy as np

from geniu_jax import jsonutil
from geniu_jax.config import Config
from geniu_jax.methods import registry
from geniu_jax.methods.registry import Access


def jsonable(value: Any) -> Any:
  """Plain JSON types from numbers, arrays and nested containers (floats rounded)."""
  if isinstance(value, dict):
    return {str(k): jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [jsonable(v) for v in value]
  if isinstance(value, (np.ndarray, jax.Array)) and np.ndim(value) > 0:
    return [jsonable(v) for v in np.asarray(value).tolist()]
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  if isinstance(value, numbers.Integral):
    return int(value)
  if isinstance(value, numbers.Real) or isinstance(value, (np.ndarray, jax.Array)):
    return round(float(value), 4)
  return value


def config_with_overrides(cfg: Config, args) -> Config:
  """--rounds / --lr / --stop-forget-prob / --no-stop / the objective and sharpening
  flags (GENIU variants)."""
  cfg = cfg.replace(unlearn_rounds=getattr(args, "rounds", None),
                    unlearn_lr=getattr(args, "lr", None),
                    retain_target=getattr(args, "retain_target", None),
                    forget_loss=getattr(args, "forget_loss", None),
                    forget_margin=getattr(args, "forget_margin", None),
                    sharpen_mode=getattr(args, "sharpen_mode", None),
                    baseline_setting=getattr(args, "baseline_setting", None))
  if getattr(args, "no_stop", False):
    cfg = dataclasses.replace(cfg, stop_forget_prob=None)
  elif getattr(args, "stop_forget_prob", None) is not None:
    cfg = dataclasses.replace(cfg, stop_forget_prob=args.stop_forget_prob)
  if getattr(args, "no_sharpen", False):
    cfg = dataclasses.replace(cfg, sharpen_target=None)
  elif getattr(args, "sharpen_target", None) is not None:
    cfg = dataclasses.replace(cfg, sharpen_target=args.sharpen_target)
  return cfg


def gather_inputs(method: registry.Method, ck, forget, log: Callable | None) -> dict:
  """What `method` declared, from the checkpoint and the rebuilt training split."""
  from geniu_jax import runs
  meta = ck.metadata
  available: dict[str, Any] = {}
  # What the checkpoint lacks is refused before the data is loaded.
  if Access.ARTIFACTS in method.access:
    if ck.generator is None:
      raise ValueError(f"method {method.name!r} needs GENIU's generator and prompts; "
                       "the checkpoint has none")
    from geniu_jax import forget_requests as requests_lib
    if requests_lib.dropped_prompts(meta):
      # The registered variants assume a prompt for every class; plain
      # `geniu` tunes without the dropped ones (`geniu.unlearn.unlearn`).
      raise ValueError(requests_lib.needs_every_prompt(method.name, meta))
    available["artifacts"] = (ck.generator, ck.prompts)
  if Access.RECORDS in method.access:
    if ck.records is None:
      raise ValueError(f"method {method.name!r} needs baseline records; the checkpoint has "
                       "none (train it with --record-baselines)")
    available["records"] = ck.records
  if method.access & {Access.RETAINED_DATA, Access.ALL_DATA}:
    data = runs.prepare_data(meta["data_source"], meta["majority"], meta["imbalance"],
                             meta["seed"], log=log)
    # The source may have changed since training (an npz rewritten in place).
    shape = [int(d) for d in data.x_train.shape[1:]]
    if shape != list(meta["image_shape"]) or data.num_classes != meta["num_classes"]:
      raise ValueError(f"data {meta['data_source']} ({shape}, {data.num_classes} classes) no "
                       f"longer fits the checkpoint ({meta['image_shape']}, "
                       f"{meta['num_classes']} classes)")
    available.update(registry.inputs_from(data.x_train, data.y_train, forget))
  return available


def cli_unlearn(args, ck, forget, cfg: Config, log: Callable[[str], None] | None = print,
                requested=None) -> int:
  """Runs `args.method` on checkpoint `ck`, writes `args.out`, optionally prints JSON.

  `forget` is every class to forget (earlier requests' included, see
  `geniu_jax.forget_requests`); `requested` the classes this request named.
  """
  from geniu_jax import checkpoint as ckpt_lib
  from geniu_jax import forget_requests as requests_lib
  requested = list(forget) if requested is None else list(requested)
  name = args.method
  if name not in registry.METHODS:
    raise ValueError(f"unknown method {name!r}; registered: {sorted(registry.METHODS)}")
  method = registry.METHODS[name]
  meta = ck.metadata
  cfg = config_with_overrides(cfg, args)
  available = gather_inputs(method, ck, forget, log)
  if log:
    log(f"{name}: forget {list(forget)}; access "
        f"{sorted(a.value for a in method.access)}")
  key = jax.random.fold_in(jax.random.key(cfg.seed), 1)
  classifier, info = registry.run_method(
      name, cfg, key, classifier=ck.classifier, forget=forget,
      num_classes=meta["num_classes"], image_shape=meta["image_shape"], **available)
  report = {"method": name, "forget": list(forget), "requested": requested,
            "unlearn_ms": info.get("unlearn_ms"), "compile_ms": info.get("compile_ms")}
  report.update({k: v for k, v in info.items() if k not in report})
  report = jsonable(report)
  generator, prompts = ck.generator, requests_lib.kept_prompts(meta, ck.prompts, forget)
  if getattr(args, "drop_generator", False):
    generator, prompts = None, None
  ckpt_lib.save(args.out, classifier, generator, prompts,
                requests_lib.record(meta, requested, forget, report))
  if log:
    compile_ms = report["compile_ms"]
    log(f"unlearned in {report['unlearn_ms']:.1f} ms (compile "
        f"{'n/a' if compile_ms is None else f'{compile_ms:.0f} ms'}); "
        f"checkpoint written to {args.out}")
  if getattr(args, "json", False):
    print(jsonutil.dumps(report), flush=True)
  return 0
