#!/usr/bin/env bash
# The prepared GPU check of issue 6 (scale-out): benchmark + a short training run, as tables.
#
#   experiments/gpu_check.sh [OUT_DIR]          # from the repository root; default OUT_DIR:
#                                               # $OUT if set, else runs/gpu_check
#
# Needs a Python with this package and JAX's CUDA plugin (docs/scaling.md, "GPU"), e.g.
#   python -m venv .venv-gpu && .venv-gpu/bin/pip install -e . "jax[cuda12]==0.10.2"
#   PYTHON=.venv-gpu/bin/python experiments/gpu_check.sh
# ($PYTHON, else .venv-gpu/bin/python, .venv/bin/python, python3.) Nothing is downloaded: the
# data are the photos packaged with scikit-image / scikit-learn.
#
# What it runs (not yet run on a GPU; a few minutes expected on one H100; every step has a
# time limit):
#   1. the card, driver and JAX devices                       -> env.txt
#   2. benchmarks/bench_scaling.py: 32x32 stable step, float32 and bfloat16, global batch 64
#      (the main job's) and 512, over 1, 2, 4, ... of the GPUs present -> scaling_b*.md
#   3. progae train --preset main (image_patches, 4x4 -> 32x32), float32 then bfloat16:
#      wall time, training images/s, final held-out PSNR/SSIM          -> training.md
#   4. everything in one file, naming the card                        -> gpu_check.md
# QUICK=1 shortens the benchmark windows and the training run (a plumbing check);
# ALLOW_CPU=1 lets it run without a GPU (for testing this script on a CPU machine);
# BATCHES="64" picks the benchmark's global batch sizes (default "64 512").
set -uo pipefail

OUT=${1:-${OUT:-runs/gpu_check}}
mkdir -p "$OUT"
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for c in .venv-gpu/bin/python .venv/bin/python python3; do
    if command -v "$c" >/dev/null 2>&1; then PY=$c; break; fi
  done
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # Benchmark workers share a GPU: no 75% grab each.
export TF_CPP_MIN_LOG_LEVEL=3
QUICK=${QUICK:-0}
log() { echo "[gpu_check $(date +%H:%M:%S)] $*" | tee -a "$OUT/gpu_check.log"; }

# 1. Environment --------------------------------------------------------------------------
log "python: $PY; out: $OUT"
{ if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1; else echo "nvidia-smi: not found"; fi; } \
  > "$OUT/env.txt"
"$PY" - >> "$OUT/env.txt" 2>&1 <<'EOF'
import jax, jaxlib, platform
print(f"jax {jax.__version__}, jaxlib {jaxlib.__version__}, python {platform.python_version()}")
print(f"backend {jax.default_backend()}: {jax.devices()}")
print(f"device_kind {jax.devices()[0].device_kind}")
EOF
cat "$OUT/env.txt"
BACKEND=$("$PY" -c "import jax; print(jax.default_backend())" 2>/dev/null)
NGPU=$("$PY" -c "import jax; print(jax.device_count())" 2>/dev/null)
if [ "$BACKEND" != "gpu" ]; then
  if [ "${ALLOW_CPU:-0}" != "1" ]; then
    log "no GPU backend in $PY (backend: ${BACKEND:-none}). Install JAX for NVIDIA GPUs:"
    log "  $PY -m pip install -e . \"jax[cuda12]==0.10.2\"   (or jax[cuda13] with a CUDA 13 driver)"
    exit 3
  fi
  PLATFORM=cpu; NGPU=1; log "ALLOW_CPU=1: running on the CPU"
else
  PLATFORM=gpu
fi
DEVS=1; n=2
while [ "$n" -le "${NGPU:-1}" ]; do DEVS="$DEVS,$n"; n=$((n * 2)); done

