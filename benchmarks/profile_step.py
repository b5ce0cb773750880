"""Per-op time of the real training step at one stage, from a JAX profiler trace (perfetto JSON).

    .venv/bin/python benchmarks/profile_step.py --res 32 --alpha 0.5 [--cpu-devices 2]
Prints the ops that take the most time per step (summed over threads and devices), with the
shapes from the compiled HLO, and the total per kind of op. Same set-up as `progae bench`
(malloc tuned unless NO_MALLOC_TUNING=1).
"""
import argparse, collections, glob, gzip, json, os, tempfile, time

p = argparse.ArgumentParser()
p.add_argument("--res", type=int, default=32); p.add_argument("--batch", type=int, default=64)
p.add_argument("--alpha", type=float, default=0.5); p.add_argument("--steps", type=int, default=5)
p.add_argument("--cpu-devices", type=int, default=2); p.add_argument("--top", type=int, default=30)
p.add_argument("--dump-hlo", metavar="PATH", help="also write the compiled step's HLO text here")
a = p.parse_args()

from progae_jax import bench
bench.configure_cpu(a.cpu_devices, malloc=not os.environ.get("NO_MALLOC_TUNING"))
import jax

from progae_jax.config import ModelConfig
stage = bench.prepare_jax_stage(ModelConfig(max_resolution=max(32, a.res)), a.res, a.alpha < 1,
                                a.batch, a.alpha)
stage.run(3)
hlo = stage.hlo_text() if stage.hlo_text else ""
if a.dump_hlo:
  open(a.dump_hlo, "w").write(hlo)
# name -> a short description: the fusion's line in the entry computation (op, shapes).
desc = {}
for line in hlo.splitlines():
  line = line.strip()
  if line.startswith("%") and " = " in line:
    name, rest = line[1:].split(" = ", 1)
    desc[name] = rest
def describe(name):
  r = desc.get(name, "")
  if not r:
    return ""
  shape = r.split(" ", 1)[0]
  ops = r.split("(", 1)[0].split(" ")[-1]
  args = r.split("(", 1)[1].split(")", 1)[0] if "(" in r else ""
  argshapes = [desc.get(x.strip().lstrip("%"), "?").split(" ", 1)[0] for x in args.split(",")]
  md = r.split('op_name="', 1)[1].split('"', 1)[0][-60:] if 'op_name="' in r else ""
  return f"{shape} = {ops}({', '.join(argshapes)}) {md}"
d = tempfile.mkdtemp()
with jax.profiler.trace(d, create_perfetto_trace=True):
  wall = stage.run(a.steps)
f = glob.glob(f"{d}/**/*.trace.json.gz", recursive=True)[0]
events = json.load(gzip.open(f))
events = events["traceEvents"] if isinstance(events, dict) else events
tot = collections.Counter(); cnt = collections.Counter()
for e in events:
  if e.get("ph") == "X" and "dur" in e:
    tot[e["name"]] += e["dur"]; cnt[e["name"]] += 1
print(f"wall per step {wall / a.steps * 1e3:.1f} ms")
for name, us in tot.most_common(a.top):
  print(f"{us / a.steps / 1e3:9.2f} ms/step  x{cnt[name] // a.steps:<3d} {name[:40]:40s} {describe(name)[:170]}")
cats = collections.Counter()
for name, us in tot.items():
  if name in desc:
    kind = "ynn" if name.startswith("ynn") else ("conv" if "convolution" in desc[name].split("(")[0] else name.rstrip(".0123456789"))
    cats[kind] += us
print("by kind (ms/step):", {k: round(v / a.steps / 1e3, 1) for k, v in cats.most_common()})
