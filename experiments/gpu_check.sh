#!/usr/bin/env bash
# The GPU check: the large preset's training step beside PyTorch on the same GPU, the main job,
# the largest batch that fits, and a quick subset of the tests under the machine's packages.
# docs/accelerators.md says how to run it and what it found.
#
#   experiments/gpu_check.sh [OUT_DIR]        # from the repository root; OUT_DIR: $OUT if set,
#                                             # else runs/gpu_check
#
# Two ways to give it its packages:
#   WHEELS=.whl   no installs from an index: the wheels of experiments/fetch_gpu_wheels.py go
#                 into $SITE with `pip install --no-index --no-deps --target`, and the package
#                 runs from this source tree (PYTHONPATH), on the machine's own JAX, flax,
#                 optax, orbax and torch. For a machine that reaches no package index.
#   (unset)       $PYTHON already has everything (e.g. pip install -e ".[cuda13,bench]").
# Other settings:
#   PYTHON=python3       the interpreter (default python3)
#   ALLOW_CPU=1          run on the CPU at reduced sizes (below), to test this script
#   BUDGET_S=270         seconds for the whole script on a GPU (about 6 minutes of device time
#                        with the machine's start): each step's limit is cut to what is left,
#                        and a step with under 15 s left is skipped
#   VS_TORCH=PATH        the PyTorch reference (default benchmarks/torch_reference.py)
#   ONLY=a,b             run only these steps (env always runs: it finds the backend), e.g.
#                        ONLY=large_small for a second run that fills in 32x32 and 16x16
#
# Steps, each under its own `timeout` (seconds, GPU sizes), in this order:
#   env          20   card, driver, Python and package versions           -> env.txt
#   smoke       150   experiments/gpu/smoke_tests.txt under pytest, in the background on 4 of
#                     the CPU cores (the tests run on the CPU)             -> smoke.txt
#   data         90   image_patches prepared for the main job, in the background, the same 4 cores
#   large       150   progae bench --preset large at 128x128 and 64x64 (stable, the preset's
#                     batch 256, bfloat16): JAX beside PyTorch eager bf16 (channels_last),
#                     torch.compile and eager float32, each side a worker, rounds in rotating
#                     order; images/s, TFLOP/s, MFU against the measured matrix rate and the
#                     datasheet, compile times, peak memory               -> large.jsonl
#   train        90   progae train --preset main (float32, batch 64, 108,800 images) -> train_main.jsonl
#   max_batch    60   the largest batch whose 128x128 step runs (estimated from XLA's buffers,
#                     then compiled and run), JAX alone in its process    -> large.jsonl
#   process     170   benchmarks/bench_process.py: the main job as whole processes, cold, warm
#                     and --deterministic twice (the same bits?)           -> process.json
#   loop         70   benchmarks/bench_loop.py --preset main: the loop's images/s beside its own
#                     step's, and where the job's wall time goes          -> loop.json
#   large_small 100   the same comparison at 32x32 and 16x16               -> large.jsonl
# What an overrun of the budget costs is the last steps, in that order. Cut by design: the
# main job's model at batches 512 and 2048 (its step at 32x32 is 55 GFLOP a batch of 64: at
# 2048 still launch-bound on an H200; the large preset is the GPU's model), the float32 JAX
# runs of the large preset (bfloat16 is its dtype; PyTorch's float32 eager stays as a
# reference), the fade phases (a fade costs its stable phase plus the old stage's 1x1
# adapters: benchmarks/large_preset_costs.jsonl) and the stages below 16x16.
# $OUT gets at most 8 files: gpu_check.md (the tables), env.txt, smoke.txt, large.jsonl,
# train_main.jsonl, process.json, loop.json, log.txt. Scratch goes to $WORK (default
# /tmp/progae_gpu). BUDGET_S=560 runs every step but the last on an H200.
set -uo pipefail

OUT=${1:-${OUT:-runs/gpu_check}}
WORK=${WORK:-/tmp/progae_gpu}
SITE=${SITE:-$WORK/site}
PY=${PYTHON:-python3}
ALLOW_CPU=${ALLOW_CPU:-0}
mkdir -p "$OUT" "$WORK"
LOG="$OUT/log.txt"
: > "$LOG"
T0=$(date +%s)
log() { echo "[gpu_check +$(( $(date +%s) - T0 ))s] $*" | tee -a "$LOG"; }

