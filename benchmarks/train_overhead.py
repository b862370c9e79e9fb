"""Time cost of GENIU's auxiliaries: a GENIU training epoch against a plain one.

Runs the library's `train.train` twice on the same data and config, once with
`geniu=False` (classifier only) and once with `geniu=True` (classifier +
prompts (Eq. 8) + gate + selection (§4.4) + generator (Eq. 4-6), Alg. 1), and
compares steady-state epoch times (median over the epochs after the first,
which compiles). The paper reports roughly 40 % extra (App. E, Fig. 5).

Data: the embedded Fashion-MNIST subset made imbalanced (majority class 9,
r = 0.1) and tiled to `--images` rows, by default 11,400 -- the size of the
paper's imbalanced Fashion-MNIST (6,000 + 9 x 600) -- so the classifier epoch
has the paper's length and the prompts see real classes (the gate opens and the
generator trains; `gen_epochs` reports in how many timed epochs it did).

Default config: the `paper` preset (width 1.0, B = 1, 100 prompt and 100
generator steps) with `selection_source='epoch'` (entropies of the logits the
classifier epoch already computes). `--selection-source pass` times Alg. 1 as
written, with its extra evaluation pass over the training set.

The gate of Alg. 1 skips the generator in epochs whose prompts are not all
classified correctly (a `lax.cond`, so a skipped generator costs nothing).
So that the figure is the cost with the generator trained every epoch, the
benchmark also times the generator's `generator_steps` Adam steps on their
own (`generator.train_generator`, jitted, same shapes) and adds that time to
each timed epoch in which the gate stayed shut.

JSON: {"plain_s", "geniu_s" (gate open every epoch), "overhead" = geniu_s /
plain_s - 1, "geniu_measured_s", "gen_epochs", "generator_s", ...}.

Usage: python -m benchmarks.train_overhead [--width 1.0] [--images 11400] [--json]
"""

from __future__ import annotations

import math
import statistics
import sys

import jax
import numpy as np
import optax

from benchmarks import _common as C
from geniu_jax import data as data_lib
from geniu_jax.config import get_config
from geniu_jax.geniu import generator as gen_lib
from geniu_jax.geniu import train as train_lib
from geniu_jax.models import functional as F

MAJORITY = 9


def imbalanced_data(images: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Embedded Fashion-MNIST, imbalanced, tiled (whole copies, then a prefix) to `images` rows."""
  ds = data_lib.load("embedded")
  x, y = data_lib.make_imbalanced(ds.x_train, ds.y_train, [MAJORITY], 0.1, ds.num_classes, seed)
  reps = -(-images // len(y))
  order = np.random.default_rng(seed).permutation(reps * len(y))[:images] % len(y)
  return x[order], y[order]


def generator_seconds(cfg, reps: int) -> float:
  """Median time of one epoch's generator training (Eq. 6, `generator_steps` steps)."""
  shape, k = (28, 28, 1), 10 * cfg.proxies_per_class
  gen = F.make_generator(shape, cfg.latent_dim, cfg.lowering, jax.random.key(0))
  opt = optax.adam(cfg.generator_lr)
  z = jax.random.normal(jax.random.key(1), (k, *shape))
  targets = jax.random.uniform(jax.random.key(2), (k, *shape))
  fn = jax.jit(lambda state, key: gen_lib.train_generator(
      state, gen.graphdef, z, targets, key, opt, cfg.generator_steps, cfg.kl_weight))
  state = gen_lib.GeneratorState(gen.params, opt.init(gen.params))
  return C.timed(lambda: jax.block_until_ready(fn(state, jax.random.key(3))), reps, 1)[
      "median_s"]


def steady_seconds(history: list[dict], gen_s: float = 0.0) -> float:
  """Median epoch time after the first; `gen_s` added where the generator was skipped."""
  return statistics.median(
      row["seconds"] + (gen_s if math.isnan(row.get("generator_rec", 0.0)) else 0.0)
      for row in history[1:])


def main(argv=None) -> int:
  p = C.parser(__doc__.splitlines()[0])
  p.add_argument("--preset", default="paper", choices=("paper", "cpu", "smoke"))
  p.add_argument("--width", type=float, default=None, help="default: the preset's")
  p.add_argument("--images", type=int, default=11_400)
  p.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is not timed")
  p.add_argument("--selection-source", default="epoch", choices=("epoch", "pass"))
  args = p.parse_args(argv)
  C.setup(args)

  cfg = get_config(args.preset, width=args.width, epochs=max(args.epochs, 2),
                   selection_source=args.selection_source)
  x, y = imbalanced_data(args.images)
  plain = train_lib.train(cfg, x, y, 10, geniu=False, log=None).history
  geniu = train_lib.train(cfg, x, y, 10, geniu=True, log=None).history
  gen_epochs = sum(not math.isnan(r["generator_rec"]) for r in geniu[1:])
  gen_s = generator_seconds(cfg, args.reps) if gen_epochs < len(geniu) - 1 else 0.0
  out = {"plain_s": steady_seconds(plain), "geniu_s": steady_seconds(geniu, gen_s),
         "geniu_measured_s": steady_seconds(geniu), "generator_s": gen_s,
         "gen_epochs": gen_epochs,
         "timed_epochs": len(geniu) - 1, "plain_epoch_s": [r["seconds"] for r in plain],
         "geniu_epoch_s": [r["seconds"] for r in geniu]}
  out["overhead"] = out["geniu_s"] / out["plain_s"] - 1.0
  out.update(preset=cfg.preset, width=cfg.width, images=args.images, batch=cfg.batch_size,
             proxies_per_class=cfg.proxies_per_class, prompt_steps=cfg.prompt_steps,
             generator_steps=cfg.generator_steps, selection_source=cfg.selection_source)
  lines = [
      f"Training epoch, {cfg.preset} preset (width {cfg.width}, B={cfg.proxies_per_class}, "
      f"{cfg.prompt_steps} prompt + {cfg.generator_steps} generator steps, selection "
      f"'{cfg.selection_source}'), {args.images} images, batch {cfg.batch_size}",
      f"  plain classifier epoch  {out['plain_s']:8.2f} s",
      f"  GENIU training epoch    {out['geniu_s']:8.2f} s   (generator trained in "
      f"{out['gen_epochs']}/{out['timed_epochs']} timed epochs; "
      f"{out['generator_s']:.2f} s added to each other one)",
      f"  overhead                {100 * out['overhead']:8.1f} %   (paper, App. E: ~40 %)",
  ]
  C.emit(lines, out, args.json)
  return 0


if __name__ == "__main__":
  sys.exit(main())
