"""N runs vmapped in one compiled program against N sequential runs.

Two sweeps, each timed after compilation:

* unlearning: one trained model, N forgotten classes (0..N-1) -- N calls of
  the library's `make_unlearn_fn` program against one call of
  `geniu_jax.sweep.unlearn_many` (the same program vmapped over `forget`);
* training: N seeds -- one steady-state epoch of `train.train` per seed
  against one epoch of `geniu_jax.sweep.train_many` (all seeds vmapped).

A ratio above 1 means the vmapped program has that much more throughput. On
a 2-core CPU the matmuls already fill the cores, so expect about 1. On an
H100 with native convolutions it measured ~1 for unlearning and ~0.5 for
training (vmapped per-run weights make grouped convolutions;
benchmarks/RESULTS.md); `--vmap-lowering
patches` gives the vmapped unlearning program batched matmuls instead.

JSON: {"n", "unlearn_seq_ms", "unlearn_vmap_ms", "unlearn_ratio",
"train_seq_epoch_s", "train_vmap_epoch_s", "train_ratio", ...}.

Usage: python -m benchmarks.sweep [--n 5] [--width 1.0] [--rounds 100] [--json]
"""

from __future__ import annotations

import statistics
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import _common as C
from benchmarks.unlearn_latency import build
from geniu_jax import compile_cache, sweep
from geniu_jax.config import get_config
from geniu_jax.geniu import train as train_lib
from geniu_jax.geniu import unlearn as unlearn_lib
from geniu_jax.models.conv import LOWERINGS


def measure_unlearn(n: int, width: float, rounds: int, reps: int, warmup: int,
                    vmap_lowering: str | None = None) -> dict:
  classifier, generator, prompts = build(width, 1)
  kw = dict(rounds=rounds, lr=4e-4, stop_forget_prob=None)
  one = unlearn_lib.make_unlearn_fn(classifier.graphdef, generator.graphdef, **kw)
  vcls, vgen = classifier, generator
  if vmap_lowering:  # same parameters, other convolution lowering
    vcls = sweep.with_lowering(classifier, vmap_lowering)
    vgen = sweep.with_lowering(generator._replace(stats=None), vmap_lowering)
  many = sweep.make_unlearn_many_fn(vcls.graphdef, vgen.graphdef, **kw)
  base = (classifier.params, classifier.stats, generator.params, prompts)
  sets = [jnp.array([k], jnp.int32) for k in range(n)]
  stacked = jnp.stack(sets)

  def sequential():
    for forget in sets:
      jax.block_until_ready(one(*base, forget))

  def vmapped():
    jax.block_until_ready(many(*base, stacked))

  seq = C.timed(sequential, reps, warmup + 1)  # the first warm-up call compiles
  vm = C.timed(vmapped, reps, warmup + 1)
  return {"unlearn_seq_ms": seq["median_s"] * 1e3, "unlearn_vmap_ms": vm["median_s"] * 1e3,
          "unlearn_ratio": seq["median_s"] / vm["median_s"]}


def measure_train(n: int, width: float, images: int, epochs: int, geniu: bool) -> dict:
  cfg = get_config("cpu" if geniu else "paper", width=width, epochs=epochs)
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(images, 28, 28, 1)).astype(np.float32)
  y = (np.arange(images) % 10).astype(np.int32)
  seeds = list(range(n))
  # Steady state: epochs after the first (which compiles), median over them.
  steady = lambda hist: statistics.median(h["seconds"] for h in hist[1:])
  seq = sum(steady(train_lib.train(cfg.replace(seed=s), x, y, 10, geniu=geniu,
                                   log=None).history) for s in seeds)
  vm = steady(sweep.train_many(cfg, x, y, 10, seeds, geniu=geniu, log=None)[0].history)
  return {"train_seq_epoch_s": seq, "train_vmap_epoch_s": vm, "train_ratio": seq / vm}


def main(argv=None) -> int:
  p = C.parser(__doc__.splitlines()[0])
  p.add_argument("--n", type=int, default=5, help="forgotten classes / seeds")
  p.add_argument("--width", type=float, default=1.0, help="AllCNN width of the unlearning sweep")
  p.add_argument("--rounds", type=int, default=100)
  p.add_argument("--train-n", type=int, default=None, help="seeds of the training sweep (default --n)")
  p.add_argument("--train-width", type=float, default=0.25)
  p.add_argument("--train-images", type=int, default=2048)
  p.add_argument("--train-epochs", type=int, default=3)
  p.add_argument("--train-geniu", action="store_true",
                 help="GENIU's training phase (cpu preset) instead of plain training")
  p.add_argument("--skip-train", action="store_true")
  p.add_argument("--vmap-lowering", choices=LOWERINGS, default=None,
                 help="conv lowering of the vmapped unlearning program only")
  args = p.parse_args(argv)
  C.setup(args)

  out = measure_unlearn(args.n, args.width, args.rounds, args.reps, args.warmup,
                        args.vmap_lowering)
  if not args.skip_train:
    # Each sequential `train` call jits its own (equal) step; a persistent
    # cache in a scratch directory compiles it once. Timed epochs exclude
    # compilation either way, so this only shortens the benchmark.
    compile_cache.enable(tempfile.mkdtemp(prefix="geniu_sweep_cc_"))
    out.update(measure_train(args.train_n or args.n, args.train_width, args.train_images,
                             max(args.train_epochs, 2), args.train_geniu))
  out.update(n=args.n, train_n=args.train_n or args.n, vmap_lowering=args.vmap_lowering, width=args.width, rounds=args.rounds, train_width=args.train_width,
             train_images=args.train_images, train_geniu=args.train_geniu, reps=args.reps)
  lines = [
      f"Unlearning sweep: {args.n} forgotten classes, width {args.width}, {args.rounds} rounds"
      f"{f' (vmapped with {args.vmap_lowering} convs)' if args.vmap_lowering else ''}",
      f"  sequential {out['unlearn_seq_ms']:10.1f} ms   vmapped {out['unlearn_vmap_ms']:10.1f} ms"
      f"   throughput ratio {out['unlearn_ratio']:.2f}",
  ]
  if not args.skip_train:
    lines += [
        f"Training sweep: {out['train_n']} seeds, width {args.train_width}, {args.train_images} images"
        f"{' (GENIU phase)' if args.train_geniu else ''}, one steady-state epoch",
        f"  sequential {out['train_seq_epoch_s']:10.2f} s    vmapped "
        f"{out['train_vmap_epoch_s']:10.2f} s    throughput ratio {out['train_ratio']:.2f}",
    ]
  C.emit(lines, out, args.json)
  return 0


if __name__ == "__main__":
  sys.exit(main())
