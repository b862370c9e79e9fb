"""A pipeline check of the CIFAR-10 path on MOCK data: shapes and plumbing, never results.

Runs Table 1's grid (`experiments.table1`: the original, both pinned GENIU
settings, Retrain, GKT, UNSIR, I-R, Unrolling SGD, I-R relabel and the Table
9 ablations) on one cell at 32x32x3, with `tfds:cifar10` served by
`tfds.testing.mock_data`: random images and labels in CIFAR-10's format,
generated on the fly, no download. It checks that every method trains,
unlearns and is scored on 3-channel 32x32 images (the paper's CIFAR-10
architecture and latent size follow from the image shape), and that records
and reports come out. The accuracies in its store and report are of random
images with random labels: they measure nothing and must never be read or
quoted as CIFAR-10 results. Real CIFAR-10 runs need the real data (`--data
cifar10=tfds:cifar10` with TFDS_DATA_DIR set, or an npz).

    python -m experiments.cifar_pipeline --config smoke --workdir /tmp/cifar_pipeline
    python -m experiments.cifar_pipeline --config smoke --workdir /tmp/cifar_pipeline --report

Only `smoke` exists (other configs are refused): class 9 forgotten, seed 0,
the smoke preset at the other smoke tables' lowering (`table2.SMOKE_VARIANT`),
200 mock training and test images: ~4 min on a busy 2-core CPU, nearly all
compilation.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Sequence

from experiments import table1, table2
from experiments.grid import main as grid_main
from experiments.grid import report as R
from experiments.grid import runner
from experiments.grid.spec import GridConfig

SOURCE = "tfds:cifar10"
MOCK_EXAMPLES = 200
BANNER = ("PIPELINE CHECK ON MOCK DATA (tfds.testing.mock_data: random images and labels). "
          "These numbers are not CIFAR-10 results and measure nothing.")


def get_config(variant: str = "smoke") -> GridConfig:
  if variant != "smoke":
    raise ValueError(f"the CIFAR-10 pipeline check has only the smoke config, not {variant!r}: "
                     "it runs on mock data")
  return GridConfig(name="cifar_pipeline", preset="smoke", datasets=(("cifar10", SOURCE),),
                    forget_sets=((9,),), seeds=(0,), train_variants=(table2.SMOKE_VARIANT,),
                    methods=table1.methods())


@contextlib.contextmanager
def mock_cifar10(num_examples: int = MOCK_EXAMPLES):
  """`tfds:cifar10` answers with mock data inside; the grid's dataset cache,
  which would keep the mock data under the real name, is emptied on both sides."""
  import tensorflow_datasets as tfds  # lazy: heavy, and only this check needs it

  runner.load_dataset.cache_clear()
  try:
    with tfds.testing.mock_data(num_examples=num_examples):
      yield
  finally:
    runner.load_dataset.cache_clear()


def pipeline(records, cfg) -> R.Section:
  """Which methods ran, their shapes and timings; the accuracies only as plumbing."""
  rows, csv_rows = [], []
  done = {r["method"]: r for r in records}
  for m in cfg.methods:
    r = done.get(m.label)
    ran = r is not None
    rows.append([m.label, m.method, "yes" if ran else "NO",
                 "-" if not ran or r.get("acc_r") is None else f"{r['acc_r']:.3f}",
                 "-" if not ran or r.get("acc_f") is None else f"{r['acc_f']:.3f}",
                 "-" if not ran or r.get("unlearn_ms") is None else f"{r['unlearn_ms']:.0f}"])
    csv_rows.append({"check": "mock_data_pipeline", "method": m.label, "registry_method": m.method,
                     "ran": ran, "mock_acc_r": r and r.get("acc_r"),
                     "mock_acc_f": r and r.get("acc_f"), "unlearn_ms": r and r.get("unlearn_ms")})
  md = R.markdown_table(["method", "registry", "ran", "Acc_r (mock, meaningless)",
                         "Acc_f (mock, meaningless)", "unlearn ms"], rows)
  missing = [row[0] for row in rows if row[2] == "NO"]
  verdict = ("every method ran on the mock `tfds:cifar10` cell (32x32x3 images)"
             if not missing else f"NOT every method ran: missing {', '.join(missing)}")
  return R.Section(f"**{BANNER}**\n\n{md}\n\nPipeline: {verdict}.", csv_rows)


VIEWS = (R.View("CIFAR-10 pipeline check (mock data)", pipeline),)


def main(argv: Sequence[str] | None = None) -> int:
  with mock_cifar10():
    return grid_main.main(get_config, VIEWS, argv, description=__doc__.splitlines()[0])


if __name__ == "__main__":
  sys.exit(main())
