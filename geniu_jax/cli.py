"""The `geniu` command: train | unlearn | evaluate | demo.

Every failure the user can cause (unknown source, missing file, bad class id,
forgetting every class, missing or foreign checkpoint, a flag out of range, an
unwritable --out) ends with one line on stderr and exit code 2, and no output
directory is left behind. The checks run before any heavy work, in this order:
the arguments (flag ranges through `Config`, --out), then a checkpoint's
metadata (`validate.check_metadata`, before any array is restored or program
compiled), then the data (`data.load`); docs/reliability.md lists them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Sequence

from geniu_jax import checkpoint as ckpt_lib
from geniu_jax import compile_cache
from geniu_jax import data as data_lib
from geniu_jax import forget_requests as requests_lib
from geniu_jax import jsonutil
from geniu_jax import validate
from geniu_jax.validate import UsageError
from geniu_jax.config import (BASELINE_SETTINGS, FORGET_LOSSES, LR_SCHEDULES, PRECISIONS,
                              PRESETS, RETAIN_TARGETS, SHARPEN_MODES, Config, get_config)
from geniu_jax.models.conv import LOWERINGS

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130   # 128 + SIGINT, as shells report it


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # argparse's default prints usage on two lines
    raise UsageError(message)


def _log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def _add_precision_flag(p: argparse.ArgumentParser) -> None:
  p.add_argument("--precision", choices=PRECISIONS,
                 help="classifier compute dtype; bfloat16 keeps float32 parameters, optimizer "
                      "state and BatchNorm statistics (default: float32, or the checkpoint's)")


def _add_train_flags(p: argparse.ArgumentParser) -> None:
  p.add_argument("--preset", choices=PRESETS, default="paper")
  p.add_argument("--width", type=float)
  p.add_argument("--epochs", type=int)
  p.add_argument("--seed", type=int)
  p.add_argument("--proxies-per-class", type=int, dest="proxies_per_class",
                 help="B, proxies per class (Table 12)")
  p.add_argument("--lowering", choices=LOWERINGS)
  _add_precision_flag(p)
  p.add_argument("--noise-start-acc", type=float, dest="noise_start_acc", metavar="T",
                 help="start prompt, selection and generator training at the first epoch "
                      "whose training accuracy is >= T, in (0, 1] (Table 11; default: "
                      "the first epoch)")


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(prog="geniu", description=__doc__.splitlines()[0])
  compile_cache.add_flag(parser)
  sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

  p = sub.add_parser("train", help="training phase (Alg. 1), writes a checkpoint")
  p.add_argument("--data", required=True, help="tfds:NAME | idx:DIR | npz:PATH | embedded")
  p.add_argument("--majority", type=int, nargs="+", required=True)
  p.add_argument("--imbalance", default=None, help="r, or one rate per class: r0,r1,...")
  p.add_argument("--out", required=True)
  p.add_argument("--record-baselines", action="store_true",
                 help="also keep the training-time records of I-R and Unrolling SGD")
  p.add_argument("--resume", action="store_true",
                 help="continue an interrupted run (same arguments) from the state it kept "
                      "in OUT.train-state after its last finished epoch")
  p.add_argument("--lr-schedule", choices=LR_SCHEDULES, dest="lr_schedule",
                 help="classifier schedule: one_cycle (default) or plateau, the baselines' "
                      "(halve the rate after 3 epochs without a better validation loss; "
                      "needs --validation-per-class)")
  p.add_argument("--grad-clip-value", type=float, dest="grad_clip_value", metavar="V",
                 help="clip every classifier gradient entry to [-V, V] (the baselines' 0.1)")
  p.add_argument("--validation-per-class", type=int, default=0, dest="validation_per_class",
                 metavar="N", help="hold N images of every class out of the training split "
                 "as a validation split (the plateau rule's; the accuracies printed are then "
                 "on it, not on the test split)")
  _add_train_flags(p)

  p = sub.add_parser("unlearn", help="unlearning phase (Alg. 2), writes a checkpoint")
  p.add_argument("--ckpt", required=True)
  p.add_argument("--forget", type=int, nargs="+", required=True)
  p.add_argument("--method", default="geniu")
  p.add_argument("--rounds", type=int)
  p.add_argument("--lr", type=float)
  p.add_argument("--proxies-per-class", type=int, dest="proxies_per_class",
                 help="tune on the first B' ranks of the checkpoint's B proxies per class "
                      "(1 = the paper's single proxy)")
  stop = p.add_mutually_exclusive_group()
  stop.add_argument("--stop-forget-prob", type=float, dest="stop_forget_prob",
                    help="data-free stopping threshold (see README)")
  stop.add_argument("--no-stop", action="store_true", help="run every round (the paper)")
  p.add_argument("--retain-target", choices=RETAIN_TARGETS, dest="retain_target",
                 help="target on retained proxies: label (Eq. 10) or teacher "
                      "(default: the checkpoint's config)")
  p.add_argument("--forget-loss", choices=FORGET_LOSSES, dest="forget_loss",
                 help="loss on forgotten proxies: inv_ce (Eq. 10) or margin "
                      "(default: the checkpoint's config)")
  p.add_argument("--forget-margin", type=float, dest="forget_margin",
                 help="logit margin of --forget-loss margin")
  sharp = p.add_mutually_exclusive_group()
  sharp.add_argument("--sharpen-target", type=float, dest="sharpen_target", metavar="P",
                     help="add proxies sharpened until the original gives them the class with "
                          "probability >= P (default: the checkpoint's config)")
  sharp.add_argument("--no-sharpen", action="store_true", dest="no_sharpen",
                     help="tune on the generator's proxies as they are (the paper)")
  p.add_argument("--sharpen-mode", choices=SHARPEN_MODES, dest="sharpen_mode",
                 help="forgotten: sharpen the forgotten proxies toward their class; all: every "
                      "proxy toward the forgotten class, retained ones also toward their own "
                      "(default: the checkpoint's config)")
  _add_precision_flag(p)
  p.add_argument("--baseline-setting", choices=BASELINE_SETTINGS, dest="baseline_setting",
                 help="UNSIR, GKT, I-R and Unrolling: recommended (ours) or reference (the published code's, "
                      "quirks included; see each method's docstring)")
  p.add_argument("--set", action="append", dest="set", metavar="METHOD.FIELD=VALUE",
                 help="a field of a baseline's own settings (e.g. gkt.pseudo_batches=100; "
                      "VALUE is read as JSON, else as a string); repeatable")
  p.add_argument("--drop-generator", action="store_true", dest="drop_generator",
                 help="write the unlearned checkpoint without GENIU's generator and prompts "
                      "(no later GENIU request can use it)")
  p.add_argument("--out", required=True)
  p.add_argument("--json", action="store_true")

  p = sub.add_parser("evaluate", help="Acc_r / Acc_f / per-class accuracy on the test split")
  p.add_argument("--ckpt", required=True)
  p.add_argument("--data", required=True)
  p.add_argument("--forget", type=int, nargs="+",
                 help="the forgotten classes (default: every class the checkpoint has forgotten)")
  p.add_argument("--reference", metavar="CKPT",
                 help="the retrained model: adds JS divergence and activation distance to it, "
                      "its attack scores, and both models' relearn time with their AIN")
  p.add_argument("--relearn-target", type=float, default=0.5, dest="relearn_target",
                 metavar="A", help="relearn until the forgotten classes' training accuracy "
                                   "reaches A, in (0, 1] (default 0.5)")
  p.add_argument("--json", action="store_true")

  p = sub.add_parser("demo", help="original vs retrain vs GENIU on the embedded data")
  p.add_argument("--json", action="store_true")
  p.add_argument("--lowering", choices=LOWERINGS,
                 help="convolution lowering (default: the preset's, auto)")
  # Accepted after the subcommand too (`geniu unlearn ... --compilation-cache off`).
  for subparser in sub.choices.values():
    compile_cache.add_flag(subparser, default=argparse.SUPPRESS)
  return parser


def _config_from(args, image_shape=None) -> Config:
  overrides = {k: getattr(args, k, None) for k in
               ("width", "epochs", "seed", "proxies_per_class", "lowering", "precision",
                "noise_start_acc", "lr_schedule", "grad_clip_value")}
  if getattr(args, "imbalance", None) is not None:
    overrides["imbalance"] = args.imbalance
  return get_config(args.preset, image_shape, **overrides)


# Flags that set a `Config` field, as (argparse dest, field): `Config` owns
# their ranges, so the Python API and the command line agree.
_TRAIN_FIELDS = (("width", "width"), ("epochs", "epochs"), ("seed", "seed"),
                 ("proxies_per_class", "proxies_per_class"),
                 ("noise_start_acc", "noise_start_acc"),
                 ("grad_clip_value", "grad_clip_value"))
_UNLEARN_FIELDS = (("rounds", "unlearn_rounds"), ("lr", "unlearn_lr"),
                   ("proxies_per_class", "proxies_per_class"),
                   ("stop_forget_prob", "stop_forget_prob"),
                   ("forget_margin", "forget_margin"), ("sharpen_target", "sharpen_target"))


def _check_flags(args, fields) -> None:
  """Range-checks flags before any file is read, one at a time so that the
  message names the flag as well as the field."""
  for dest, field in fields:
    value = getattr(args, dest, None)
    if value is None:
      continue
    try:
      Config(**{field: value})
    except ValueError as err:
      raise UsageError(f"argument --{dest.replace('_', '-')}: {err}") from None


def cmd_train(args) -> int:
  from geniu_jax import runs
  if args.validation_per_class < 0:
    raise UsageError(f"argument --validation-per-class: must be >= 0, got "
                     f"{args.validation_per_class}")
  if args.lr_schedule == "plateau" and not args.validation_per_class:
    raise UsageError("argument --lr-schedule plateau: the rule steps on a validation loss; "
                     "give --validation-per-class N (held out of the training split)")
  _check_flags(args, _TRAIN_FIELDS)
  if args.imbalance is not None:
    # Every rate now; how many there must be is known once the data gives K.
    data_lib.parse_imbalance(args.imbalance, args.imbalance.count(",") + 1)
  validate.check_output_dir(args.out)
  state_dir = training_state_dir(args.out)
  from geniu_jax.geniu import resume as resume_lib
  if resume_lib.exists(state_dir) and not args.resume:
    raise UsageError(f"an interrupted run left its training state in {state_dir}: rerun the "
                     "same command with --resume to continue it, or delete that directory")
  if args.resume and not resume_lib.exists(state_dir):
    raise UsageError(f"argument --resume: no training state in {state_dir} (it is kept "
                     f"while `geniu train --out {args.out}` runs and removed when it ends)")
  ds = data_lib.load(args.data)
  cfg = _config_from(args, ds.image_shape)
  rate = data_lib.parse_imbalance(cfg.imbalance, ds.num_classes)
  cfg = cfg.replace(imbalance=rate)
  data = runs.prepare_data(ds, args.majority, rate, cfg.seed,
                           validation_per_class=args.validation_per_class, log=_log)
  recorder = None
  if args.record_baselines:
    from geniu_jax.methods import records
    recorder = records.default_recorder()
  _log(f"training GENIU ({cfg.preset} preset, width {cfg.width}, {cfg.epochs} epochs, "
       f"B={cfg.proxies_per_class})")
  result = runs.train_geniu(cfg, data, recorder=recorder, log=_log, state_dir=state_dir,
                            resume=args.resume)
  path = runs.save_run(args.out, cfg, data, result, extra={
      "validation_per_class": args.validation_per_class} if args.validation_per_class else None)
  shutil.rmtree(state_dir, ignore_errors=True)
  _log(f"checkpoint written to {path}")
  if compile_cache.cache_dir() and result.generator is not None:
    # Into the persistent cache, so that the first `geniu unlearn` loads it.
    _log("compiling the unlearning program for later requests ...")
    from geniu_jax.methods import geniu_unlearning
    ms = geniu_unlearning.warm(result.classifier, result.generator, cfg, result.prompts)
    _log(f"compiled in {ms / 1e3:.1f} s and cached in {compile_cache.cache_dir()}")
  for warning in result.checks["warnings"]:
    _log(f"warning: {warning}")
  return 0


def training_state_dir(out) -> Path:
  """Where `geniu train --out OUT` keeps its state after every epoch (`geniu.resume`)."""
  out = Path(out).absolute()
  return out.parent / f"{out.name}.train-state"


def cmd_unlearn(args) -> int:
  _check_flags(args, _UNLEARN_FIELDS)
  from geniu_jax import unlearn_command
  return unlearn_command.run(args, _log)


def cmd_evaluate(args) -> int:
  from geniu_jax import runs
  meta = ckpt_lib.read_metadata(args.ckpt)
  validate.check_metadata(meta, args.ckpt)
  if args.forget is None:
    args.forget = requests_lib.forgotten(meta)
    if not args.forget:
      raise UsageError(f"argument --forget: checkpoint {args.ckpt} has forgotten nothing; "
                       "name the classes to score as forgotten")
  forget = runs.check_classes(args.forget, meta["num_classes"], "forget")
  ds = data_lib.load(args.data)
  if list(ds.image_shape) != meta["image_shape"] or ds.num_classes != meta["num_classes"]:
    raise UsageError(
        f"data {args.data} ({list(ds.image_shape)}, {ds.num_classes} classes) does not fit "
        f"checkpoint {args.ckpt} ({meta['image_shape']}, {meta['num_classes']} classes)")
  if not (0.0 < args.relearn_target <= 1.0):
    raise UsageError(f"argument --relearn-target: must be an accuracy in (0, 1], got "
                     f"{args.relearn_target}")
  if args.reference is not None:
    ref_meta = ckpt_lib.read_metadata(args.reference)
    validate.check_metadata(ref_meta, args.reference)
    if (ref_meta["image_shape"], ref_meta["num_classes"]) != (meta["image_shape"],
                                                             meta["num_classes"]):
      raise UsageError(f"--reference {args.reference} does not fit checkpoint {args.ckpt} "
                       f"({ref_meta['image_shape']}, {ref_meta['num_classes']} classes)")
  ck = ckpt_lib.restore(args.ckpt)
  reference = ckpt_lib.restore(args.reference).classifier if args.reference else None
  # Membership inference needs the training split itself, rebuilt from the metadata.
  train = runs.training_data_of(meta, log=None)
  import jax
  from geniu_jax.evaluation import unlearning as evaluation
  result = evaluation.evaluate(
      ck.classifier, x_train=train.x_train, y_train=train.y_train, x_test=ds.x_test,
      y_test=ds.y_test, num_classes=ds.num_classes, forget=forget, reference=reference,
      relearning=evaluation.Relearning(target=args.relearn_target),
      key=jax.random.key(meta.get("seed", 0)))
  print(f"forgotten classes {list(forget)}: Acc_r {_acc(result['acc_r'])}  "
        f"Acc_f {_acc(result['acc_f'])}")
  print("per class: " + " ".join(f"{k}:{_acc(a, 3)}" for k, a in enumerate(result["per_class"])))
  print(f"membership inference: MIA-efficacy (confidence) {_acc(result['mia_confidence'], 3)}, "
        f"entropy attack {_acc(result['mia_entropy'], 3)}"
        + ("" if reference is None else
           f" (retrained: {_acc(result['reference_mia_confidence'], 3)}, "
           f"{_acc(result['reference_mia_entropy'], 3)})"))
  if reference is not None:
    print(f"to the retrained model: JS {result['js_to_reference']:.4f}, activation distance "
          f"{result['activation_distance']:.4f}; relearn steps {result.get('relearn_steps')} "
          f"vs {result.get('relearn_steps_reference')} (AIN {_acc(result.get('ain'), 3)})")
  if result.get("missing"):
    _log(f"note: the test split has no image of class(es) {result['missing']}: their "
         "accuracies are n/a (null in --json), not 0")
  _emit(result, args.json)
  return 0


def _acc(value, digits: int = 4) -> str:
  return "n/a" if value is None else f"{value:.{digits}f}"


def cmd_demo(args) -> int:
  from geniu_jax import demo
  overrides = {"lowering": args.lowering} if args.lowering else {}
  report = demo.run(log=_log, **overrides)
  print(demo.format_table(report))
  _emit(report, args.json)
  return 0


def _emit(obj: dict, as_json: bool) -> None:
  if as_json:
    print(jsonutil.dumps(obj), flush=True)


COMMANDS = {"train": cmd_train, "unlearn": cmd_unlearn, "evaluate": cmd_evaluate,
            "demo": cmd_demo}


def main(argv: Sequence[str] | None = None) -> int:
  try:
    args = build_parser().parse_args(argv)
    compile_cache.configure(args.compilation_cache, warn=_log)
    return COMMANDS[args.command](args)
  except (UsageError, data_lib.DataError, ckpt_lib.CheckpointError, ValueError) as err:
    print(f"geniu: error: {err}", file=sys.stderr)
    return EXIT_USAGE
  except KeyboardInterrupt:
    print("geniu: interrupted", file=sys.stderr)
    return EXIT_INTERRUPTED


def _exit_on_interrupt(signum, frame) -> None:
  """SIGINT: one line and exit 130 at once, unless a checkpoint is being saved.

  Unwinding Python's stack while XLA still compiles or runs on its own
  threads crashed interrupted `geniu train` runs (SIGSEGV after
  "interrupted"), also when only the final exit skipped the interpreter's
  teardown; leaving from the handler with `os._exit` does not unwind.
  Nothing is lost: outputs exist only once `checkpoint.save` has renamed them
  into place, and a save under way is interrupted normally so that its
  `finally` removes its temporary directory.
  """
  if ckpt_lib.saving():
    raise KeyboardInterrupt
  print("geniu: interrupted", file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(EXIT_INTERRUPTED)


def console_main() -> None:
  """The `geniu` command: `main` with the interrupt handler above."""
  signal.signal(signal.SIGINT, _exit_on_interrupt)
  rc = main()
  if rc == EXIT_INTERRUPTED:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)
  sys.exit(rc)


if __name__ == "__main__":
  console_main()
