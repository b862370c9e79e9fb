"""The command line every grid experiment shares.

    python -m experiments.<name> --config smoke|cpu|paper --workdir DIR
        [--shard i/n] [--data NAME=SOURCE ...] [--datasets NAME ...]
        [--methods LABEL ...] [--originals DIR] [--existing-originals] [--report]

Without --report it fills DIR's store (re-running the same command resumes:
finished records are skipped); with --report it trains nothing and writes
DIR/report.md, DIR/*.csv and DIR/*.png from the records. `--datasets` and
`--methods` restrict this invocation to part of the grid (the records are
the same as a full run's), e.g. to run the cheap columns of every cell first.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from experiments.grid import report as report_lib
from experiments.grid import runner
from experiments.grid import spec as spec_lib
from experiments.grid import store as store_lib
from geniu_jax import checkpoint as ckpt_lib
from geniu_jax import compile_cache
from geniu_jax import data as data_lib

VARIANTS = ("smoke", "cpu", "paper")


def _parse_sources(items: Sequence[str]) -> dict[str, str]:
  out = {}
  for item in items:
    name, sep, source = item.partition("=")
    if not sep or not name or not source:
      raise ValueError(f"--data expects NAME=SOURCE (e.g. mnist=idx:data_cache/mnist), got {item!r}")
    out[name] = source
  return out


def restrict(cfg: spec_lib.GridConfig, datasets: Sequence[str] | None,
             methods: Sequence[str] | None, seeds: Sequence[int] | None = None
             ) -> spec_lib.GridConfig:
  """The config limited to some datasets / method labels / seeds (unknown ones raise)."""
  if seeds:
    bad = sorted(set(seeds) - set(cfg.seeds))
    if bad:
      raise ValueError(f"unknown seeds {bad}; this experiment has {list(cfg.seeds)}")
    cfg = cfg.replace(seeds=tuple(s for s in cfg.seeds if s in seeds))
  if datasets:
    known = [n for n, _ in cfg.datasets]
    bad = sorted(set(datasets) - set(known))
    if bad:
      raise ValueError(f"unknown datasets {bad}; this experiment has {known}")
    cfg = cfg.replace(datasets=tuple(d for d in cfg.datasets if d[0] in datasets))
  if methods:
    known = [m.label for m in cfg.methods]
    bad = sorted(set(methods) - set(known))
    if bad:
      raise ValueError(f"unknown methods {bad}; this experiment has {known}")
    cfg = cfg.replace(methods=tuple(m for m in cfg.methods if m.label in methods))
  return cfg


def main(get_config: Callable[[str], spec_lib.GridConfig],
         views: Sequence[report_lib.View], argv: Sequence[str] | None = None,
         description: str = "") -> int:
  p = argparse.ArgumentParser(description=description)
  p.add_argument("--config", choices=VARIANTS, default="cpu")
  p.add_argument("--workdir", required=True)
  p.add_argument("--shard", default="0/1", help="i/n: run every n-th cell, from the i-th")
  p.add_argument("--data", nargs="*", default=[], metavar="NAME=SOURCE",
                 help="where a dataset's files are, e.g. mnist=idx:/data/mnist")
  p.add_argument("--datasets", nargs="*", help="run only these datasets")
  p.add_argument("--methods", nargs="*", help="run only these method labels")
  # (Modules built on `grid.tables` read --seeds themselves, as a replacement.)
  p.add_argument("--seeds", type=int, nargs="*", dest="only_seeds",
                 help="run only these of the config's seeds")
  p.add_argument("--originals", help="directory of original models (default WORKDIR/originals)")
  p.add_argument("--existing-originals", action="store_true",
                 help="skip cells whose original is not trained yet (train no original)")
  p.add_argument("--reevaluate", action="store_true",
                 help="also re-make records that lack the evaluation columns (MIA; JS and "
                      "AIN where the cell's retrained model is kept)")
  p.add_argument("--prune", action="store_true",
                 help="delete the records this config no longer makes (superseded settings); "
                      "run nothing")
  p.add_argument("--report", action="store_true", help="write the report; train nothing")
  compile_cache.add_flag(p)
  args = p.parse_args(argv)
  only_seeds = args.only_seeds
  if args.prune and (args.datasets or args.methods or only_seeds):
    p.error("--prune reads the whole config: drop --datasets, --methods and --seeds")
  try:
    cfg = get_config(args.config)
    shard = spec_lib.parse_shard(args.shard)
    sources = _parse_sources(args.data)
    cfg = restrict(cfg, args.datasets, args.methods, only_seeds)
  except ValueError as err:
    p.error(str(err))
  store = store_lib.Store(args.workdir)
  if (args.prune or args.report) and not store.root.exists():
    print(f"error: no work dir {args.workdir}; run the experiment without --report first",
          file=sys.stderr)
    return 2
  try:
    if args.prune:
      gone = store.prune(report_lib.expected_keys(cfg))
      print(f"deleted {len(gone)} records no setting of this config makes")
      return 0
    if args.report:
      out = report_lib.write(cfg, args.workdir, views)
      print(out.read_text())
      return 0
    compile_cache.configure(args.compilation_cache)
    runner.run(cfg, args.workdir, shard=shard, sources=sources, originals=args.originals,
               train=not args.existing_originals, reevaluate=args.reevaluate)
  except (data_lib.DataError, ckpt_lib.CheckpointError, ValueError) as err:
    print(f"error: {err}", file=sys.stderr)
    return 2
  return 0
