#!/usr/bin/env bash
# The GPU check: a quick subset of the tests under the machine's JAX, the training-step
# benchmark, and the main job, each float32 and bfloat16, as tables. docs/accelerators.md
# says how to run it and what it found.
#
#   experiments/gpu_check.sh [OUT_DIR]        # from the repository root; OUT_DIR: $OUT if set,
#                                             # else runs/gpu_check
#
# Two ways to give it its packages:
#   WHEELS=.whl   no installs from an index: the wheels of experiments/fetch_gpu_wheels.py go
#                 into $SITE with `pip install --no-index --no-deps --target`, and the package
#                 runs from this source tree (PYTHONPATH), on the machine's own JAX, flax,
#                 optax and orbax. For a machine that reaches no package index.
#   (unset)       $PYTHON already has everything (e.g. pip install -e ".[cuda13]").
# Other settings:
#   PYTHON=python3       the interpreter (default python3)
#   ALLOW_CPU=1          run on the CPU, at the smaller sizes below (to test this script)
#   BUDGET_S=360         seconds for the whole script on a GPU (with the machine's start, about
#                        8 minutes of device time): each step's limit is cut to what is left,
#                        and a step with under 15 s left is skipped
#   VS_TORCH=PATH        the PyTorch reference (default: benchmarks/torch_reference.py if it is
#                        there and $PYTHON has torch): one comparison, 32x32 stable, float32
#
# Steps, each under its own `timeout` (seconds, GPU sizes):
#   env      60   card, driver, Python and package versions          -> env.txt
#   smoke   150   experiments/gpu/smoke_tests.txt under pytest        -> smoke.txt
#   data     90   image_patches prepared (scikit-image's photos)
#   bench    60   each: progae bench at the main job's batch, 64, every stage (4x4 .. 32x32,
#                 fade and stable), float32 and bfloat16: images/s, TFLOP/s, MFU
#   train   120   each: progae train --preset main, float32 then bfloat16
#   torch    60   PyTorch eager beside it (32x32 stable, batch 64), if a reference is there
#   bench    60   each: batch 512 and 2048, 8x8 to 32x32, the stable phases (a fade costs
#                 what its stable phase does, plus the old stage's small adapters), float32
#                 and bfloat16
# In that order, so that an overrun of the budget costs the largest batches first.
# $OUT gets at most 8 files (what a device machine sends back): gpu_check.md (the tables),
# env.txt, smoke.txt, bench.jsonl, train_float32.jsonl, train_bfloat16.jsonl, log.txt.
# Scratch (wheels installed, data, work directories) goes to $WORK (default /tmp/progae_gpu).
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
# 2-core CPU in minutes: smaller batches, 2 timed steps per stage, a 3,584-image main job.
if [ "$ALLOW_CPU" = "1" ]; then
  BATCHES=${BATCHES:-"8 16 32"}; BENCH_ARGS=(--rounds 1 --steps 2)
  TRAIN_ARGS=(--fade-images 512 --stable-images 512 --eval-every-images 100000
              --checkpoint-every-images 100000)
  BUDGET_S=${BUDGET_S:-0}; SCALE=${SCALE:-10}  # No budget; time limits x10.
else
  BATCHES=${BATCHES:-"64 512 2048"}; BENCH_ARGS=(--rounds 3 --window 0.3)
  TRAIN_ARGS=()
  BUDGET_S=${BUDGET_S:-360}; SCALE=${SCALE:-1}
fi

# step NAME LIMIT_S LOGFILE CMD...: runs CMD under `timeout`, the limit cut to the budget left.
TIMINGS="$WORK/timings.tsv"
: > "$TIMINGS"
step() {
  local name=$1 limit=$(( $2 * SCALE )) logfile=$3; shift 3
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
export JAX_COMPILATION_CACHE_DIR="$WORK/xla_cache"  # bench and train share the step's shapes

# 1. Environment ----------------------------------------------------------------------------
{ command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv,noheader 2>&1 || echo "nvidia-smi: not found"; } > "$OUT/env.txt"
step env 60 "$WORK/env.log" "$PY" - <<'EOF'
import importlib.metadata as m, platform, jax
print(f"python {platform.python_version()}; backend {jax.default_backend()}; "
      f"devices {jax.device_count()} x {jax.devices()[0].device_kind}")
for d in ("jax", "jaxlib", "jax-cuda13-plugin", "flax", "optax", "orbax-checkpoint", "numpy",
          "protobuf", "tensorflow-datasets", "grain", "array-record", "dm-pix", "torch"):
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

# 2. The quick subset of the tests (on the CPU: it looks for API drift, not speed) ------------
mapfile -t SMOKE < <(grep -v '^\s*#' experiments/gpu/smoke_tests.txt | grep .)
step smoke 150 "$OUT/smoke.txt" "$PY" -m pytest -q -p no:cacheprovider "${SMOKE[@]}"

# 3. Data -------------------------------------------------------------------------------------
DATA="$WORK/tfds"
step data 90 "$WORK/data.log" "$PY" -c \
  "from progae_jax import data; data.prepare('image_patches', data_dir='$DATA')"

# 4. Benchmark, main job, PyTorch, larger batches ------------------------------------------
bench() {  # bench BATCH DTYPE RESOLUTIONS PHASES
  step "bench_b$1_$2" 60 "$WORK/bench_b$1_$2.log" "$PY" -m progae_jax.bench \
    --resolutions "$3" --phases "$4" --batch "$1" --compute-dtype "$2" \
    "${BENCH_ARGS[@]}" --json "$WORK/bench_b$1_$2.jsonl"
  cat "$WORK/bench_b$1_$2.jsonl" >> "$OUT/bench.jsonl" 2>/dev/null
}
: > "$OUT/bench.jsonl"
read -r -a BS <<< "$BATCHES"
for DT in float32 bfloat16; do bench "${BS[0]}" "$DT" 4,8,16,32 fade,stable; done

for DT in float32 bfloat16; do
  rm -rf "$WORK/run_$DT"
  step "train_$DT" 120 "$WORK/train_$DT.log" "$PY" -m progae_jax train --preset main \
    --compute-dtype "$DT" --data-dir "$DATA" --workdir "$WORK/run_$DT" --quiet "${TRAIN_ARGS[@]}"
  cp "$WORK/run_$DT/metrics.jsonl" "$OUT/train_$DT.jsonl" 2>/dev/null
done

REF=${VS_TORCH:-benchmarks/torch_reference.py}
if [ -f "$REF" ] && "$PY" -c "import torch" 2>/dev/null; then
  step "torch_b${BS[0]}" 60 "$WORK/torch.log" "$PY" -m progae_jax.bench --resolutions 32 \
    --phases stable --batch "${BS[0]}" "${BENCH_ARGS[@]}" --vs-torch "$REF" \
    --json "$WORK/torch.jsonl"
  cat "$WORK/torch.jsonl" >> "$OUT/bench.jsonl" 2>/dev/null
else
  log "torch: no PyTorch reference ($REF) or no torch in $PY: no comparison"
fi

for B in "${BS[@]:1}"; do
  for DT in float32 bfloat16; do bench "$B" "$DT" 8,16,32 stable; done
done

# 5. Tables -----------------------------------------------------------------------------------
"$PY" experiments/gpu/report.py --out "$OUT" --timings "$TIMINGS" --cpu-sizes "$ALLOW_CPU" \
  >> "$LOG" 2>&1 || log "report FAILED"
log "done: $OUT/gpu_check.md"
cat "$OUT/gpu_check.md" 2>/dev/null
