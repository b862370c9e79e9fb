"""Reports of a grid store: markdown, CSV and PNG figures, computed from records only.

An experiment lists its `View`s; each turns the records into a markdown
section, CSV rows and optionally a figure. `write` runs them all and writes
WORKDIR/report.md, WORKDIR/<view>.csv and WORKDIR/<view>.png. The paper's
numbers come from `experiments/paper_results.json` (a copy of the paper's
tables) and sit beside ours.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import io
import json
import math
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import numpy as np
from etils import epath

from experiments.grid import spec as spec_lib
from experiments.grid import store as store_lib

PAPER_RESULTS = Path(__file__).resolve().parent.parent / "paper_results.json"
FMNIST_CLASSES = ("tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                  "sneaker", "bag", "ankle_boot")


class Stat(NamedTuple):
  mean: float
  std: float
  n: int
  min: float
  max: float


def stat(values: Iterable[Any]) -> Stat | None:
  """Mean, population std, count, min and max of the non-null values."""
  v = [float(x) for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
  if not v:
    return None
  a = np.asarray(v)
  return Stat(float(a.mean()), float(a.std()), len(v), float(a.min()), float(a.max()))


def fmt(s: Stat | None, digits: int = 4) -> str:
  if s is None:
    return "-"
  text = f"{s.mean:.{digits}f}"
  return text + (f" ± {s.std:.{digits}f}" if s.n > 1 else "")


def fmt_paper(value, digits: int = 4) -> str:
  return "-" if value is None else f"{value:.{digits}f}"


def paper() -> dict:
  return json.loads(PAPER_RESULTS.read_text())


class Section(NamedTuple):
  markdown: str
  rows: list[dict]
  figure: Callable[[Path], None] | None = None


@dataclasses.dataclass(frozen=True)
class View:
  """One table or figure of an experiment's report."""
  name: str
  render: Callable[[list[dict], spec_lib.GridConfig], Section]


def group(records: Sequence[dict], *fields: str) -> dict[tuple, list[dict]]:
  """Records grouped by the values of `fields` (lists become tuples), in first-seen order."""
  out: dict[tuple, list[dict]] = collections.OrderedDict()
  for r in records:
    key = tuple(tuple(r[f]) if isinstance(r.get(f), list) else r.get(f) for f in fields)
    out.setdefault(key, []).append(r)
  return out


def labels_in(records: Sequence[dict], cfg: spec_lib.GridConfig) -> list[str]:
  """Method labels with records, in the config's order."""
  present = {r["method"] for r in records}
  return [m.label for m in cfg.methods if m.label in present]


def registry_name(cfg: spec_lib.GridConfig, label: str) -> str:
  return next((m.method for m in cfg.methods if m.label == label), label)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def accuracy_table(records: Sequence[dict], cfg: spec_lib.GridConfig, title: str,
                   paper_of: Callable[[str, str], float | None], note: str = "",
                   prefix: str = "") -> Section:
  """Rows = methods; Acc_r and Acc_f mean ± std over every record, paper beside.

  `paper_of(registry_method, metric)` looks the paper's number up;
  `prefix="val_"` reports the validation scores instead of the test ones.
  """
  rows, csv_rows = [], []
  by_label = group(records, "method")
  for label in labels_in(records, cfg):
    rs = by_label[(label,)]
    acc_r = stat(r.get(prefix + "acc_r") for r in rs)
    acc_f = stat(r.get(prefix + "acc_f") for r in rs)
    method = registry_name(cfg, label)
    rows.append([label, fmt(acc_r), fmt_paper(paper_of(method, "acc_r")), fmt(acc_f),
                 fmt_paper(paper_of(method, "acc_f")), fmt_paper(acc_f and acc_f.max),
                 acc_r.n if acc_r else 0])
    for metric, s in (("acc_r", acc_r), ("acc_f", acc_f)):
      csv_rows.append({"table": title, "method": label, "metric": prefix + metric,
                       "mean": s and s.mean, "std": s and s.std, "n": s and s.n,
                       "min": s and s.min, "max": s and s.max,
                       "paper": paper_of(method, metric)})
  md = [f"### {title}", "", markdown_table(
      ["method", "Acc_r ours", "Acc_r paper", "Acc_f ours", "Acc_f paper", "worst Acc_f", "n"],
      rows)]
  if note:
    md += ["", note]
  return Section("\n".join(md), csv_rows)