# 2. Benchmark ----------------------------------------------------------------------------
if [ "$QUICK" = "1" ]; then ROUNDS=2; WINDOW=0.5; else ROUNDS=5; WINDOW=2; fi
BATCHES=${BATCHES:-64 512}
for B in $BATCHES; do
  log "bench_scaling: 32x32 stable, batch $B, devices $DEVS, float32 + bfloat16"
  timeout 600 "$PY" benchmarks/bench_scaling.py --platform "$PLATFORM" --devices "$DEVS" \
    --dtypes float32,bfloat16 --resolution 32 --phase stable --batch "$B" \
    --rounds "$ROUNDS" --window "$WINDOW" --timeout 300 \
    --markdown "$OUT/scaling_b$B.md" --json "$OUT/scaling.jsonl" > "$OUT/scaling_b$B.log" 2>&1 \
    || log "bench_scaling batch $B FAILED (see $OUT/scaling_b$B.log)"
done

# 3. Short training runs ------------------------------------------------------------------
DATA="$OUT/tfds"
log "preparing image_patches in $DATA"
timeout 600 "$PY" -c "from progae_jax import data; data.prepare('image_patches', data_dir='$DATA')" \
  > "$OUT/prepare.log" 2>&1 || log "data preparation FAILED (see $OUT/prepare.log)"
EXTRA=()
if [ "$QUICK" = "1" ]; then
  EXTRA=(--fade-images 1024 --stable-images 1024 --eval-every-images 100000
         --checkpoint-every-images 100000)
fi
for DT in float32 bfloat16; do
  log "progae train --preset main --compute-dtype $DT"
  start=$(date +%s)
  timeout 900 "$PY" -m progae_jax train --preset main --compute-dtype "$DT" --data-dir "$DATA" \
    --workdir "$OUT/run_$DT" --restart --quiet "${EXTRA[@]}" > "$OUT/train_$DT.log" 2>&1
  rc=$?
  end=$(date +%s)
  echo "{\"dtype\": \"$DT\", \"rc\": $rc, \"wall_s\": $((end - start))}" \
    > "$OUT/train_$DT.json"
  [ "$rc" = 0 ] || log "training $DT FAILED (exit $rc; see $OUT/train_$DT.log)"
done

# 4. Tables -------------------------------------------------------------------------------
"$PY" - "$OUT" <<'EOF'
import json, os, statistics, sys
out = sys.argv[1]
env = open(os.path.join(out, "env.txt")).read().strip()
parts = ["# GPU check (issue 6)", "", "```", env, "```", ""]
for b in sorted(int(f[9:-3]) for f in os.listdir(out)
                if f.startswith("scaling_b") and f.endswith(".md")):
  p = os.path.join(out, f"scaling_b{b}.md")
  parts += [f"## Training step, 32x32 stable, global batch {b}", "",
            open(p).read() if os.path.exists(p) else "(failed: see the log)", ""]
rows = ["| compute dtype | wall s (incl. compile) | train images/s (median of windows) | "
        "final held-out PSNR dB | SSIM | images |", "|---|---:|---:|---:|---:|---:|"]
for dt in ("float32", "bfloat16"):
  run = json.load(open(os.path.join(out, f"train_{dt}.json")))
  path = os.path.join(out, f"run_{dt}", "metrics.jsonl")
  recs = [json.loads(l) for l in open(path)] if os.path.exists(path) else []
  rates = [r["images_per_s"] for r in recs if r.get("kind") == "train" and "images_per_s" in r]
  evals = [r for r in recs if r.get("kind") == "eval"]
  last = evals[-1] if evals else {}
  rows.append(f"| {dt} | {run['wall_s']:.0f}{'' if run['rc'] == 0 else ' (FAILED)'} | "
              f"{statistics.median(rates) if rates else float('nan'):.0f} | "
              f"{last.get('psnr', float('nan')):.2f} | {last.get('ssim', float('nan')):.3f} | "
              f"{last.get('images_seen', 0):,} |")
parts += ["## progae train --preset main (image_patches, 4x4 -> 32x32)", "",
          "\n".join(rows), ""]
open(os.path.join(out, "training.md"), "w").write("\n".join(rows) + "\n")
open(os.path.join(out, "gpu_check.md"), "w").write("\n".join(parts))
print("\n".join(parts))
EOF
log "done: $OUT/gpu_check.md"
