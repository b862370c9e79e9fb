"""Cold vs warm `geniu unlearn` with the persistent compilation cache.

Measures whole CLI processes, as a user meets them: Python and JAX start-up,
checkpoint restore, compilation, Alg. 2, checkpoint save. Three runs on the
same checkpoint:

* `off`  -- GENIU_COMPILATION_CACHE=off (every call compiles);
* `cold` -- GENIU_COMPILATION_CACHE set to an empty directory (compiles and
  writes the cache);
* `warm` -- the same directory again (loads the executable).

The CLI is `python -m geniu_jax.cli`, which enables the cache from
`--compilation-cache` or GENIU_COMPILATION_CACHE (`compile_cache.configure`)
before it compiles anything. The checkpoint holds freshly
initialised models of the requested width (unlearning time does not depend on
the weights when every round runs: `--no-stop`).

JSON: {"off_s", "cold_s", "warm_s", "cold_compile_ms", "warm_compile_ms",
"unlearn_ms", "saved_s" = cold_s - warm_s, "cache_entries"}.

Usage: python -m benchmarks.compile_cache [--width 1.0] [--rounds 100] [--json]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax

from benchmarks import _common as C
from geniu_jax import checkpoint as ckpt_lib
from geniu_jax import compile_cache
from geniu_jax.config import get_config
from geniu_jax.models import functional as F

ROOT = Path(__file__).resolve().parents[1]


def make_checkpoint(directory: Path, width: float) -> Path:
  """A paper-layout checkpoint (K=10, 28x28x1) of freshly initialised models."""
  cfg = get_config("paper", width=width)
  k_cls, k_gen, k_z = jax.random.split(jax.random.key(0), 3)
  classifier = F.make_classifier(10, (28, 28, 1), width, "auto", k_cls)
  generator = F.make_generator((28, 28, 1), None, "auto", k_gen)
  prompts = jax.random.normal(k_z, (10 * cfg.proxies_per_class, 28, 28, 1))
  meta = ckpt_lib.make_metadata(cfg, source="synthetic", image_shape=(28, 28, 1),
                                num_classes=10, majority=[9])
  return ckpt_lib.save(directory, classifier, generator, prompts, meta)


def run_cli(ckpt: Path, out: Path, rounds: int, cache: Path | None) -> dict:
  """One `geniu unlearn` process; its wall time and the CLI's JSON report."""
  env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
  env[compile_cache.ENV_VAR] = compile_cache.OFF if cache is None else str(cache)
  cmd = [sys.executable, "-m", "geniu_jax.cli", "unlearn", "--ckpt", str(ckpt), "--forget", "0",
         "--rounds", str(rounds), "--no-stop", "--out", str(out), "--json"]
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
  wall = time.perf_counter() - t0
  if proc.returncode != 0:
    raise RuntimeError(f"geniu unlearn failed:\n{proc.stderr[-2000:]}")
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  return {"wall_s": wall, "compile_ms": report["compile_ms"], "unlearn_ms": report["unlearn_ms"]}


def main(argv=None) -> int:
  p = C.parser(__doc__.splitlines()[0])
  p.add_argument("--width", type=float, default=1.0)
  p.add_argument("--rounds", type=int, default=100)
  args = p.parse_args(argv)
  with tempfile.TemporaryDirectory(prefix="geniu_cc_") as tmp:
    tmp = Path(tmp)
    ckpt = make_checkpoint(tmp / "ckpt", args.width)
    cache = tmp / "cache"
    runs = {"off": run_cli(ckpt, tmp / "out_off", args.rounds, None),
            "cold": run_cli(ckpt, tmp / "out_cold", args.rounds, cache),
            "warm": run_cli(ckpt, tmp / "out_warm", args.rounds, cache)}
    entries = compile_cache.entries(cache)
  out = {f"{k}_s": v["wall_s"] for k, v in runs.items()}
  out.update(cold_compile_ms=runs["cold"]["compile_ms"],
             warm_compile_ms=runs["warm"]["compile_ms"],
             off_compile_ms=runs["off"]["compile_ms"],
             unlearn_ms=runs["warm"]["unlearn_ms"], saved_s=out["cold_s"] - out["warm_s"],
             cache_entries=entries, width=args.width, rounds=args.rounds)
  lines = [f"`geniu unlearn` (width {args.width}, {args.rounds} rounds), whole process:"]
  for name in ("off", "cold", "warm"):
    lines.append(f"  {name:5s} {runs[name]['wall_s']:7.1f} s  (compile "
                 f"{runs[name]['compile_ms']:7.0f} ms, unlearn {runs[name]['unlearn_ms']:7.0f} ms)")
  lines.append(f"  warm cache saves {out['saved_s']:.1f} s per call ({entries} cached programs)")
  C.emit(lines, out, args.json)
  return 0


if __name__ == "__main__":
  sys.exit(main())
