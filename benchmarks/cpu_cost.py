"""CPU-seconds per step of the real training step (little disturbed by other processes' load)
and its best wall time, for a device count and XLA flags (malloc tuned unless
NO_MALLOC_TUNING=1).

    .venv/bin/python benchmarks/cpu_cost.py --res 32 --alpha 0.5 --cpu-devices 2 [--xla-flags ...]
"""
import argparse, json, os, resource, time
p = argparse.ArgumentParser()
p.add_argument("--res", type=int, default=32); p.add_argument("--batch", type=int, default=64)
p.add_argument("--alpha", type=float, default=0.5); p.add_argument("--steps", type=int, default=4)
p.add_argument("--windows", type=int, default=6)
p.add_argument("--cpu-devices", type=int, default=1); p.add_argument("--xla-flags", default="")
a = p.parse_args()
from progae_jax import bench
bench.configure_cpu(a.cpu_devices, a.xla_flags, malloc=not os.environ.get("NO_MALLOC_TUNING"))
from progae_jax.config import ModelConfig
st = bench.prepare_jax_stage(ModelConfig(max_resolution=max(32, a.res)), a.res, a.alpha < 1, a.batch, a.alpha)
def cpu():
  r = resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime + r.ru_stime
cs, ws = [], []
for _ in range(a.windows):
  c = cpu(); w = st.run(a.steps); cs.append((cpu() - c) / a.steps * 1e3); ws.append(w / a.steps * 1e3)
cs.sort(); ws.sort()
print(json.dumps({"res": a.res, "alpha": a.alpha, "dev": a.cpu_devices, "flags": a.xla_flags[-50:],
                  "cpu_ms_per_step_min": round(cs[0], 1), "cpu_ms_median": round(cs[len(cs)//2], 1),
                  "wall_ms_min": round(ws[0], 1), "load": os.getloadavg()[0]}))
