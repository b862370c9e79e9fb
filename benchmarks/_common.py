"""Shared plumbing of the benchmark modules: timing, machine record, torch subprocess, output.

Every benchmark prints a readable report and, with `--json`, one JSON object
as its last line. Each JSON object carries a `machine` record (CPU, cores,
load average at start and end, device, package versions) so that a figure can
be traced to where it was taken: the load average is there because a busy
machine inflates every wall-clock time, and a figure taken under load is only
comparable with figures taken in the same run.

The PyTorch reference runs in its own process (`python -m
benchmarks.torch_reference ...`), after the JAX measurement has finished:
neither framework's thread pool then competes with the other's, and a machine
without torch still runs the JAX half (the torch fields are then null).
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from importlib import metadata
from typing import Any, Callable

import jax

# Analytic forward FLOPs of the models (2 per multiply-add), used for achieved
# GFLOP/s; they count the convolutions and dense layers, which are >99 % of it.
ALLCNN_BLOCKS = ((96, 3, 1), (96, 3, 1), (192, 3, 2), (192, 3, 1), (192, 3, 1),
                 (192, 3, 2), (192, 3, 1), (192, 1, 1))


def allcnn_forward_flops(width: float = 1.0, image_shape=(28, 28, 1),
                         num_classes: int = 10) -> int:
  """Multiply-add FLOPs of one AllCNN forward pass on one image."""
  h, w, c_in = image_shape
  flops = 0
  for channels, k, stride in ALLCNN_BLOCKS:
    c_out = max(1, int(channels * width))
    h, w = -(-h // stride), -(-w // stride)
    flops += 2 * h * w * k * k * c_in * c_out
    c_in = c_out
  return flops + 2 * c_in * num_classes


def machine() -> dict[str, Any]:
  """Where a figure was taken: CPU, cores, load, JAX backend and versions."""
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  versions = {}
  for name in ("jax", "jaxlib", "flax", "optax", "numpy", "torch"):
    try:
      versions[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      versions[name] = None
  dev = jax.devices()[0]
  return {"cpu": cpu, "cores": os.cpu_count(), "load_avg": list(os.getloadavg()),
          "backend": jax.default_backend(), "device": dev.device_kind,
          "device_count": jax.device_count(), "python": platform.python_version(),
          "versions": versions}


def timed(fn: Callable[[], Any], reps: int, warmup: int = 1) -> dict[str, Any]:
  """Median wall time of `fn()` (which must block until its result is ready).

  Also records the process CPU time per run: on a shared machine, CPU seconds
  are a steadier measure of the work done than wall seconds.
  """
  for _ in range(warmup):
    fn()
  walls, cpus = [], []
  for _ in range(reps):
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    fn()
    t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    walls.append(t1 - t0)
    cpus.append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
  return {"median_s": statistics.median(walls), "times_s": walls,
          "cpu_s": statistics.median(cpus)}


def tune_malloc() -> bool:
  """Keeps freed large blocks in glibc's heap instead of returning them to the OS.

  glibc serves blocks over its mmap threshold with a fresh mmap and unmaps
  them on free, so a program that allocates the same large buffers every step
  page-faults them back in every step. M_MMAP_MAX=0 sends every block to the
  heap and M_TRIM_THRESHOLD keeps up to 1 GiB of free heap mapped. PyTorch's
  CPU training step gets ~30 % cheaper; XLA's per-execution buffers do not go
  through this path (its fault count is unchanged; see RESULTS.md). Applied to
  both frameworks by `--malloc-tuning`. Process-wide and glibc-only; returns
  False elsewhere.
  """
  try:
    libc = ctypes.CDLL("libc.so.6")
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
  except (OSError, AttributeError):
    return False


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc <malloc.h>


def torch_available() -> bool:
  return importlib.util.find_spec("torch") is not None


def run_torch(task: str, *args: str, timeout: float = 3600) -> dict | None:
  """Runs the PyTorch reference in a subprocess; its JSON, or None without torch."""
  if not torch_available():
    return None
  cmd = [sys.executable, "-m", "benchmarks.torch_reference", task, *args, "--json"]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  if proc.returncode != 0:
    raise RuntimeError(f"torch reference failed ({' '.join(cmd)}):\n{proc.stderr[-2000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def parser(description: str) -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=description)
  p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
  p.add_argument("--reps", type=int, default=5, help="timed runs (median is reported)")
  p.add_argument("--warmup", type=int, default=1, help="untimed runs after compilation")
  p.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
  p.add_argument("--malloc-tuning", action="store_true",
                 help="keep freed memory in the heap (see tune_malloc), in both frameworks")
  return p


# `jax_default_matmul_precision` values for float32 products and convolutions:
# `default` lets the backend choose (TF32 on NVIDIA Ampere and Hopper GPUs),
# `tensorfloat32` asks for TF32, `float32` for full float32 (no TF32).
MATMUL_PRECISIONS = ("default", "tensorfloat32", "float32")


def add_precision_flags(p: argparse.ArgumentParser) -> None:
  p.add_argument("--precision", default="float32", choices=("float32", "bfloat16"),
                 help="classifier compute dtype (bfloat16: float32 parameters and "
                      "optimizer state, `Config.precision`)")
  p.add_argument("--matmul-precision", default="default", choices=MATMUL_PRECISIONS,
                 help="precision of float32 products and convolutions (JAX side only)")


def apply_matmul_precision(args) -> None:
  if args.matmul_precision != "default":
    jax.config.update("jax_default_matmul_precision", args.matmul_precision)


def setup(args) -> list[str]:
  """Applies process-level options; returns the extra flags for the torch subprocess."""
  if args.malloc_tuning and not tune_malloc():
    raise SystemExit("--malloc-tuning needs glibc")
  return ["--malloc-tuning"] if args.malloc_tuning else []


def ratio(a: float | None, b: float | None) -> float | None:
  return None if a is None or b is None or b == 0 else a / b


def emit(lines: list[str], result: dict[str, Any], as_json: bool) -> None:
  """Prints the report; with `as_json`, the JSON object last."""
  result = dict(result, machine=dict(machine(), load_avg_start=_LOAD_AT_IMPORT))
  for line in lines:
    print(line)
  m = result["machine"]
  print(f"machine: {m['cpu']}, {m['cores']} cores, {m['backend']} ({m['device']}), "
        f"load avg {_LOAD_AT_IMPORT[0]:.1f} -> {m['load_avg'][0]:.1f}; jax "
        f"{m['versions']['jax']}, torch {m['versions']['torch']}")
  if as_json:
    print(json.dumps(result), flush=True)


def fmt(value: float | None, spec: str = ".1f", none: str = "n/a") -> str:
  return none if value is None else format(value, spec)


_LOAD_AT_IMPORT = list(os.getloadavg())