def grouped_bars(out: Path, panels: Sequence[tuple[str, Sequence[str], dict[str, list]]],
                 ylabel: str, title: str) -> None:
  """One bar chart per panel, side by side: `(title, x labels, {series: [(mean, std)
  or None per x]})`; a series is one colour across panels."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  series = list(dict.fromkeys(name for _, _, by in panels for name in by))
  colors = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(series)}
  cols = 2 if len(panels) > 1 else 1
  nrows = -(-len(panels) // cols)
  fig, axes = plt.subplots(nrows, cols, figsize=(7.5 * cols, 3.2 * nrows), squeeze=False)
  for ax, (name, xs, by) in zip(axes.flat, panels):
    width = 0.8 / max(len(by), 1)
    for i, (label, values) in enumerate(by.items()):
      pos = [j for j, v in enumerate(values) if v is not None]
      ax.bar(np.asarray(pos) + (i - (len(by) - 1) / 2) * width,
             [values[j][0] for j in pos], width, yerr=[values[j][1] for j in pos],
             color=colors[label], error_kw={"elinewidth": 0.6})
    ax.set_xticks(range(len(xs)), xs, fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(name, fontsize=9)
  for ax in list(axes.flat)[len(panels):]:
    ax.axis("off")
  fig.tight_layout()
  handles = [plt.Rectangle((0, 0), 1, 1, color=colors[n]) for n in series]
  # Above the panels; bbox_inches="tight" grows the canvas to hold it.
  fig.legend(handles, series, fontsize=7, loc="lower center", ncol=min(len(series), 8),
             bbox_to_anchor=(0.5, 1.0), title=title, title_fontsize=9, frameon=False)
  fig.savefig(out, dpi=110, bbox_inches="tight")
  plt.close(fig)


def expected_keys(cfg: spec_lib.GridConfig) -> set[str]:
  """The record keys of this config's cells, methods and retired methods."""
  expected = {spec_lib.record_key(c, m) for c, m in spec_lib.iter_work(cfg, spec_lib.cells(cfg))}
  return expected | {spec_lib.record_key(c, m) for c in spec_lib.cells(cfg) for m in cfg.retired}


def write(cfg: spec_lib.GridConfig, workdir, views: Sequence[View]) -> epath.Path:
  """Writes report.md, one CSV per view and the figures; returns report.md's path."""
  root = epath.Path(workdir)
  store = store_lib.Store(root)
  # Only the records of this config's cells and settings: a store may also
  # hold records of settings a preset has since changed.
  expected = expected_keys(cfg)
  records = [r for r in store.write_results() if r.get("key") in expected]
  md = [f"# {cfg.name}: report", "",
        f"{len(records)} records in `{root / store_lib.RESULTS}`; config `{cfg.preset}`; "
        f"machines: {', '.join(sorted({r.get('device', '?') for r in records})) or '-'}; "
        f"versions: {_versions(records)}.", ""]
  for view in views:
    section = view.render(records, cfg)
    md += [f"## {view.name}", "", section.markdown, ""]
    if section.rows:
      store_lib.atomic_write(root / f"{_slug(view.name)}.csv", _csv(section.rows))
    if section.figure is not None and records:
      section.figure(Path(str(root / f"{_slug(view.name)}.png")))
      md += [f"![{view.name}]({_slug(view.name)}.png)", ""]
  out = root / "report.md"
  store_lib.atomic_write(out, "\n".join(md))
  return out


def _versions(records: Sequence[dict]) -> str:
  seen = sorted({json.dumps({k: r.get("versions", {}).get(k) for k in ("jax", "flax")})
                 for r in records})
  return "; ".join(", ".join(f"{k} {v}" for k, v in json.loads(s).items()) for s in seen) or "-"


def _slug(name: str) -> str:
  return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")


def _csv(rows: Sequence[dict]) -> str:
  fields = list(dict.fromkeys(k for r in rows for k in r))
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
  writer.writeheader()
  writer.writerows(rows)
  return buf.getvalue()
