"""GENIU's unlearning phase (Alg. 2) in geniu_jax against eager PyTorch.

What is timed is the library's own compiled program, `make_unlearn_fn` (the
one `geniu unlearn` runs): proxies x' = g(z) from the VAE, then `rounds`
rounds of in-batch tuning (Eq. 10) in one `lax.while_loop`, each round a
forward + backward + Adam step, the per-round trace (`TuningInfo`) read off
that same forward's logits. The PyTorch reference (`benchmarks.torch_reference.unlearn`)
does the same work per round. Time is from inputs on the device to the tuned
parameters ready, compilation excluded (reported apart as `compile_ms`).

Paper size: width 1.0, one proxy per class (10 proxies), 100 rounds, no stop
rule; models freshly initialised (the arithmetic does not depend on the
weights: no data-dependent control flow without a stop rule).

JSON: {"jax_ms", "torch_ms", "speedup" = torch_ms / jax_ms, "compile_ms",
"gflops" (achieved by the JAX loop, counting 3 forward-equivalents per proxy
per round: forward, backward = 2), ...}.

Usage: python -m benchmarks.unlearn_latency [--width 1.0] [--rounds 100] [--json]
"""

from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp

from benchmarks import _common as C
from geniu_jax.geniu import unlearn as unlearn_lib
from geniu_jax.models import functional as F
from geniu_jax.models.conv import LOWERINGS

NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28, 1)


def build(width: float, per_class: int, lowering: str = "auto", seed: int = 0,
          precision: str = "float32"):
  """(classifier, generator, prompts) of the paper's MNIST-style models."""
  k_cls, k_gen, k_z = jax.random.split(jax.random.key(seed), 3)
  classifier = F.make_classifier(NUM_CLASSES, IMAGE_SHAPE, width, lowering, k_cls, precision)
  generator = F.make_generator(IMAGE_SHAPE, None, lowering, k_gen)
  prompts = jax.random.normal(k_z, (NUM_CLASSES * per_class, *IMAGE_SHAPE))
  return classifier, generator, prompts


def measure_jax(width: float, rounds: int, per_class: int, reps: int, warmup: int,
                lowering: str = "auto", forget=(0,), precision: str = "float32") -> dict:
  """Compile time and median run time of the library's unlearning program."""
  classifier, generator, prompts = build(width, per_class, lowering, precision=precision)
  fn = unlearn_lib.make_unlearn_fn(classifier.graphdef, generator.graphdef, rounds=rounds,
                                   lr=4e-4, stop_forget_prob=None)
  args = (classifier.params, classifier.stats, generator.params, prompts,
          jnp.asarray(forget, jnp.int32))
  t0 = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_ms = (time.perf_counter() - t0) * 1e3
  timing = C.timed(lambda: jax.block_until_ready(compiled(*args)), reps, warmup)
  _, info = compiled(*args)
  flops = 3 * C.allcnn_forward_flops(width) * prompts.shape[0] * rounds
  return {"jax_ms": timing["median_s"] * 1e3, "compile_ms": compile_ms,
          "jax_times_ms": [t * 1e3 for t in timing["times_s"]],
          "jax_cpu_s": timing["cpu_s"], "tflop": flops / 1e12,
          "gflops": flops / timing["median_s"] / 1e9, "rounds_run": int(info.rounds_run)}


def main(argv=None) -> int:
  p = C.parser(__doc__.splitlines()[0])
  p.add_argument("--width", type=float, default=1.0)
  p.add_argument("--rounds", type=int, default=100)
  p.add_argument("--per-class", type=int, default=1, help="B, proxies per class")
  p.add_argument("--lowering", default="auto", choices=LOWERINGS)
  p.add_argument("--torch-device", default="cpu", help="cpu or cuda (PyTorch reference)")
  p.add_argument("--torch-bare", action="store_true",
                 help="also time PyTorch without the per-round trace bookkeeping (the paper's bare loop)")
  C.add_precision_flags(p)
  args = p.parse_args(argv)
  extra = C.setup(args)
  C.apply_matmul_precision(args)

  out = measure_jax(args.width, args.rounds, args.per_class, args.reps, args.warmup,
                    args.lowering, precision=args.precision)
  torch_args = ["--width", str(args.width), "--rounds", str(args.rounds), "--per-class",
                str(args.per_class), "--reps", str(args.reps), "--warmup",
                str(max(args.warmup, 1)), "--device", args.torch_device, *extra]
  ref = None if args.no_torch else C.run_torch("unlearn", *torch_args)
  bare = C.run_torch("unlearn", *torch_args, "--no-trace") if args.torch_bare and ref else None
  out.update(torch_ms=ref and ref["median_ms"], torch_times_ms=ref and ref["times_ms"],
             torch_cpu_s=ref and ref["cpu_s"],
             torch_bare_ms=bare and bare["median_ms"], torch_env=ref and {
                 k: ref[k] for k in ("torch", "threads", "device", "gpu") if k in ref})
  out["speedup"] = C.ratio(out["torch_ms"], out["jax_ms"])
  out.update(width=args.width, rounds=args.rounds, proxies=NUM_CLASSES * args.per_class,
             lowering=args.lowering, reps=args.reps, malloc_tuning=args.malloc_tuning,
             precision=args.precision, matmul_precision=args.matmul_precision)
  lines = [
      f"GENIU unlearning (Alg. 2): width {args.width}, {out['proxies']} proxies, "
      f"{args.rounds} rounds, {out['tflop']:.2f} TFLOP; {args.precision} compute, "
      f"matmul precision {args.matmul_precision}",
      f"  geniu_jax  {out['jax_ms']:10.1f} ms  (median of {args.reps}; compile "
      f"{out['compile_ms']:.0f} ms; {out['gflops']:.1f} GFLOP/s; "
      f"{out['jax_cpu_s']:.1f} CPU-s/run)",
      f"  PyTorch    {C.fmt(out['torch_ms'], '10.1f')} ms  (eager, same work per round; "
      f"{C.fmt(out['torch_cpu_s'])} CPU-s/run)",
  ]
  if bare:
    lines.append(f"  PyTorch    {out['torch_bare_ms']:10.1f} ms  (bare loop, no trace)")
  lines.append(f"  speedup    {C.fmt(out['speedup'], '10.2f')} x")
  C.emit(lines, out, args.json)
  return 0


if __name__ == "__main__":
  sys.exit(main())
