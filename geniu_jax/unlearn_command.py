"""`geniu unlearn --ckpt DIR --forget K... --out DIR [--method NAME] [--json]`.

Every method, GENIU included, runs through `registry.run_method`; this module
is the command-line layer around it: the checks that need only the metadata
come first, then the restore, the method, the checkpoint and the report.

The checkpoint supplies the model and, when the method declared them, the
GENIU artifacts and the baseline records. Methods that declared training data
get the SAME imbalanced split the checkpoint was trained on, rebuilt from its
metadata ("data_source", "majority", "imbalance", "seed") with
`runs.prepare_data`; rebuilding it is not counted as unlearning time.

A setting flag reaches every method that reads its `Config` field
(`registry.Method.settings`) and is refused, with one line, for a method that
would ignore it.

The report, the last line on stdout with --json, is {"method", "forget",
"requested", "unlearn_ms", "compile_ms", "restore_ms", ...the method's info}:
`unlearn_ms` is the wall time from the original model to the unlearned one
without XLA compilation, `compile_ms` the compilation it needed (see
`methods.common`; None where it cannot be split off, i.e. `retrain`). The
unlearned classifier is saved with `checkpoint.save`: the GENIU generator and
the retained classes' prompts are carried over unless --drop-generator;
records are not (they describe the original training).
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Callable

import jax

from geniu_jax import checkpoint as ckpt_lib
from geniu_jax import forget_requests as requests_lib
from geniu_jax import jsonutil
from geniu_jax import validate
from geniu_jax.config import Config
from geniu_jax.methods import registry
from geniu_jax.methods.registry import Access
from geniu_jax.validate import UsageError

# Setting flags as (argparse dest, Config field).
SETTING_FLAGS = (("rounds", "unlearn_rounds"), ("lr", "unlearn_lr"),
                 ("proxies_per_class", "proxies_per_class"),
                 ("stop_forget_prob", "stop_forget_prob"), ("no_stop", "stop_forget_prob"),
                 ("retain_target", "retain_target"), ("forget_loss", "forget_loss"),
                 ("forget_margin", "forget_margin"), ("sharpen_target", "sharpen_target"),
                 ("no_sharpen", "sharpen_target"), ("sharpen_mode", "sharpen_mode"),
                 ("baseline_setting", "baseline_setting"), ("set", "method_settings"))


def _given(args, dest: str) -> bool:
  value = getattr(args, dest, None)
  return value is not None and value is not False


def check_settings_apply(args, method: registry.Method) -> None:
  """Refuses a setting flag whose field `method` does not read."""
  for dest, field in SETTING_FLAGS:
    if _given(args, dest) and field not in method.settings:
      readers = sorted(m.name for m in registry.METHODS.values() if field in m.settings)
      raise UsageError(f"argument --{dest.replace('_', '-')}: method {method.name!r} does not "
                       f"use {field} (methods that do: {', '.join(readers)})")


def method_settings(args) -> tuple[tuple[str, Any], ...]:
  """`--set METHOD.FIELD=VALUE` as ("METHOD.FIELD", value) pairs; VALUE is read
  as JSON (numbers, true/false, null), else kept as a string."""
  pairs = []
  for item in getattr(args, "set", None) or ():
    key, eq, text = item.partition("=")
    name, dot, field = key.partition(".")
    if not (eq and dot and name and field):
      raise UsageError(f"argument --set: expected METHOD.FIELD=VALUE, got {item!r}")
    if name != args.method:
      raise UsageError(f"argument --set: {key} names method {name!r}, but --method is "
                       f"{args.method!r}")
    try:
      value = json.loads(text)
    except json.JSONDecodeError:
      value = text
    pairs.append((key, value))
  return tuple(pairs)


def config_with_overrides(cfg: Config, args) -> Config:
  """`cfg` with the setting flags applied (`--no-stop`, `--no-sharpen`: None)."""
  cfg = cfg.replace(**{field: getattr(args, dest, None) for dest, field in SETTING_FLAGS
                       if not dest.startswith("no_") and dest != "set"})
  if getattr(args, "set", None):
    cfg = dataclasses.replace(cfg, method_settings=method_settings(args))
  if getattr(args, "no_stop", False):
    cfg = dataclasses.replace(cfg, stop_forget_prob=None)
  if getattr(args, "no_sharpen", False):
    cfg = dataclasses.replace(cfg, sharpen_target=None)
  return cfg


def gather_inputs(method: registry.Method, ck: ckpt_lib.Checkpoint, forget,
                  log: Callable[[str], None] | None) -> dict[str, Any]:
  """What `method` declared, from the checkpoint and the rebuilt training split."""
  from geniu_jax import runs
  meta = ck.metadata
  available: dict[str, Any] = {}
  if Access.ARTIFACTS in method.access:
    available["artifacts"] = registry.Artifacts(ck.generator, ck.prompts,
                                                tuple(requests_lib.dropped_prompts(meta)))
  if Access.RECORDS in method.access:
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


def check_request(args, meta: dict, method: registry.Method, stored: Config) -> None:
  """What the metadata can refute, before any array is read."""
  needs_artifacts = Access.ARTIFACTS in method.access
  if needs_artifacts and not meta.get("has_generator", True):
    raise UsageError(f"checkpoint {args.ckpt} has no GENIU generator and prompts (method "
                     f"{method.name!r} tunes on them)")
  if needs_artifacts and method.name != "geniu" and requests_lib.dropped_prompts(meta):
    # The other variants assume a prompt of every class; `geniu` tunes
    # without the dropped ones (`geniu.unlearn.unlearn`).
    raise UsageError(requests_lib.needs_every_prompt(method.name, meta))
  # A generator left at its initialisation maps the prompts to proxies that
  # carry nothing of their classes (Alg. 2): tuning on them is not GENIU's
  # unlearning, whatever it does to the accuracies.
  if needs_artifacts and ckpt_lib.generator_epochs(meta) == 0:
    raise UsageError(f"checkpoint {args.ckpt}: its GENIU generator never trained, so it has "
                     "no proxies to tune on; retrain with more --epochs (or a lower "
                     "--noise-start-acc)")
  if Access.RECORDS in method.access and not meta.get("has_records", True):
    raise UsageError(f"method {method.name!r} needs baseline records; checkpoint {args.ckpt} "
                     "has none (train it with --record-baselines)")
  b = getattr(args, "proxies_per_class", None)
  if needs_artifacts and b is not None and b > stored.proxies_per_class:
    raise UsageError(f"argument --proxies-per-class: asked for {b} proxies per class; the "
                     f"checkpoint has {stored.proxies_per_class}")


def _describe(method: registry.Method, cfg: Config, forget) -> str:
  if method.name != "geniu":
    return (f"{method.name}: forget {list(forget)}; access "
            f"{sorted(a.value for a in method.access)}")
  from geniu_jax.geniu import unlearn as unlearn_lib
  from geniu_jax.geniu import sharpen as sharpen_lib
  stop, sharpen = cfg.stop_forget_prob, sharpen_lib.from_config(cfg)
  return (f"GENIU in-batch tuning: forget {list(forget)}, up to {cfg.unlearn_rounds} rounds, "
          f"lr {cfg.unlearn_lr}, stop rule "
          f"{'off' if stop is None else f'mean forgotten-proxy prob <= {stop}'}, objective "
          f"{unlearn_lib.objective_from_config(cfg).describe()}, sharpened proxies "
          f"{'off' if sharpen is None else f'({sharpen.mode}) to p >= {sharpen.target:g}'}")


def run(args, log: Callable[[str], None]) -> int:
  """`geniu unlearn` (arguments parsed by `geniu_jax.cli`)."""
  from geniu_jax import runs
  from geniu_jax.methods import geniu_unlearning
  if args.method not in registry.METHODS:
    raise UsageError(f"unknown method {args.method!r}; registered: {sorted(registry.METHODS)}")
  method = registry.METHODS[args.method]
  check_settings_apply(args, method)
  method_settings(args)   # malformed --set fails before any file is read
  validate.check_output_dir(args.out)
  meta = ckpt_lib.read_metadata(args.ckpt)
  stored = validate.check_metadata(meta, args.ckpt)
  requested = runs.check_classes(args.forget, meta["num_classes"], "forget")
  try:
    forget = requests_lib.plan(meta, requested, f"checkpoint {args.ckpt}")
  except requests_lib.NothingToForget as err:
    raise UsageError(str(err)) from None
  check_request(args, meta, method, stored)
  if forget != sorted(requested):
    log(f"forgetting {forget}: {requests_lib.forgotten(meta)} forgotten by earlier requests "
        "stay forgotten")
  t0 = time.perf_counter()
  ck = ckpt_lib.restore(args.ckpt, precision=args.precision)
  restore_ms = (time.perf_counter() - t0) * 1e3
  cfg = config_with_overrides(Config.from_dict(ck.metadata["config"]), args)
  cfg = cfg.replace(precision=args.precision)
  available = gather_inputs(method, ck, forget, log)
  log(_describe(method, cfg, forget))
  classifier, info = registry.run_method(
      method.name, cfg, jax.random.key(cfg.seed), classifier=ck.classifier, forget=forget,
      num_classes=ck.metadata["num_classes"], image_shape=ck.metadata["image_shape"],
      **available)
  report = {"method": method.name, "forget": list(forget), "requested": list(requested),
            "unlearn_ms": info.get("unlearn_ms"), "compile_ms": info.get("compile_ms"),
            "restore_ms": restore_ms}
  report = jsonutil.plain({**report, **{k: v for k, v in info.items() if k not in report}})
  generator, prompts = ck.generator, requests_lib.kept_prompts(ck.metadata, ck.prompts, forget)
  if args.drop_generator:
    generator, prompts = None, None
  ckpt_lib.save(args.out, classifier, generator, prompts,
                requests_lib.record(ck.metadata, requested, forget, report))
  compile_ms = report["compile_ms"]
  log(f"unlearned in {report['unlearn_ms']:.1f} ms (compile "
      f"{'n/a' if compile_ms is None else f'{compile_ms:.0f} ms'}); checkpoint written to "
      f"{args.out}")
  if "forget_proxy_prob" in report:
    log(f"{report['rounds_run']} rounds; forgotten proxies' own-class probability "
        f"{report['forget_proxy_prob_before']:.3f} -> {report['forget_proxy_prob']:.3f}, "
        f"retained proxies correct {report['retained_proxy_acc']:.3f}")
    if report["forget_proxy_prob"] > geniu_unlearning.NOT_FORGOTTEN_PROB:
      log(f"warning: after {report['rounds_run']} rounds the forgotten proxies still get "
          f"their class with mean probability {report['forget_proxy_prob']:.3f}: the class "
          "is probably not forgotten; try more --rounds or a larger --lr")
  if args.json:
    print(jsonutil.dumps(report), flush=True)
  return 0
