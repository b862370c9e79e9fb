#!/usr/bin/env bash
# One-shot GPU run of the benchmarks on a machine with one NVIDIA GPU.
#
# Runs unlearn_latency (paper size; PyTorch reference on the GPU) and
# train_throughput, each in float32 (JAX's default: TF32 allowed), float32
# without TF32 and bfloat16, then sweep (twice: native, then matmul
# convolutions in the vmapped program) with --json, each under its own time
# limit, and writes every report to $OUT (default ./gpu_out). On an H100 80GB
# the first three steps and sweep, with the reduced repetitions of
# benchmarks/RESULTS.md's H100 table, took 150 s; the time limits below add up
# to 13.5 min, so under a 10 min cap name the steps to run as arguments.
#
# The script installs nothing and needs no network: `python3` (or $PYTHON) must
# already have jax with the CUDA plugin, flax, optax, chex, orbax, numpy and
# torch with CUDA. RESULTS.md's H100 figures used jax 0.11.2, flax 0.12.10,
# optax 0.2.8, torch 2.11.0+cu130. flax 0.12.8 does not import under jax 0.11
# (jax.experimental.hijax has no HiPrimitive there); flax 0.12.10 does.
#
# Usage (from the repository root): OUT=/some/dir bash benchmarks/gpu_run.sh [STEP ...]
# (STEP: a label of a `run` line below, e.g. unlearn_latency_bf16; default: all)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-./gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}

export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
# JAX would take 75 % of the GPU up front; the PyTorch reference runs in a
# subprocess while the JAX process is alive and needs its own share.
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.5

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  $PY -c "import jax, jaxlib, flax, optax, torch; print('jax', jax.__version__, jax.devices(), \
'| flax', flax.__version__, '| optax', optax.__version__, '| torch', torch.__version__, \
torch.cuda.is_available() and torch.cuda.get_device_name())"
} 2>&1 | tee "$OUT/env.txt"

STEPS=" $* "
run() {  # label, time limit (s), benchmark module, its arguments...
  local label=$1 limit=$2 module=$3; shift 3
  if [[ "$STEPS" != "  " && "$STEPS" != *" $label "* ]]; then return 0; fi
  echo "== $label: benchmarks.$module $*" | tee "$OUT/$label.txt"
  local t0=$SECONDS
  timeout "$limit" $PY -m "benchmarks.$module" "$@" 2>&1 | tee -a "$OUT/$label.txt"
  echo "== $label exit ${PIPESTATUS[0]} after $((SECONDS - t0)) s" | tee -a "$OUT/$label.txt"
  grep '^{' "$OUT/$label.txt" | tail -n 1 > "$OUT/$label.json"
}

run unlearn_latency 150 unlearn_latency --json --torch-device cuda --reps 20 --warmup 3 --torch-bare
# The same loop in float32 without TF32, and in bfloat16 (float32 parameters
# and Adam state); JAX's default above lets cuDNN/cuBLAS use TF32.
run unlearn_latency_f32 60 unlearn_latency --json --no-torch --reps 20 --warmup 3 \
  --matmul-precision float32
run unlearn_latency_bf16 60 unlearn_latency --json --no-torch --reps 20 --warmup 3 \
  --precision bfloat16
run train_throughput 120 train_throughput --json --torch-device cuda --reps 20 --warmup 3
run train_throughput_f32 45 train_throughput --json --no-torch --reps 20 --warmup 3 \
  --matmul-precision float32
run train_throughput_bf16 45 train_throughput --json --no-torch --reps 20 --warmup 3 \
  --precision bfloat16
run sweep 210 sweep --json --n 10 --reps 10 --warmup 2 --train-n 4 --train-width 1.0 \
  --train-images 4096 --train-epochs 3
# The vmapped program with matmul ("patches") convolutions: batched GEMMs
# instead of the grouped convolutions that vmapped native convs become.
run sweep_patches 120 sweep --json --n 10 --reps 10 --warmup 2 --skip-train --vmap-lowering patches
echo "== done; outputs in $OUT"
ls -la "$OUT"