# Sizes. The GPU's are the check's; ALLOW_CPU=1 shrinks them so that the same path runs on a
# 2-core CPU in minutes: the large preset at 1/32 of its width at 16x16 and 8x8, batch 8, two
# windows of 2 steps, PyTorch eager only (torch.compile takes minutes on a CPU), a 3,584-image
# main job, and --max-batch against 0.25 GiB (a CPU reports no memory limit).
if [ "$ALLOW_CPU" = "1" ]; then
  BIG=(--resolutions 16 --width-divisor 32 --batch 8)
  SMALL=(--resolutions 8 --width-divisor 32 --batch 8)
  TIMING=(--rounds 2 --steps 2 --cpu-devices 0)
  MODES=eager_bf16,eager_fp32; TORCH_DEVICE=cpu
  MAXB=(--resolutions 16 --width-divisor 32 --batch 8 --max-batch-memory 0.25)
  TRAIN_ARGS=(--fade-images 512 --stable-images 512 --eval-every-images 100000
              --checkpoint-every-images 100000)
  LOOP_ARGS=(--images-scale 0.05)
  BUDGET_S=${BUDGET_S:-0}; SCALE=${SCALE:-10}  # No budget; time limits x10.
else
  BIG=(--resolutions 128,64); SMALL=(--resolutions 32,16)
  TIMING=(--rounds 3 --window 0.5 --stage-budget 70)
  MODES=eager_bf16,compile_bf16,eager_fp32; TORCH_DEVICE=cuda
  MAXB=(--resolutions 128)
  TRAIN_ARGS=(); LOOP_ARGS=()
  BUDGET_S=${BUDGET_S:-270}; SCALE=${SCALE:-1}
fi

# step NAME LIMIT_S LOGFILE CMD...: runs CMD under `timeout`, the limit cut to the budget left.
TIMINGS="$WORK/timings.tsv"
: > "$TIMINGS"
step() {
  local name=$1 limit=$(( $2 * SCALE )) logfile=$3; shift 3
  if [ -n "${ONLY:-}" ] && [ "$name" != env ] && [[ ",$ONLY," != *",$name,"* ]]; then
    log "$name: not asked for (ONLY=$ONLY)"
    printf '%s\t%s\t-\tnot asked\n' "$name" "$limit" >> "$TIMINGS"; return 0
  fi
  if [ "$BUDGET_S" -gt 0 ]; then
    local left=$(( BUDGET_S - ($(date +%s) - T0) ))
    if [ "$left" -lt 15 ]; then
      log "$name: SKIPPED, ${left}s of the ${BUDGET_S}s budget left"
      printf '%s\t%s\t-\tskipped\n' "$name" "$limit" >> "$TIMINGS"; return 124
    fi
    [ "$left" -lt "$limit" ] && limit=$left
  fi
  log "$name (limit ${limit}s)"
  local start rc
  start=$(date +%s.%N)
  timeout --kill-after=10 "$limit" "$@" > "$logfile" 2>&1
  rc=$?
  local wall
  wall=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  printf '%s\t%s\t%s\t%s\n' "$name" "$limit" "$wall" "$rc" >> "$TIMINGS"
  { echo "---- $name: exit $rc, ${wall}s; end of $logfile:"; tail -n 25 "$logfile"; } >> "$LOG"
  [ "$rc" = 0 ] || log "$name FAILED (exit $rc, ${wall}s)"
  return "$rc"
}

# Packages ----------------------------------------------------------------------------------
if [ -n "${WHEELS:-}" ]; then
  log "no-install mode: $WHEELS/*.whl -> $SITE (--no-deps --target)"
  rm -rf "$SITE"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$WHEELS"/*.whl >> "$LOG" 2>&1 \
    || { log "installing the wheels FAILED (see $LOG)"; exit 4; }
  export PYTHONPATH="$PWD:$SITE"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export TF_CPP_MIN_LOG_LEVEL=3 PYTHONUNBUFFERED=1
# Every JAX process shares one compilation cache: the max_batch step's 128x128 compile is the
# large step's; the workers' growth steps are compiled once.
export JAX_COMPILATION_CACHE_DIR="$WORK/xla_cache"

# 1. Environment ----------------------------------------------------------------------------
{ command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv,noheader 2>&1 || echo "nvidia-smi: not found"; } > "$OUT/env.txt"
step env 20 "$WORK/env.log" "$PY" - <<'EOF'
import importlib.metadata as m, platform, jax
print(f"python {platform.python_version()}; backend {jax.default_backend()}; "
      f"devices {jax.device_count()} x {jax.devices()[0].device_kind}")
