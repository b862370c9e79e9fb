"""What the appendix tables (7, 8, 10, 11, 12) share: their command line and row layout.

`main` is the grid command line (`experiments.grid.main`) plus `--seeds S ...`
and `--classes K ...`, which replace the config's seeds and its forgotten
classes (one class per cell); pass the same ones to `--report`, which reports
the cells of the config it is given. `settings_table` is the layout of Tables
8, 11 and 12: one row per (setting, method), ours as mean ± std over every
record of the setting (forgotten classes x seeds, as the paper averages
them), the paper's number beside.
"""

from __future__ import annotations

import argparse
from typing import Callable, Sequence

from experiments.grid import main as grid_main
from experiments.grid import report as R
from experiments.grid import spec as spec_lib

METRICS = ("acc_r", "acc_f")


def main(get_config: Callable[..., spec_lib.GridConfig], views: Sequence[R.View],
         argv: Sequence[str] | None = None, description: str = "",
         classes: bool = True) -> int:
  """`grid_main.main` with `get_config(variant, seeds=..., classes=...)`."""
  pre = argparse.ArgumentParser(add_help=False)
  pre.add_argument("--seeds", type=int, nargs="+")
  if classes:
    pre.add_argument("--classes", type=int, nargs="+")
  known, rest = pre.parse_known_args(argv)
  kwargs = {"seeds": known.seeds}
  if classes:
    kwargs["classes"] = known.classes
  extra = " [--seeds S ...]" + (" [--classes K ...]" if classes else "")
  return grid_main.main(lambda variant: get_config(variant, **kwargs), views, rest,
                        description=description + extra)


def single_classes(classes: Sequence[int] | None, default: Sequence[int]
                   ) -> tuple[tuple[int, ...], ...]:
  """Forget sets of one class each: `classes`, or `default` when None."""
  return tuple((int(k),) for k in (default if classes is None else classes))


def scored(records: Sequence[dict]) -> list[dict]:
  """Records of methods that give a model (analyses may give none)."""
  return [r for r in records if r.get("acc_r") is not None]


def settings_table(records: Sequence[dict], cfg: spec_lib.GridConfig, *,
                   setting_of: Callable[[dict], str], settings: Sequence[str],
                   paper_of: Callable[[str, str, str], float | None], setting_name: str,
                   note: str = "") -> R.Section:
  """Rows = (setting, method) for every setting of `settings` and every
  method of the config that has records or a paper number there;
  `paper_of(setting, registry_method, metric)`."""
  by = R.group([dict(r, _setting=setting_of(r)) for r in scored(records)], "_setting", "method")
  rows, csv_rows = [], []
  for setting in settings:
    for label in [m.label for m in cfg.methods]:
      rs = by.get((setting, label), [])
      method = R.registry_name(cfg, label)
      stats = {m: R.stat(r.get(m) for r in rs) for m in METRICS}
      papers = {m: paper_of(setting, method, m) for m in METRICS}
      if not rs and all(p is None for p in papers.values()):
        continue
      rows.append([setting, label, R.fmt(stats["acc_r"]), R.fmt_paper(papers["acc_r"]),
                   R.fmt(stats["acc_f"]), R.fmt_paper(papers["acc_f"]),
                   _span(rs)])
      for m in METRICS:
        s = stats[m]
        csv_rows.append({setting_name: setting, "method": label, "metric": m,
                         "mean": s and s.mean, "std": s and s.std, "n": s.n if s else 0,
                         "min": s and s.min, "max": s and s.max, "paper": papers[m]})
  md = R.markdown_table([setting_name, "method", "Acc_r ours", "Acc_r paper", "Acc_f ours",
                         "Acc_f paper", "runs (classes / seeds)"], rows)
  return R.Section(md + (f"\n\n{note}" if note else ""), csv_rows)


def geniu_row_lookup(paper_key: str) -> Callable[[str, str, str], float | None]:
  """`paper_of` for the appendix tables that list GENIU alone as one
  [acc_r, acc_f] row per setting (Tables 11 and 12 of paper_results.json)."""

  def paper_of(setting: str, method: str, metric: str) -> float | None:
    if method != "geniu":
      return None
    ref = R.paper()[paper_key]
    row = ref.get(setting)
    return None if row is None else row[ref["columns"].index(metric)]

  return paper_of


def _span(records: Sequence[dict]) -> str:
  if not records:
    return "0"
  classes = sorted({k for r in records for k in r["forget"]})
  seeds = sorted({r["seed"] for r in records})
  return f"{len(records)} ({','.join(map(str, classes))} / {','.join(map(str, seeds))})"
