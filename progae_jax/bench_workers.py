"""`progae bench --vs-torch`: JAX and PyTorch timed the same way, as long-lived workers.

    this process (no JAX backend, no torch)
      ├── JAX worker    python -m progae_jax.bench --worker ...       ─┐ each: build the stage,
      ├── torch worker  benchmarks/torch_reference.py --worker --mode A ├ warm up (compile),
      └── torch worker  benchmarks/torch_reference.py --worker --mode B ┘ print "ready"; then
                                                                       {"op": "time", "steps": n}
    round 0:  JAX, A, B      round 1:  A, B, JAX      round 2:  B, JAX, A   ...   -> one line each

Every side is a child process started the same way, once per stage, that stays up for the
stage's rounds: no side pays a start or a compile inside a timed window, none runs in the
process that orchestrates, and only one side computes at a time. The order rotates every
round, so each side goes first, in the middle and last equally often; the stage's record keeps
every round's order, and the ratio over the rounds where JAX went first beside the ratio over
the rounds where it went after (`ratio_by_order`): equal within noise when order no longer
matters.

On a GPU the JAX worker allocates as it goes (XLA_PYTHON_CLIENT_PREALLOCATE=false in its
environment only), and the torch workers warm up one at a time and hand their allocator's
cache back after each window (starting the next with an untimed step), so that the memory in
use at any time is JAX's step, the one side computing, and the idle sides' tensors.
"""

from __future__ import annotations

import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Sequence

from progae_jax.cpu import MALLOC_TUNABLES

TORCH_MODES = ("eager_fp32", "eager_bf16", "compile_bf16")


class WorkerError(RuntimeError):
  """A worker died, said something that is not a JSON line, or ran past its time."""


