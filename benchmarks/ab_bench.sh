#!/bin/bash
# Alternates `python -m progae_jax.bench` runs with different options (no torch), each started
# when the machine looks idle (waits up to 60 s), and prints one line per run:
#   benchmarks/ab_bench.sh ROUNDS "COMMON OPTIONS" "OPTIONS A" "OPTIONS B" ...
#   benchmarks/ab_bench.sh 3 "--resolutions 16 --phases fade" "--cpu-devices 2" "--cpu-devices 4"
rounds=$1; common=$2; shift 2
here=$(dirname "$0")
for ((i=0;i<rounds;i++)); do for opts in "$@"; do
  .venv/bin/python "$here/wait_idle.py" 60 >/dev/null
  .venv/bin/python -m progae_jax.bench $common $opts --rounds 5 --window 1 2>/dev/null \
  | .venv/bin/python -c "
import json,sys
for l in sys.stdin:
  if l.startswith('{') and '\"stage\"' in l:
    r=json.loads(l); print(f'{sys.argv[1]:60s} {r[\"resolution\"]:3d} {r[\"phase\"]:6s} median {r[\"jax_img_per_s\"]:7.1f}  best {max(r[\"jax_img_per_s_runs\"]):7.1f}  others {r[\"others_cpu_share\"]}', flush=True)
" "$opts"
done; done
