"""Time to forget: whole `geniu unlearn` processes, start to exit, on a trained checkpoint.

What a user waits for: Python and JAX start-up, the checkpoint's restore and
checksum check, compiling (or loading) the unlearning program, Alg. 2 and the
save. Three processes on the same checkpoint, each forgetting one class:

* `cold`  -- an empty compilation cache: everything is compiled;
* `first` -- the first request after `geniu train`: training ends by
  compiling the unlearning program into the cache (`methods.geniu_unlearning.warm`,
  re-run here in its own process on a fresh cache, since training itself
  takes minutes), so the request loads it;
* `warm`  -- the same cache once more (a later request).

Plus `import_s`, the start-up of a process that imports the CLI and JAX.
JSON: {"cold_s", "first_s", "warm_s", "unlearn_ms", "compile_ms",
"restore_ms", "import_s", "setting"}; `unlearn_ms`, `compile_ms` and `restore_ms` are
the warm request's own report (`compile_ms` includes tracing and loading the
cached executable), `*_compile_ms` those of the other two.

Usage: python -m benchmarks.time_to_forget --ckpt DIR [--forget K] [--json]
(DIR: a checkpoint of `geniu train`, e.g. a `cpu`-preset original).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import _common as C
from geniu_jax import compile_cache

ROOT = Path(__file__).resolve().parents[1]
# What decides Alg. 2's work, from the CLI's report.
SETTING_FIELDS = ("rounds_run", "proxies", "sharpen_target", "sharpen_mode", "objective")

_WARM = """
import sys
from geniu_jax import checkpoint, compile_cache
from geniu_jax.config import Config
from geniu_jax.methods import geniu_unlearning
compile_cache.configure(sys.argv[2])
ck = checkpoint.restore(sys.argv[1])
geniu_unlearning.warm(ck.classifier, ck.generator, Config.from_dict(ck.metadata["config"]),
                      ck.prompts)
"""


def _env(cache: Path) -> dict:
  return dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
              **{compile_cache.ENV_VAR: str(cache)})


def _timed(cmd: list[str], env: dict) -> tuple[float, str]:
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
  wall = time.perf_counter() - t0
  if proc.returncode != 0:
    raise RuntimeError(f"{' '.join(cmd[:4])} ... failed:\n{proc.stderr[-2000:]}")
  return wall, proc.stdout


def unlearn(ckpt: Path, forget: int, out: Path, cache: Path) -> dict:
  """One `geniu unlearn` process: its wall time and the CLI's JSON report."""
  wall, stdout = _timed([sys.executable, "-m", "geniu_jax.cli", "unlearn", "--ckpt", str(ckpt),
                         "--forget", str(forget), "--out", str(out), "--json"], _env(cache))
  return dict(json.loads(stdout.strip().splitlines()[-1]), wall_s=wall)


def main(argv=None) -> int:
  p = C.parser(__doc__.splitlines()[0])
  p.add_argument("--ckpt", required=True, type=Path)
  p.add_argument("--forget", type=int, default=0)
  args = p.parse_args(argv)
  with tempfile.TemporaryDirectory(prefix="geniu_ttf_") as tmp:
    tmp = Path(tmp)
    import_s, _ = _timed([sys.executable, "-c", "import jax, geniu_jax.cli, geniu_jax.runs"],
                         _env(tmp / "unused"))
    cold = unlearn(args.ckpt, args.forget, tmp / "cold", tmp / "cold_cache")
    warm_up_s, _ = _timed([sys.executable, "-c", _WARM, str(args.ckpt), str(tmp / "cache")],
                          _env(tmp / "cache"))
    first = unlearn(args.ckpt, args.forget, tmp / "first", tmp / "cache")
    warm = unlearn(args.ckpt, args.forget, tmp / "warm", tmp / "cache")
  out = {"cold_s": cold["wall_s"], "first_s": first["wall_s"], "warm_s": warm["wall_s"],
         "unlearn_ms": warm["unlearn_ms"], "compile_ms": warm["compile_ms"],
         "restore_ms": warm["restore_ms"], "import_s": import_s,
         "cold_compile_ms": cold["compile_ms"], "first_compile_ms": first["compile_ms"],
         "train_warm_up_s": warm_up_s, "ckpt": str(args.ckpt), "forget": args.forget,
         "preset": json.loads((args.ckpt / "metadata.json").read_text())["preset"],
         # The unlearning setting is the checkpoint's stored one, which may be
         # an older preset's: the times depend on it far more than on the preset.
         "setting": {k: warm.get(k) for k in SETTING_FIELDS}}
  lines = [f"`geniu unlearn --forget {args.forget}` on {args.ckpt} ({out['preset']} preset), "
           "whole process:",
           "  setting: " + ", ".join(f"{k} {v}" for k, v in out["setting"].items())]
  for name, r in (("cold", cold), ("first", first), ("warm", warm)):
    lines.append(f"  {name:5s} {r['wall_s']:6.1f} s  (compile {r['compile_ms'] / 1e3:5.1f} s, "
                 f"unlearn {r['unlearn_ms'] / 1e3:5.2f} s, restore {r['restore_ms']:5.0f} ms)")
  lines.append(f"  import {import_s:.1f} s; training's warm-up compile adds {warm_up_s:.1f} s")
  C.emit(lines, out, args.json)
  return 0


if __name__ == "__main__":
  sys.exit(main())