class Worker:
  """A child process that answers JSON lines: its "ready" line first, then one per request."""

  def __init__(self, name: str, command: list[str], env: dict | None = None):
    self.name, self.command = name, command
    self._stderr = tempfile.TemporaryFile(mode="w+")
    self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=self._stderr, text=True, env=env, bufsize=1)
    self._lines: queue.Queue = queue.Queue()
    threading.Thread(target=self._pump, daemon=True).start()
    self.ready: dict | None = None
    self.last: dict = {}

  def _pump(self) -> None:
    for line in self.proc.stdout:
      if line.lstrip().startswith("{"):
        self._lines.put(line)
    self._lines.put(None)  # End of output: the process has exited.

  def _tail(self) -> str:
    self._stderr.seek(0)
    return self._stderr.read()[-2000:]

  def read(self, timeout: float) -> dict:
    """The next JSON line, or a WorkerError naming the worker and its last words."""
    try:
      line = self._lines.get(timeout=max(0.1, timeout))
    except queue.Empty:
      raise WorkerError(f"{self.name} said nothing within {timeout:.0f} s") from None
    if line is None:
      code = self.proc.wait()
      raise WorkerError(f"{self.name} exited ({code}): {' '.join(self.command)}\n{self._tail()}")
    record = json.loads(line)
    if "error" in record:
      raise WorkerError(f"{self.name}: {record['error']}")
    return record

  def wait_ready(self, timeout: float) -> dict:
    self.ready = self.read(timeout)
    return self.ready

  def time(self, steps: int, timeout: float) -> dict:
    """One timed window of `steps` steps: the worker's reply (img_per_s, its memory)."""
    self.proc.stdin.write(json.dumps({"op": "time", "steps": int(steps)}) + "\n")
    self.proc.stdin.flush()
    self.last = self.read(timeout)
    return self.last

  def cpu_seconds(self) -> float:
    """The worker's CPU time so far (Linux; 0 elsewhere), so that it is not counted as load."""
    try:
      with open(f"/proc/{self.proc.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
      return (float(fields[11]) + float(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
      return 0.0

  def close(self) -> None:
    try:
      if self.proc.poll() is None:
        self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
        self.proc.stdin.flush()
      self.proc.wait(timeout=30)
    except (OSError, subprocess.TimeoutExpired):
      self.proc.kill()
      self.proc.wait()
    self._stderr.close()


def worker_env(same_malloc: bool) -> dict:
  """The environment every worker starts with: this one, with no XLA_FLAGS meant for this
  process, JAX allocating on demand on a GPU, and (`same_malloc`) tune_malloc's settings."""
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
  if same_malloc:
    env["GLIBC_TUNABLES"] = ":".join(filter(None, [env.get("GLIBC_TUNABLES"),
                                                   MALLOC_TUNABLES]))
  return env


def jax_worker_command(model_config, resolution: int, fading: bool, batch: int, alpha: float,
                       compute_dtype: str, cpu_devices: str, malloc: bool,
                       preset: str | None = None, measure_peak: bool = False) -> list[str]:
  """`progae bench --worker` for one stage: this package, this Python."""
  return [sys.executable, "-m", "progae_jax.bench", "--worker",
          "--model-json", json.dumps(model_config.to_dict()), "--resolutions", str(resolution),
          "--phases", "fade" if fading else "stable", "--batch", str(batch),
          "--alpha", repr(float(alpha)), "--compute-dtype", compute_dtype,
          "--cpu-devices", cpu_devices, *(["--preset", preset] if preset else []),
          *([] if malloc else ["--no-malloc-tuning"]),
          *(["--measure-peak"] if measure_peak else [])]


def torch_worker_command(script: str, model_config, resolution: int, batch: int, alpha: float,
                         mode: str, python: str | None = None, device: str = "auto",
                         lock: str | None = None) -> list[str]:
  """The reference's worker for exactly this model (channels, latent, image channels);
  workers given the same `lock` file warm up one at a time."""
  ch = ",".join(f"{r}:{c}" for r, c in model_config.channels)
  return [python or sys.executable, script, "--worker", "--mode", mode, "--device", device,
          "--res", str(resolution), "--batch", str(batch), "--alpha", repr(float(alpha)),
          "--channels", str(model_config.image_channels), "--ch", ch,
          "--latent", str(model_config.latent_dim), *(["--lock", lock] if lock else [])]


def rotation(names: Sequence[str], round_index: int) -> list[str]:
  """The order of one round: the sides rotated by the round's index."""
  k = round_index % len(names)
  return list(names[k:]) + list(names[:k])


def _median(xs):
  return statistics.median(xs) if xs else None


def ratio_by_order(rounds: list[dict], other: str) -> dict:
  """JAX / `other` over the rounds where JAX went first, and where it went after `other`."""
  out = {}
  for label, jax_first in (("jax_first", True), ("jax_after", False)):
    picked = [r for r in rounds
              if (r["order"].index("jax") < r["order"].index(other)) == jax_first]
    jax, ref = _median([r["jax"] for r in picked]), _median([r[other] for r in picked])
    out[label] = round(jax / ref, 3) if jax and ref else None
  return out


def timed_rounds(workers: dict, steps: int, rounds: int, timeout: float,
                 deadline: float | None = None) -> list[dict]:
  """Up to `rounds` rounds, each side one window of `steps` steps, in rotating order; stops
  early (after at least one round) when the next would end past `deadline`."""
  names = list(workers)
  done: list[dict] = []
  for i in range(rounds):
    started = time.perf_counter()
    record = {"order": rotation(names, i)}
    for name in record["order"]:
      record[name] = float(workers[name].time(steps, timeout)["img_per_s"])
    done.append(record)
    took = time.perf_counter() - started
    if deadline is not None and time.perf_counter() + took > deadline:
      break
  return done


def _start_torch(model_config, resolution, batch, alpha, st, timeout, lock: str):
  """One torch worker per mode, started together (imports and model building overlap; the
  warm-ups, torch.compile's included, take turns under `lock`, so that no two fill the
  device's memory at once): ({mode: (worker, seconds to ready)}, {mode: why it failed}). A
  mode that fails (out of memory, say) is reported and left out; the others go on."""
  started = time.perf_counter()
  workers = {mode: Worker(f"the PyTorch worker ({mode})", torch_worker_command(
      st.vs_torch, model_config, resolution, batch, alpha, mode, st.torch_python,
      st.torch_device, lock), worker_env(st.torch_malloc_tuning)) for mode in st.torch_modes}
  ready, failed = {}, {}
  try:
    for mode, worker in workers.items():
      try:
        worker.wait_ready(timeout - (time.perf_counter() - started))
        ready[mode] = (worker, round(time.perf_counter() - started, 2))
      except WorkerError as e:
        failed[mode] = str(e)[-1500:]
        worker.close()
  except BaseException:
    for worker in workers.values():
      worker.close()
    raise
  if not ready:
    raise WorkerError("no PyTorch worker started: " + "; ".join(failed.values()))
  return ready, failed


def _torch_record(mode: str, worker: Worker, ready_s: float, rounds: list[dict]) -> dict:
  rates = [r[mode] for r in rounds]
  memory = {**worker.ready, **worker.last}
  return {"img_per_s": round(_median(rates), 2), "img_per_s_runs": [round(r, 2) for r in rates],
          "ready_s": ready_s, "device": worker.ready.get("device"),
          "device_peak_bytes": memory.get("device_peak_bytes"),
          "max_rss_bytes": memory.get("max_rss_bytes"),
          "ratio": round(_median([r["jax"] for r in rounds]) / _median(rates), 3),
          "ratio_by_order": ratio_by_order(rounds, mode)}


def compare_stage(model_config, resolution: int, fading: bool, batch: int, alpha: float,
                  st) -> dict:
  """One stage as workers: JAX first (its compile alone on the device), then the torch
  modes together; then the rotating rounds, within the stage's budget."""
  from progae_jax.bench import OtherLoad, steps_for_window
  started = time.perf_counter()
  deadline = started + st.stage_budget_s if st.stage_budget_s else None
  measure = st.peak_source == "measured" and st.peak_tflops is None
  command = jax_worker_command(model_config, resolution, fading, batch, alpha,
                               st.compute_dtype, st.cpu_devices, st.malloc, st.preset, measure)
  workers = {"jax": Worker("the JAX worker", command, worker_env(False))}
  lock = tempfile.NamedTemporaryFile(prefix="progae-bench-", suffix=".lock")
  try:
    ready = workers["jax"].wait_ready(st.worker_timeout_s)
    if measure:
      st.peak_tflops = ready["measured_peak"]["tflops"] * ready["devices"]
    torch, failed = _start_torch(model_config, resolution, batch, alpha, st,
                                 st.worker_timeout_s, lock.name)
    workers.update({mode: worker for mode, (worker, _) in torch.items()})
    n = st.steps or steps_for_window(ready["seconds_per_step"], st.window_s)
    others = OtherLoad(workers.values())
    with others:
      rounds = timed_rounds(workers, n, st.rounds, st.worker_timeout_s, deadline)
  finally:
    for worker in workers.values():
      worker.close()
    lock.close()
  modes = {mode: _torch_record(mode, w, s, rounds) for mode, (w, s) in torch.items()}
  modes.update({mode: {"error": why} for mode, why in failed.items()})
  first_mode = next(m for m in st.torch_modes if m in torch)
  first = modes[first_mode]
  jax_rates = [r["jax"] for r in rounds]
  return {"steps_per_window": n, **{k: ready[k] for k in JAX_READY_FIELDS},
          "peak_tflops": st.peak_tflops or ready["datasheet_peak_tflops"],
          "jax_img_per_s": round(_median(jax_rates), 2),
          "jax_img_per_s_runs": [round(r, 2) for r in jax_rates], "rounds_done": len(rounds),
          "round_orders": [r["order"] for r in rounds], "torch": modes,
          "torch_mode": first_mode, "torch_img_per_s": first["img_per_s"],
          "torch_img_per_s_runs": first["img_per_s_runs"],
          "torch_max_rss_bytes": first["max_rss_bytes"], "ratio": first["ratio"],
          "ratio_by_order": first["ratio_by_order"], "others_cpu_share": others.fraction,
          "stage_s": round(time.perf_counter() - started, 2)}


# What the JAX worker's "ready" line says of its stage, copied into the stage's record.
JAX_READY_FIELDS = ("compile_s", "peak_mem_bytes", "peak_mem_bytes_per_device",
                    "peak_mem_source", "xla_memory_per_device", "device_bytes_limit", "devices",
                    "platform", "device_kind", "flops_per_step")
