"""Data-parallel scaling: training images/s with 1, 2, 4, ... devices (and per compute dtype).

    .venv/bin/python benchmarks/bench_scaling.py                      # CPU: 1, 2, 4 devices
    .venv/bin/python benchmarks/bench_scaling.py --devices 1,2 --resolution 32 --phase stable
    .venv/bin/python benchmarks/bench_scaling.py --platform gpu --devices 1 \\
        --dtypes float32,bfloat16 --resolution 32 --batch 256 --markdown gpu.md

Each device count runs in its own subprocess (CPU devices are made with
`XLA_FLAGS=--xla_force_host_platform_device_count=N`, which must be set before JAX starts).
There the real training step of train.py (`make_train_step`: jitted with in/out shardings,
state donated) runs on the mesh `parallel.make_mesh(N)`, at one stage of the main job's model
(default channels, RGB), with the global batch fixed: every step assembles a fresh global
batch from host numpy with `parallel.global_batch`, as the training loop does, so the
host-to-device copy is counted; data loading (grain) is not. All device counts are compiled first
(one worker process each, kept alive), then timed in rounds, each round one window of every
worker in rotating order, so that a load that comes and goes on a shared machine falls on all
of them alike. Images/s is the median over `--rounds` windows (best also shown); the table
gives the speed-up over the first row of the same dtype (and, with several dtypes, the ratio
to float32 on as many devices), the compile time, and how many CPU
cores the worker kept busy while timed (its process CPU time / wall time: host threads
included, so on a GPU it is the host's share).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.abspath(__file__)


def worker(args) -> None:
  """One device count and dtype, kept alive: compiles, prints a 'ready' JSON line, then times
  one window per 'run' line read from stdin (so the parent can interleave device counts)."""
  import jax
  import numpy as np

  from progae_jax import optim, parallel, steps, train_state
  from progae_jax.config import ModelConfig
  from progae_jax.model import Stage
  from progae_jax.schedule import TrainConfig

  model = ModelConfig(image_channels=args.image_channels,
                      max_resolution=max(8, args.resolution))
  config = TrainConfig(model=model, compute_dtype=args.dtype)
  mesh = parallel.make_mesh(args.devices)
  parallel.check_batch_size(args.batch, mesh)
  optimizer = optim.make_optimizer()
  target = Stage(args.resolution, args.phase == "fade")
  state = train_state.grow_to(train_state.init_state(config, optimizer, mesh), target, config,
                              optimizer, mesh)
  alpha = np.float32(0.5 if target.fading else 1.0)
  rng = np.random.default_rng(0)
  shape = (args.batch, args.resolution, args.resolution, args.image_channels)
  host = [rng.random(shape, dtype=np.float32) for _ in range(4)]
  step = steps.make_train_step(config, optimizer, mesh)

  t0 = time.perf_counter()
  state, metrics = step(state, parallel.global_batch(host[0], mesh), alpha)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t0

  cpu_used = []

  def window(steps: int) -> float:
    nonlocal state
    t, c = time.perf_counter(), time.process_time()
    for i in range(steps):
      state, m = step(state, parallel.global_batch(host[i % len(host)], mesh), alpha)
    jax.block_until_ready(m)
    wall = time.perf_counter() - t
    cpu_used.append((time.process_time() - c) / wall)  # Cores this process kept busy.
    return wall

  window(3)  # Warm-up.
  per_step = window(3) / 3
  steps = int(min(1000, max(3, round(args.window / max(per_step, 1e-6)))))
  device = mesh.devices.flat[0]
  print(json.dumps({"ready": True, "devices": int(mesh.devices.size),
                    "platform": device.platform, "device_kind": device.device_kind,
                    "compile_s": round(compile_s, 2), "steps_per_window": steps,
                    "jax": jax.__version__}), flush=True)
  for line in sys.stdin:
    if line.strip() != "run":
      break
    rate = steps * args.batch / window(steps)
    print(json.dumps({"img_per_s": rate, "cores_busy": cpu_used[-1]}), flush=True)


class Worker:
  """A worker subprocess for one (device count, dtype)."""

  def __init__(self, args, devices: int, dtype: str):
    env = dict(os.environ)
    if args.platform == "cpu":
      flags = [f for f in env.get("XLA_FLAGS", "").split()
               if not f.startswith("--xla_force_host_platform_device_count")]
      env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
      env["JAX_PLATFORMS"] = "cpu"
    elif args.platform != "auto":
      env["JAX_PLATFORMS"] = args.platform
    cmd = [sys.executable, HERE, "--worker", "--devices", str(devices), "--dtype", dtype,
           "--resolution", str(args.resolution), "--phase", args.phase, "--batch",
           str(args.batch), "--image-channels", str(args.image_channels), "--window",
           str(args.window)]
    self.name, self.dtype, self.timeout = f"{devices} device(s), {dtype}", dtype, args.timeout
    self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
    self.info = self._read()
    self.rates, self.cores = [], []

  def _read(self) -> dict:
    timer = threading.Timer(self.timeout, self.proc.kill)
    timer.start()
    try:
      while True:
        line = self.proc.stdout.readline()
        if not line:
          raise RuntimeError(f"{self.name} failed (exit {self.proc.wait()}):\n"
                             f"{self.proc.stderr.read()[-3000:]}")
        if line.startswith("{"):
          return json.loads(line)
    finally:
      timer.cancel()

  def run(self) -> float:
    self.proc.stdin.write("run\n")
    self.proc.stdin.flush()
    result = self._read()
    self.rates.append(result["img_per_s"])
    self.cores.append(result["cores_busy"])
    return result["img_per_s"]

  def close(self) -> None:
    if self.proc.poll() is None:
      try:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
      except Exception:  # noqa: BLE001
        self.proc.kill()
        self.proc.wait()


def machine() -> str:
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return f"{cpu}, {cores} cores available"


def markdown(records: list[dict], command: str) -> str:
  first, f32 = {}, {r["devices"]: r["img_per_s"] for r in records if r["dtype"] == "float32"}
  mixed = len({r["dtype"] for r in records}) > 1 and f32
  rows = ["| devices | device | dtype | stage | global batch | per device | images/s "
          "(median) | best | speed-up | " + ("vs float32 | " if mixed else "") +
          "CPU cores busy | compile s |",
          "|---:|---|---|---|---:|---:|---:|---:|---:|" + ("---:|" if mixed else "") +
          "---:|---:|"]
  for r in records:
    base = first.setdefault(r["dtype"], r["img_per_s"])
    vs = ""
    if mixed:
      ref = f32.get(r["devices"])
      vs = f"{r['img_per_s'] / ref:.2f}x | " if ref else "- | "
    rows.append(f"| {r['devices']} | {r['device_kind']} | {r['dtype']} | "
                f"{r['resolution']}x{r['resolution']} {r['phase']} | {r['batch']} | "
                f"{r['per_device_batch']} | {r['img_per_s']:.1f} | {r['best_img_per_s']:.1f} | "
                f"{r['img_per_s'] / base:.2f}x | {vs}{r['cores_busy']:.2f} | "
                f"{r['compile_s']:.1f} |")
  load = records[0]["loadavg_1m"]
  return (f"Command: `{command}`  \nMachine: {machine()}; jax {records[0]['jax']}; 1-minute "
          f"load average {load[0]:.1f} before, {load[1]:.1f} after\n\n" +
          "\n".join(rows) + "\n")


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--devices", default="1,2,4",
                 help="device counts, comma separated (default 1,2,4); on CPU each is made "
                      "with --xla_force_host_platform_device_count")
  p.add_argument("--platform", default="cpu", choices=("cpu", "gpu", "cuda", "tpu", "auto"))
  p.add_argument("--dtypes", default="float32", help="compute dtypes: float32,bfloat16")
  p.add_argument("--resolution", type=int, default=16)
  p.add_argument("--phase", choices=("fade", "stable"), default="fade")
  p.add_argument("--batch", type=int, default=64, help="GLOBAL batch size (default 64)")
  p.add_argument("--image-channels", type=int, default=3)
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--window", type=float, default=3.0, help="seconds per timed window")
  p.add_argument("--timeout", type=float, default=900.0, help="per device count, seconds")
  p.add_argument("--json", help="append the JSON records here")
  p.add_argument("--markdown", help="write the table here")
  p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
  return p


def _time_workers(args) -> list:
  """Every (dtype, device count) worker, timed round by round; closed before returning."""
  workers = []
  try:
    for dtype in args.dtypes.split(","):
      for n in (int(x) for x in args.devices.split(",")):
        workers.append(Worker(args, n, dtype))  # One at a time: compiles do not overlap.
    # Round r times every worker once, in a rotating order: a load that comes and goes
    # (another job on the machine) falls on all of them alike; the median discards it.
    for r in range(args.rounds):
      k = r % len(workers)
      for w in workers[k:] + workers[:k]:
        w.run()
  finally:
    for w in workers:
      w.close()
  return workers


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  if args.worker:
    args.devices = int(args.devices)
    worker(args)
    return 0
  command = "python benchmarks/bench_scaling.py " + " ".join(argv if argv is not None
                                                            else sys.argv[1:])
  load_before = os.getloadavg()[0]
  workers = _time_workers(args)
  load = [round(load_before, 2), round(os.getloadavg()[0], 2)]
  records = []
  for w in workers:
    record = dict(w.info, dtype=w.dtype, resolution=args.resolution, phase=args.phase,
                  batch=args.batch, per_device_batch=args.batch // w.info["devices"],
                  img_per_s=round(statistics.median(w.rates), 1),
                  best_img_per_s=round(max(w.rates), 1),
                  img_per_s_runs=[round(x, 1) for x in w.rates],
                  cores_busy=round(statistics.median(w.cores), 2),
                  xla_flags=os.environ.get("XLA_FLAGS", ""), loadavg_1m=load)
    record.pop("ready")
    print(json.dumps(record), flush=True)
    records.append(record)
    if args.json:
      with open(args.json, "a") as f:
        f.write(json.dumps(record) + "\n")
  table = markdown(records, command.strip())
  print()
  print(table)
  if args.markdown:
    with open(args.markdown, "w") as f:
      f.write(table)
  return 0


if __name__ == "__main__":
  sys.exit(main())
