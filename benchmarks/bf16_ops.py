"""Does XLA's backend here compute in bfloat16? One op at a time, float32 vs bfloat16.

For each op of the unlearning loop's kinds -- the Winograd batched products
(16 x (1960 x 96) @ (96 x 96)), a large matmul, a native 3x3 convolution on
ten 28x28x96 images, an elementwise-and-reduce fusion -- the median time in
each dtype, and whether the compiled (optimised) HLO of the bfloat16 product
still multiplies in bfloat16 or converts its operands to float32 first.

    python -m benchmarks.bf16_ops [--json]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from benchmarks import _common as C


def _median_ms(fn, *args, reps: int = 20) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append((time.perf_counter() - t0) * 1e3)
  return sorted(times)[len(times) // 2]


def _dot_dtype(hlo: str) -> str:
  """The element type the compiled program's first dot computes in."""
  line = next(l for l in hlo.splitlines() if " dot(" in l)
  return line.split("=")[1].strip().split("[")[0]


def measure() -> dict:
  out = {}
  batched = jax.jit(lambda a, b: jnp.einsum("bij,jk->bik", a, b))
  matmul = jax.jit(lambda a, b: a @ b)
  conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
  fusion = jax.jit(lambda x: jax.nn.relu(x * 1.5 + 0.2).sum())
  for dtype in (jnp.float32, jnp.bfloat16):
    name = jnp.dtype(dtype).name
    a, b = jnp.ones((16, 1960, 96), dtype), jnp.ones((96, 96), dtype)
    x, w = jnp.ones((10, 28, 28, 96), dtype), jnp.ones((3, 3, 96, 96), dtype)
    m1, m2 = jnp.ones((2048, 1024), dtype), jnp.ones((1024, 1024), dtype)
    hlo = batched.lower(a, b).compile().as_text()
    out[name] = {"winograd_products_ms": _median_ms(batched, a, b),
                 "matmul_2048x1024x1024_ms": _median_ms(matmul, m1, m2),
                 "conv_10x28x28x96_ms": _median_ms(conv, x, w),
                 "elementwise_reduce_ms": _median_ms(fusion, x),
                 "dot_computes_in": _dot_dtype(hlo),
                 "converts_in_hlo": hlo.count(" convert(")}
  return out


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
  args = p.parse_args()
  ops = measure()
  lines = [f"{dtype}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                    for k, v in row.items()) for dtype, row in ops.items()]
  C.emit(lines, {"ops": ops}, args.json)


if __name__ == "__main__":
  main()
