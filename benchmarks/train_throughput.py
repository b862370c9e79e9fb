"""Classifier training throughput (images/s) in geniu_jax against eager PyTorch.

The JAX side is the library's own step, `geniu_jax.geniu.train.make_train_step`
as `train()` uses it: the training set lives on the device, each call gets the
batch's indices and gathers inside the jitted step, the classifier state is
donated, BatchNorm runs in train mode, the optimizer is the paper's (Adam +
coupled L2 weight decay, one-cycle schedule). The PyTorch reference indexes a
CPU tensor, runs forward, `backward()` and `Adam.step()` eagerly. Both use
the same batch size, width, thread count (all cores) and fresh random data.

JSON: {"jax_img_s", "torch_img_s", "ratio" = jax / torch, ...}; each rate is
batch / median step time over `--reps` steps after compilation and warm-up.

Usage: python -m benchmarks.train_throughput [--width 1.0] [--batch 256] [--json]
"""

from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import _common as C
from geniu_jax.config import get_config
from geniu_jax.geniu import train as train_lib
from geniu_jax.models import functional as F
from geniu_jax.models.conv import LOWERINGS

IMAGE_SHAPE = (28, 28, 1)


def measure_jax(width: float, batch: int, reps: int, warmup: int, lowering: str = "auto",
                n: int = 2048, seed: int = 0, precision: str = "float32") -> dict:
  """Median time of the library's jitted classifier step (data on device)."""
  cfg = get_config("paper", width=width, batch_size=batch, lowering=lowering,
                   precision=precision)
  k_model, k_x, k_y = jax.random.split(jax.random.key(seed), 3)
  classifier = F.make_classifier(10, IMAGE_SHAPE, width, lowering, k_model, precision)
  optimizer = train_lib.classifier_optimizer(cfg, 10_000)
  state = train_lib.ClassifierState(classifier.params, classifier.stats,
                                    optimizer.init(classifier.params))
  step = train_lib.make_train_step(classifier.graphdef, optimizer, None, None)
  x_all = jax.random.uniform(k_x, (n, *IMAGE_SHAPE))
  y_all = jax.random.randint(k_y, (n,), 0, 10)
  rng = np.random.default_rng(seed)
  holder = {"state": state}

  def one_step():
    idx = jnp.asarray(rng.integers(0, n, batch), jnp.int32)
    holder["state"], _, _, loss, _ = step(holder["state"], None, None, x_all, y_all, idx)
    jax.block_until_ready(loss)

  t0 = time.perf_counter()
  one_step()  # compiles
  compile_s = time.perf_counter() - t0
  timing = C.timed(one_step, reps, warmup)
  flops = 3 * C.allcnn_forward_flops(width) * batch
  return {"jax_img_s": batch / timing["median_s"], "jax_step_ms": timing["median_s"] * 1e3,
          "jax_times_ms": [t * 1e3 for t in timing["times_s"]], "jax_cpu_s": timing["cpu_s"],
          "jax_gflops": flops / timing["median_s"] / 1e9, "first_step_s": compile_s}


def main(argv=None) -> int:
  p = C.parser(__doc__.splitlines()[0])
  p.add_argument("--width", type=float, default=1.0)
  p.add_argument("--batch", type=int, default=256)
  p.add_argument("--lowering", default="auto", choices=LOWERINGS)
  p.add_argument("--torch-device", default="cpu", help="cpu or cuda (PyTorch reference)")
  C.add_precision_flags(p)
  args = p.parse_args(argv)
  extra = C.setup(args)
  C.apply_matmul_precision(args)
  warmup = max(args.warmup, 1)

  out = measure_jax(args.width, args.batch, args.reps, warmup, args.lowering,
                    precision=args.precision)
  ref = None if args.no_torch else C.run_torch(
      "train", "--width", str(args.width), "--batch", str(args.batch), "--reps",
      str(args.reps), "--warmup", str(warmup), "--device", args.torch_device, *extra)
  out.update(torch_img_s=ref and ref["img_s"], torch_step_ms=ref and ref["median_ms"],
             torch_times_ms=ref and ref["times_ms"], torch_cpu_s=ref and ref["cpu_s"],
             torch_env=ref and {k: ref[k] for k in ("torch", "threads", "device", "gpu")
                                if k in ref})
  out["ratio"] = C.ratio(out["jax_img_s"], out["torch_img_s"])
  out.update(width=args.width, batch=args.batch, lowering=args.lowering, reps=args.reps,
             malloc_tuning=args.malloc_tuning, precision=args.precision,
             matmul_precision=args.matmul_precision)
  lines = [
      f"Classifier training: AllCNN width {args.width}, batch {args.batch}, 28x28x1; "
      f"{args.precision} compute, matmul precision {args.matmul_precision}",
      f"  geniu_jax  {out['jax_img_s']:8.1f} img/s  (step {out['jax_step_ms']:.0f} ms, "
      f"{out['jax_gflops']:.1f} GFLOP/s, {out['jax_cpu_s']:.2f} CPU-s/step)",
      f"  PyTorch    {C.fmt(out['torch_img_s'], '8.1f')} img/s  (eager; "
      f"{C.fmt(out['torch_cpu_s'], '.2f')} CPU-s/step)",
      f"  ratio      {C.fmt(out['ratio'], '8.2f')}",
  ]
  C.emit(lines, out, args.json)
  return 0


if __name__ == "__main__":
  sys.exit(main())