for d in ("jax", "jaxlib", "jax-cuda13-plugin", "flax", "optax", "orbax-checkpoint", "numpy",
          "protobuf", "tensorflow-datasets", "grain", "array-record", "dm-pix", "torch",
          "triton"):
  try:
    print(f"{d} {m.version(d)}")
  except m.PackageNotFoundError:
    print(f"{d} -")
EOF
cat "$WORK/env.log" >> "$OUT/env.txt"
cat "$OUT/env.txt"
BACKEND=$(sed -n 's/.*backend \([a-z]*\);.*/\1/p' "$OUT/env.txt")
if [ "$BACKEND" != "gpu" ] && [ "$ALLOW_CPU" != "1" ]; then
  log "no GPU backend in $PY (backend: ${BACKEND:-none}); ALLOW_CPU=1 runs it on the CPU"
  exit 3
fi

# 2. In the background, on the CPU: the quick tests and the main job's data -----------------
# Pinned to the last 4 cores where taskset is there, away from the benchmarks' host threads.
CORES=$(nproc)
PIN=()
if [ "$ALLOW_CPU" != "1" ] && command -v taskset >/dev/null && [ "$CORES" -ge 8 ]; then
  PIN=(taskset -c "$((CORES - 4))-$((CORES - 1))")
fi
mapfile -t SMOKE < <(grep -v '^\s*#' experiments/gpu/smoke_tests.txt | grep .)
DATA="$WORK/tfds"
( step smoke 150 "$OUT/smoke.txt" "${PIN[@]}" "$PY" -m pytest -q -p no:cacheprovider \
    "${SMOKE[@]}" ) &
SMOKE_PID=$!
( step data 90 "$WORK/data.log" "${PIN[@]}" "$PY" -c \
    "from progae_jax import data; data.prepare('image_patches', data_dir='$DATA')" ) &
DATA_PID=$!

# 3. The large preset beside PyTorch; the main job; the largest batch ------------------------
REF=${VS_TORCH:-benchmarks/torch_reference.py}
TORCH=()
if [ -f "$REF" ] && "$PY" -c "import torch" 2>/dev/null; then
  TORCH=(--vs-torch "$REF" --torch-modes "$MODES" --torch-device "$TORCH_DEVICE")
else
  log "no PyTorch reference ($REF) or no torch in $PY: JAX alone"
fi
: > "$OUT/large.jsonl"
large() {  # large NAME LIMIT ARGS...: one progae bench run of the large preset
  local name=$1 limit=$2; shift 2
  step "$name" "$limit" "$WORK/$name.log" "$PY" -m progae_jax.bench --preset large \
    --phases stable --measure-peak "$@" --json "$WORK/$name.jsonl"
  cat "$WORK/$name.jsonl" >> "$OUT/large.jsonl" 2>/dev/null
}
large large 150 "${BIG[@]}" "${TIMING[@]}" "${TORCH[@]}"

wait "$DATA_PID"
rm -rf "$WORK/run_main"
step train 90 "$WORK/train.log" "$PY" -m progae_jax train --preset main --data-dir "$DATA" \
  --workdir "$WORK/run_main" --quiet "${TRAIN_ARGS[@]}"
cp "$WORK/run_main/metrics.jsonl" "$OUT/train_main.jsonl" 2>/dev/null

# JAX alone, with the device's memory (not the default 75% of it) for XLA's allocator.
( export XLA_PYTHON_CLIENT_MEM_FRACTION=0.95
  large max_batch 60 "${MAXB[@]}" --rounds 1 --window 0.3 --max-batch )

# The main job as whole processes (cold, warm, deterministic twice), then its loop beside its
# own step and where its wall time goes (benchmarks/training_speed.md).
step process 170 "$WORK/process.log" "$PY" benchmarks/bench_process.py \
  --out "$OUT/process.json" -- --data-dir "$DATA" "${TRAIN_ARGS[@]}"
step loop 70 "$WORK/loop.log" "$PY" benchmarks/bench_loop.py --preset main --data-dir "$DATA" \
  --out "$OUT/loop.json" "${LOOP_ARGS[@]}"

large large_small 100 "${SMALL[@]}" "${TIMING[@]}" "${TORCH[@]}"

wait "$SMOKE_PID"

# 4. Tables -----------------------------------------------------------------------------------
"$PY" experiments/gpu/report.py --out "$OUT" --timings "$TIMINGS" --cpu-sizes "$ALLOW_CPU" \
  >> "$LOG" 2>&1 || log "report FAILED"
log "done: $OUT/gpu_check.md"
cat "$OUT/gpu_check.md" 2>/dev/null
