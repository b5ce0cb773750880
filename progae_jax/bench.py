"""`progae bench`: steady-state training speed of every stage, optionally beside PyTorch.

    progae bench                        # stages 8, 16, 32; fade and stable
    progae bench --vs-torch             # ... and the PyTorch reference, like for like
    progae bench --preset large --phases stable --measure-peak --stage-budget 60
    progae bench --preset large --compile-only         # FLOPs and memory per stage, no steps
    python -m progae_jax.bench --resolutions 16 --rounds 5 --json bench.jsonl

For every stage (resolution and phase) it compiles the real training step
(`progae_jax.steps.make_train_step`: MSE against the faded target, Adam, metrics, state
donated) once, then times windows of steps on one fixed random batch: images/s is the
median over the windows, after warm-up. Data loading is not part of it. Compile time is
reported apart from the windows; `--stage-budget` caps a stage's time (its compile, then as
many rounds as fit, at least one), so that a sweep fits a budget. With `--preset` the model,
compute dtype, optimizer and per-stage batches are the preset's. FLOPs per step come from
XLA's cost analysis of the compiled step; MFU is against the chip's datasheet peak, a given
`--peak-tflops`, or the rate a large matrix product reaches on the device (`--measure-peak`).
Peak memory is the device's own counter where it has one (else XLA's buffer assignment);
`--max-batch` then estimates and tries the largest batch that fits at the largest stage.

With `--vs-torch`, the PyTorch reference of the same model (benchmarks/torch_reference.py in
the repository, or a script given as `--vs-torch PATH` that speaks its `--worker` protocol)
runs beside JAX for the same resolution, batch, alpha, image channels, channel widths and
latent width, in each of `--torch-modes`. Both sides run the same way, as long-lived worker
processes per stage, timed one at a time in an order that rotates every round
(bench_workers.py); this process starts no JAX backend then. The ratio is JAX / the first
mode, median over median, and each stage also records it over the rounds where JAX went first
and where it went after.

Output: JSON lines (`"kind"`: one "meta" with the command, date, machine, versions and
settings, one "stage" per stage as it finishes, one "summary"), then a readable table.
`--json PATH` writes the JSON lines to a file as well. Each stage records
`others_cpu_share`, the share of the CPU other processes used while it was timed: above 0.1
the table warns that the numbers are noisy.

On the CPU the process is set up the way XLA:CPU trains fastest (benchmarks/training_speed.md
has the measurements): the step runs data-parallel over `--cpu-devices` host devices (default:
one per core; XLA:CPU runs each convolution on one core), and glibc's malloc is told to keep
freed memory (`tune_malloc`; otherwise every step page-faults XLA's buffers back in). Both
must happen before JAX starts its backend: `main` does that first thing (`configure_cpu`);
`run_bench` called from a process whose backend is already up runs with what it finds.
The workers of `--vs-torch` set themselves up the same way; the reference gets the same malloc
settings as glibc tunables (like for like; PyTorch's allocator gains from them as well);
`--torch-malloc default` leaves it glibc's defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable, Sequence

import numpy as np

from progae_jax import mfu
from progae_jax.cpu import configure_cpu, core_count

DEFAULT_RESOLUTIONS = (8, 16, 32)
PHASES = ("fade", "stable")
BUSY_WARNING = 0.1  # Others' share of the CPU above which the table carries a warning.


# ---------------------------------------------------------------------------------------------
# JAX side


@dataclasses.dataclass
class JaxStage:
  """A compiled training step at one stage, with its state and a fixed batch."""
  run: Callable[[int], float]  # run(steps) -> seconds for that many steps (blocking)
  compile_s: float
  peak_bytes: int | None  # per device: the device's own peak counter, else XLA's buffers
  peak_source: str
  devices: int
  platform: str
  hlo_text: Callable[[], str] | None = None  # the compiled step's HLO text, for profiling
  flops_per_step: float | None = None  # XLA's cost analysis, all devices (progae_jax.mfu)
  device_kind: str = ""
  memory: dict = dataclasses.field(default_factory=dict)  # XLA's buffers, per device
  bytes_limit: int | None = None  # what the device lets this process allocate


def preset_train_config(name: str, image_channels: int = 3):
  """A preset's TrainConfig without reading its data (image channels given, not looked up)."""
  from progae_jax import config_files
  from progae_jax.schedule import TrainConfig
  fields = config_files.unfold_flag_names(config_files.preset(name))
  fields.setdefault("model", {}).setdefault("image_channels", image_channels)
  return TrainConfig.from_dict(fields)


def _state_at(config, resolution: int, fading: bool, optimizer, mesh):
  """A training state at a stage, made there in one compile (training grows it from 4x4 in
  several: the same tree, shapes and shardings, so the same step; only the values differ)."""
  import jax
  import jax.numpy as jnp

  from progae_jax import parallel
  from progae_jax.model import init_params

  def make():
    key = jax.random.key(config.seed)
    params = init_params(config.model, resolution, key, fading=fading)
    state = {"params": params, "opt_state": optimizer.init(params),
             "step": jnp.zeros((), jnp.int32), "rng": jax.random.key_data(key)}
    if config.ema_decay is not None:
      state["ema"] = params
    return state
  return jax.jit(make, out_shardings=parallel.state_sharding(mesh))()


def prepare_jax_stage(model_config, resolution: int, fading: bool, batch: int, alpha: float,
                      *, compute_dtype: str = "float32", seed: int = 0,
                      ema_decay: float | None = None, microbatches: int = 1,
                      train_config=None) -> JaxStage:
  """The training step at one stage, compiled and warmed up, on one fixed random batch
  (`train_config`: the optimizer's settings, a preset's; the model and dtype given win)."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from progae_jax import optim, parallel, steps
  from progae_jax.schedule import TrainConfig

  config = dataclasses.replace(train_config or TrainConfig(), model=model_config,
                               compute_dtype=compute_dtype, seed=seed, ema_decay=ema_decay)
  optimizer = optim.optimizer_for(config)
  mesh = parallel.make_mesh()
  parallel.check_batch_size(batch, mesh)
  state = _state_at(config, resolution, fading, optimizer, mesh)
  images = np.random.default_rng(seed).random(
      (batch, resolution, resolution, model_config.image_channels), dtype=np.float32)
  images = jax.device_put(images, parallel.data_sharding(mesh))
  alpha_arr = jax.device_put(jnp.float32(alpha), parallel.replicated(mesh))

  step = steps.make_train_step(config, optimizer, mesh, microbatches=microbatches)
  t = time.perf_counter()
  compiled = step.lower(state, images, alpha_arr).compile()
  compile_s = time.perf_counter() - t
  holder = {"state": state}

  def run(steps: int) -> float:
    s = holder["state"]
    t0 = time.perf_counter()
    for _ in range(steps):
      s, metrics = compiled(s, images, alpha_arr)
    jax.block_until_ready(metrics)
    dt = time.perf_counter() - t0
    holder["state"] = s
    return dt

  device = mesh.devices.flat[0]
  run(2)  # Warm-up: first-run allocations, thread pools.
  memory = xla_memory(compiled)
  peak, source, limit = memory.get("total"), "xla" if memory else "n/a", None
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats:  # Accelerators count their own peak (over the whole process).
    limit = stats.get("bytes_limit")
    if stats.get("peak_bytes_in_use"):
      peak, source = int(stats["peak_bytes_in_use"]), "device"
  return JaxStage(run, compile_s, peak, source, mesh.devices.size, device.platform,
                  compiled.as_text, mfu.step_flops(compiled, mesh.devices.size),
                  device.device_kind, memory, limit)


def stage_costs(model_config, resolution: int, fading: bool, batch: int, *,
                compute_dtype: str = "float32", train_config=None) -> dict:
  """What one stage's training step costs, from compiling it on abstract shapes (no state is
  made, no step runs): FLOPs per step and per image (XLA's cost analysis), parameters, XLA's
  buffers per device and the compile's seconds. Cheap on the CPU even for the large preset."""
  import jax
  import jax.numpy as jnp

  from progae_jax import optim, parallel, steps, train_state
  from progae_jax.model import Stage
  from progae_jax.schedule import TrainConfig

  config = dataclasses.replace(train_config or TrainConfig(), model=model_config,
                               compute_dtype=compute_dtype, ema_decay=None)
  optimizer = optim.optimizer_for(config)
  mesh = parallel.make_mesh()
  parallel.check_batch_size(batch, mesh)
  state = train_state.abstract_state(config, Stage(resolution, fading), optimizer, mesh)
  images = jax.ShapeDtypeStruct((batch, resolution, resolution, model_config.image_channels),
                                jnp.float32, sharding=parallel.data_sharding(mesh))
  alpha = jax.ShapeDtypeStruct((), jnp.float32, sharding=parallel.replicated(mesh))
  step = steps.make_train_step(config, optimizer, mesh)
  t = time.perf_counter()
  compiled = step.lower(state, images, alpha).compile()
  flops = mfu.step_flops(compiled, mesh.devices.size)
  params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(state["params"]))
  return {"compile_s": round(time.perf_counter() - t, 3), "flops_per_step": flops,
          "flops_per_image": None if flops is None else flops / batch, "params": params,
          "xla_memory_per_device": xla_memory(compiled), "devices": mesh.devices.size,
          "platform": mesh.devices.flat[0].platform}


def xla_memory(compiled) -> dict:
  """XLA's buffer assignment on one device: arguments (state and batch), outputs, temporaries
  and their total; {} where the backend has no such analysis."""
  try:
    mem = compiled.memory_analysis()
    parts = {"arguments": int(mem.argument_size_in_bytes),
             "outputs": int(mem.output_size_in_bytes), "aliased": int(mem.alias_size_in_bytes),
             "temporaries": int(mem.temp_size_in_bytes)}
  except Exception:  # Not every backend has the analysis.
    return {}
  parts["total"] = (parts["arguments"] + parts["outputs"] - parts["aliased"]
                    + parts["temporaries"])
  return parts


def largest_batch_estimate(memory: dict, batch: int, image_bytes: int, limit: int) -> int:
  """The batch whose step would just fit in `limit` bytes per device, from one compile's
  buffers: the state is fixed, the batch and the temporaries grow with the batch."""
  per_image = (memory["temporaries"] + image_bytes) / batch
  fixed = memory["total"] - memory["temporaries"] - image_bytes
  return int((limit - fixed) // per_image)


# ---------------------------------------------------------------------------------------------
# The benchmark


class OtherLoad:
  """How busy the machine was with other processes while we timed (Linux; None elsewhere).

  All cores' busy time from /proc/stat, minus this process's and its children's CPU time, as
  a fraction of the cores' capacity. On a shared machine 0.3 means that a third of every core
  went to someone else, and every images/s here is lower (PyTorch's OpenMP threads suffer most).
  """

  def __init__(self, workers=()):
    self.busy = self.total = 0.0
    self.workers = list(workers)  # Children still running: their CPU time is ours too.

  def _sample(self):
    try:
      with open("/proc/stat") as f:
        fields = [float(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
      return None
    hz = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    own = os.times()
    mine = own.user + own.system + own.children_user + own.children_system
    mine += sum(w.cpu_seconds() for w in self.workers)
    return sum(fields) / hz, (sum(fields) - idle) / hz, mine

  def __enter__(self):
    self._start = self._sample()
    return self

  def __exit__(self, *exc):
    end = self._sample()
    if self._start is not None and end is not None:
      (t0, b0, m0), (t1, b1, m1) = self._start, end
      self.total += t1 - t0
      self.busy += max(0.0, (b1 - b0) - (m1 - m0))

  @property
  def fraction(self):
    return round(self.busy / self.total, 3) if self.total > 0 else None



def _median(xs):
  return statistics.median(xs) if xs else None


def _steps_per_window(stage: JaxStage, steps: int | None, window_s: float) -> int:
  if steps is not None:
    return steps
  return steps_for_window(stage.run(2) / 2, window_s)


def steps_for_window(seconds_per_step: float, window_s: float) -> int:
  return int(min(500, max(3, round(window_s / max(seconds_per_step, 1e-6)))))


def time_stage(stage: JaxStage, *, batch: int, steps: int, rounds: int,
               deadline: float | None = None) -> dict:
  """Up to `rounds` timed windows of `steps` steps in this process (fewer when the next
  would end past `deadline`, at least one): images/s of every window, others' CPU share."""
  rates = []
  others = OtherLoad()
  for _ in range(rounds):
    with others:
      seconds = stage.run(steps)
    rates.append(steps * batch / seconds)
    if deadline is not None and time.perf_counter() + seconds > deadline:
      break
  return {"jax_img_per_s": round(_median(rates), 2),
          "jax_img_per_s_runs": [round(r, 2) for r in rates],
          "rounds_done": len(rates), "others_cpu_share": others.fraction}


def _stages(model_config, resolutions: Sequence[int], phases: Sequence[str]):
  """(resolution, fading) of every stage asked for, checked against the model."""
  from progae_jax.config import MIN_RESOLUTION
  for p in phases:
    if p not in PHASES:
      raise ValueError(f"unknown phase {p!r}: choose from {PHASES}")
  for resolution in resolutions:
    if resolution not in model_config.resolutions:
      raise ValueError(f"resolution {resolution} is not a stage of the model "
                       f"{model_config.resolutions}")
  return [(r, p == "fade") for r in resolutions for p in phases
          if not (p == "fade" and r == MIN_RESOLUTION)]  # 4x4 has nothing to fade from.


@dataclasses.dataclass
class Settings:
  """How every stage of a sweep is run (`run_bench`'s keywords; see `build_parser`)."""
  batch: int | None = None  # None: the preset's batch of each stage, else 64
  alpha: float = 0.5
  rounds: int = 3
  window_s: float = 2.0
  steps: int | None = None
  stage_budget_s: float | None = None
  compute_dtype: str = "float32"
  ema_decay: float | None = None
  microbatches: int = 1
  peak_tflops: float | None = None
  peak_source: str = "datasheet"
  compile_only: bool = False  # Costs only (stage_costs): FLOPs, parameters, XLA's buffers
  train_config: object = None  # A preset's TrainConfig: the optimizer and per-stage batches
  preset: str | None = None  # Its name, for the JAX workers
  # --vs-torch: the reference script and the modes to run it in, each a worker.
  vs_torch: str | None = None
  torch_modes: tuple[str, ...] = ("eager_fp32",)
  torch_python: str | None = None
  torch_device: str = "auto"
  torch_malloc_tuning: bool = False
  cpu_devices: str = "auto"
  malloc: bool = True
  worker_timeout_s: float = 900.0

  def batch_at(self, resolution: int) -> int:
    if self.batch is not None:
      return self.batch
    if self.train_config is not None:
      return self.train_config.stage(resolution).batch_size
    return 64


def _jax_stage_in_process(model_config, resolution, fading, batch, a, st: Settings) -> dict:
  """Compiles and times one stage here (no reference)."""
  started = time.perf_counter()
  deadline = started + st.stage_budget_s if st.stage_budget_s else None
  stage = prepare_jax_stage(model_config, resolution, fading, batch, a,
                            compute_dtype=st.compute_dtype, ema_decay=st.ema_decay,
                            microbatches=st.microbatches, train_config=st.train_config)
  n = _steps_per_window(stage, st.steps, st.window_s)
  timed = time_stage(stage, batch=batch, steps=n, rounds=st.rounds, deadline=deadline)
  peak = st.peak_tflops or mfu.peak_tflops(stage.device_kind, st.compute_dtype, stage.devices)
  return {"steps_per_window": n, "compile_s": round(stage.compile_s, 3),
          "peak_mem_bytes": (None if stage.peak_bytes is None
                             else stage.peak_bytes * stage.devices),
          "peak_mem_bytes_per_device": stage.peak_bytes, "peak_mem_source": stage.peak_source,
          "xla_memory_per_device": stage.memory, "device_bytes_limit": stage.bytes_limit,
          "devices": stage.devices, "platform": stage.platform,
          "device_kind": stage.device_kind, "flops_per_step": stage.flops_per_step,
          "peak_tflops": peak, "stage_s": round(time.perf_counter() - started, 2), **timed}


def _add_rates(record: dict, st: Settings) -> dict:
  """TFLOP/s and MFU from the step's FLOPs and the JAX side's images/s (against the peak in
  use, and against the datasheet's where that is another)."""
  batch = record["batch"]
  flops = record.get("flops_per_step")
  peak = record.get("peak_tflops")
  record.update(mfu.utilisation(flops, record["jax_img_per_s"] / batch, peak))
  record["flops_per_image"] = None if flops is None else flops / batch
  record["peak_source"] = st.peak_source if peak else None
  sheet = mfu.peak_tflops(record.get("device_kind", ""), st.compute_dtype,
                          record.get("devices", 1))
  if sheet and sheet != peak and record["tflops"] is not None:
    record["mfu_datasheet"] = float(f"{record['tflops'] / sheet:.4g}")
  return record


def run_bench(resolutions: Sequence[int] = DEFAULT_RESOLUTIONS, *,
              phases: Sequence[str] = PHASES, model_config=None, image_channels: int = 3,
              emit: Callable[[dict], None] | None = None, **settings) -> list[dict]:
  """Times every (resolution, phase); returns (and emits, one by one) a record per stage.

  `settings` are `Settings`' fields. By default the steps per timed window are chosen so that
  a window lasts about `window_s` seconds, and `stage_budget_s` caps a stage's time (its
  compile, then as many of the `rounds` as fit, at least one). With `vs_torch` (the reference
  script) every stage runs as workers, JAX and one per `torch_modes` (bench_workers.py).
  `peak_tflops` (all devices together) is what MFU is measured against; by default the
  chip's datasheet peak where `progae_jax.mfu` knows it.
  """
  from progae_jax import bench_workers
  from progae_jax.config import ModelConfig

  st = Settings(**settings)
  if model_config is None:
    model_config = ModelConfig(image_channels=image_channels,
                               max_resolution=max(8, max(resolutions)))
  if st.rounds < 1:
    raise ValueError("rounds must be at least 1")
  if st.vs_torch is not None:
    check_reference(st.vs_torch, st.torch_python)
  records = []
  for resolution, fading in _stages(model_config, resolutions, phases):
    a = st.alpha if fading else 1.0
    batch = st.batch_at(resolution)
    record = {"kind": "stage", "resolution": resolution, "phase": "fade" if fading else "stable",
              "alpha": a, "batch": batch, "image_channels": model_config.image_channels,
              "rounds": st.rounds, "compute_dtype": st.compute_dtype,
              "stage_budget_s": st.stage_budget_s}
    if st.compile_only:
      record.update(stage_costs(model_config, resolution, fading, batch,
                                compute_dtype=st.compute_dtype, train_config=st.train_config))
      records.append(record)
      if emit is not None:
        emit(record)
      continue
    if st.vs_torch is None:
      record.update(_jax_stage_in_process(model_config, resolution, fading, batch, a, st))
    else:
      record.update(bench_workers.compare_stage(model_config, resolution, fading, batch, a, st))
    records.append(_add_rates(record, st))
    if emit is not None:
      emit(record)
  return records


# The reference of the model lives in the repository, beside the other benchmarks.
REFERENCE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "benchmarks", "torch_reference.py")


def check_reference(script: str, python: str | None = None) -> None:
  """A clear error, before anything is compiled, when the reference cannot run."""
  if not os.path.exists(script):
    if script == REFERENCE:
      raise FileNotFoundError(
          f"--vs-torch: the PyTorch reference {script} is not there: it comes with the "
          "repository, not with an installed package; run from a clone (pip install -e "
          "'.[bench]') or give its path, --vs-torch PATH")
    raise FileNotFoundError(f"--vs-torch: no such file: {script}")
  if script == REFERENCE and python is None and importlib.util.find_spec("torch") is None:
    raise FileNotFoundError("--vs-torch needs PyTorch in this Python: pip install -e "
                            "'.[bench]' (or --torch-python EXE for another Python)")


def largest_batch(model_config, resolution: int, record: dict, st: Settings,
                  limit: int | None = None, tries: int = 3) -> dict:
  """The largest batch whose stable step at `resolution` runs: estimated from the swept
  stage's buffers and the device's limit (or `limit`, bytes per device), then checked by
  compiling and running it; 15% less after each failure."""
  memory, limit = record.get("xla_memory_per_device") or {}, limit or record.get(
      "device_bytes_limit")
  if not memory or not limit:
    return {"kind": "max_batch", "resolution": resolution, "estimate": None,
            "why": "no buffer sizes or no device memory limit (give --max-batch-memory)"}
  image_bytes = record["batch"] * resolution ** 2 * model_config.image_channels * 4
  estimate = largest_batch_estimate(memory, record["batch"], image_bytes // record["devices"],
                                    limit) * record["devices"]
  out = {"kind": "max_batch", "resolution": resolution, "limit_bytes_per_device": limit,
         "estimate": estimate, "tried": []}
  batch = estimate - estimate % (8 * record["devices"])
  for _ in range(tries):
    try:
      stage = prepare_jax_stage(model_config, resolution, False, batch, 1.0,
                                compute_dtype=st.compute_dtype, train_config=st.train_config)
      out["tried"].append({"batch": batch, "ran": True, "peak_bytes": stage.peak_bytes})
      out["largest_that_ran"] = batch
      break
    except Exception as e:  # XLA's out-of-memory is a plain runtime error.
      out["tried"].append({"batch": batch, "ran": False, "error": str(e).splitlines()[0][:300]})
      batch = int(batch * 0.85) // (8 * record["devices"]) * 8 * record["devices"]
  return out


def summary(records: list[dict], target: float | None = None) -> dict:
  ratios = [r["ratio"] for r in records if r.get("ratio") is not None]
  out = {"kind": "summary", "stages": len(records),
         "min_ratio": min(ratios) if ratios else None,
         "geomean_ratio": (round(statistics.geometric_mean(ratios), 3) if ratios else None)}
  if target is not None and ratios:
    out["target_ratio"] = target
    out["meets_target"] = min(ratios) >= target
  shares = [r["others_cpu_share"] for r in records if r.get("others_cpu_share") is not None]
  out["max_others_cpu_share"] = max(shares) if shares else None
  return out


def _mb(b):
  return "-" if b is None else f"{b / 2**20:.0f}"


def _pct(x):
  return "-" if x is None else f"{x:.1%}"


def _table_row(r: dict, modes: list[str]) -> list[str]:
  row = [f"{r['resolution']}x{r['resolution']}", r["phase"], f"{r['alpha']:g}", str(r["batch"]),
         f"{r['jax_img_per_s']:.1f}", "-" if r.get("tflops") is None else f"{r['tflops']:.3g}",
         _pct(r.get("mfu")), f"{r['compile_s']:.2f}", _mb(r["peak_mem_bytes"])]
  for mode in modes:
    t = (r.get("torch") or {}).get(mode) or {}
    if "error" in t:
      row += ["failed", "-"]
      continue
    row += ["-" if not t else f"{t['img_per_s']:.1f}",
            "-" if not t else f"{t['ratio']:.2f}x"]
  return row


def format_table(records: list[dict]) -> str:
  modes = list(dict.fromkeys(m for r in records for m in (r.get("torch") or {})))
  head = ["stage", "phase", "alpha", "batch", "JAX img/s", "TFLOP/s", "MFU", "compile s",
          "peak MB"]
  for mode in modes:
    head += [f"{mode} img/s", f"JAX/{mode}"]
  rows = [_table_row(r, modes) for r in records]
  widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
            for i, h in enumerate(head)]
  line = lambda cells: "  ".join(c.rjust(w) if i >= 2 else c.ljust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths)))
  out = [line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]
  orders = [(r["resolution"], r["phase"], r["ratio_by_order"]) for r in records
            if r.get("ratio_by_order")]
  for res, phase, by_order in orders:
    out.append(f"{res}x{res} {phase}: JAX/{records[0].get('torch_mode')} with JAX first "
               f"{by_order['jax_first']}, with JAX after {by_order['jax_after']}")
  shares = [r["others_cpu_share"] for r in records if r.get("others_cpu_share") is not None]
  if shares and max(shares) > BUSY_WARNING:
    out.append(f"warning: other processes used up to {max(shares):.0%} of the CPU while this "
               "ran; the numbers (PyTorch's most of all) are lower and noisier than on an idle "
               "machine")
  return "\n".join(out)


def format_costs(records: list[dict]) -> str:
  """--compile-only's table: what each stage's step costs."""
  lines = ["stage    phase   batch   parameters  GFLOP/image  XLA MB/device  compile s"]
  for r in records:
    gflop = "-" if r["flops_per_image"] is None else f"{r['flops_per_image'] / 1e9:.2f}"
    lines.append(f"{r['resolution']:>3}x{r['resolution']:<4} {r['phase']:<6} {r['batch']:>6} "
                 f"{r['params']:>12,} {gflop:>12} "
                 f"{_mb((r['xla_memory_per_device'] or {}).get('total')):>14} "
                 f"{r['compile_s']:>10.2f}")
  return "\n".join(lines)


def _parse_resolutions(text: str) -> tuple[int, ...]:
  try:
    return tuple(int(t) for t in text.split(",") if t.strip())
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r}: expected e.g. 8,16,32") from None


def _parse_modes(text: str) -> tuple[str, ...]:
  from progae_jax.bench_workers import TORCH_MODES
  modes = tuple(m.strip() for m in text.split(",") if m.strip())
  bad = [m for m in modes if m not in TORCH_MODES]
  if bad or not modes:
    raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(TORCH_MODES)}")
  return modes


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="progae bench", description=__doc__.split("\n\n")[0],
      epilog="Peak MB: the training step's memory summed over the devices (on the CPU, what "
             "XLA's buffer assignment reserves: state, batch, temporaries; on accelerators, the "
             "device's own peak counter, over the process: with --vs-torch each stage has a "
             "process of its own). Compile s: lowering and compiling the step, apart from the "
             "timed windows.")
  p.add_argument("--preset", help="time this preset's model, compute dtype, optimizer and "
                 "per-stage batches (e.g. large); flags given override them")
  p.add_argument("--width-divisor", type=int, default=1, metavar="N",
                 help="divide the model's channels and latent width by N (at least 1 each): "
                      "a preset's every stage, small enough for a CPU (default 1)")
  p.add_argument("--resolutions", type=_parse_resolutions,
                 help="stages to time, comma separated (default: 8,16,32; with --preset, "
                      "its resolutions from 8 on)")
  p.add_argument("--phases", default="fade,stable",
                 help="fade, stable or both (default: fade,stable)")
  p.add_argument("--batch", type=int, help="global batch size (default: the preset's batch "
                 "of each stage, else 64)")
  p.add_argument("--alpha", type=float, default=0.5, help="alpha of the fade phases (0.5)")
  p.add_argument("--image-channels", type=int, default=3, help="1 grey, 3 RGB (default: 3)")
  p.add_argument("--compute-dtype", choices=("float32", "bfloat16"),
                 help="default: the preset's, else float32")
  p.add_argument("--ema-decay", type=float, default=None,
                 help="also update an EMA of the weights every step (default: none, as the "
                      "presets train; the PyTorch reference keeps none either)")
  p.add_argument("--microbatches", type=int, default=1,
                 help="chunks each device's rows go through the model in (default 1)")
  p.add_argument("--rounds", type=int, default=3,
                 help="timed windows per stage, and per side with --vs-torch; the median "
                      "counts (default: 3)")
  p.add_argument("--window", type=float, default=2.0,
                 help="seconds per timed window; sets the steps per window (default: 2)")
  p.add_argument("--steps", type=int, help="steps per window (overrides --window)")
  p.add_argument("--stage-budget", type=float, metavar="S",
                 help="seconds per stage: its compile, then as many rounds as fit (at least "
                      "one); default: no limit")
  p.add_argument("--compile-only", action="store_true",
                 help="no timing: compile every stage on abstract shapes and report its FLOPs "
                      "per image, parameters and XLA's buffers (the large preset's costs on "
                      "a CPU in minutes)")
  p.add_argument("--max-batch", action="store_true",
                 help="after the sweep, the largest batch whose stable step at the largest "
                      "resolution timed runs on the device: estimated from XLA's buffers and "
                      "the device's memory, then compiled and run")
  p.add_argument("--max-batch-memory", type=float, metavar="GIB",
                 help="the memory per device that --max-batch fills (default: the device's "
                      "own limit, where it reports one)")
  p.add_argument("--vs-torch", metavar="PATH", nargs="?", const=REFERENCE,
                 help="also time the PyTorch reference of the same model: "
                      "benchmarks/torch_reference.py, or a script at PATH that speaks its "
                      "--worker protocol; both sides then run as workers (bench_workers.py)")
  p.add_argument("--torch-modes", type=_parse_modes, default=("eager_fp32",),
                 help="the reference's modes, comma separated: eager_fp32 (default), "
                      "eager_bf16, compile_bf16; the ratio is against the first")
  p.add_argument("--torch-device", default="auto", choices=("auto", "cuda", "cpu"),
                 help="the reference's device (default auto: CUDA when there is one)")
  p.add_argument("--torch-python", metavar="EXE",
                 help="the Python that runs the reference (default: this one)")
  p.add_argument("--torch-malloc", choices=("same", "default"), default="same",
                 help="the reference's malloc: 'same' settings as this process, like for "
                      "like (default), or glibc's 'default' (PyTorch as a user runs it)")
  p.add_argument("--target", type=float, default=1.2,
                 help="JAX/torch ratio the summary checks every stage against (default: 1.2)")
  p.add_argument("--cpu-devices", default="auto",
                 help="host devices for the CPU backend: 'auto' = one per core (default), "
                      "0 = JAX's default (one), or a number. Ignored on accelerators.")
  p.add_argument("--xla-flags", default="", help="extra XLA_FLAGS for this process")
  p.add_argument("--no-malloc-tuning", action="store_true",
                 help="leave glibc's malloc as it is (by default it is told to keep freed "
                      "memory, which spares XLA:CPU a page fault per 4 KiB of its buffers "
                      "every step)")
  p.add_argument("--peak-tflops", type=float, metavar="T",
                 help="peak TFLOP/s of all devices together, for MFU (default: the datasheet "
                      "peak of chips progae_jax.mfu knows, for the compute dtype; else none)")
  p.add_argument("--measure-peak", action="store_true",
                 help="MFU against what a large matrix product in the compute dtype reaches "
                      "on this device (timed first); the datasheet's MFU is kept beside it")
  p.add_argument("--json", metavar="PATH", help="also write the JSON lines to this file")
  p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--model-json", help=argparse.SUPPRESS)
  return p


def _cpu_devices(text: str) -> int | None:
  if text == "auto":
    return core_count()
  try:
    n = int(text)
  except ValueError:
    n = -1
  if n < 0:
    raise ValueError(f"--cpu-devices {text!r}: choose 'auto', 0 (JAX's default) or a "
                     "positive number")
  return n or None


def malloc_note(malloc_tuned: bool, torch_malloc_tuned: bool) -> str | None:
  """The line under the table when the two sides ran with different malloc settings."""
  if malloc_tuned == torch_malloc_tuned:
    return None
  return ("note: not like for like: this process runs with "
          f"{'tuned' if malloc_tuned else 'default'} malloc, the reference with "
          f"{'tuned' if torch_malloc_tuned else 'default'} malloc (--torch-malloc same gives "
          "both the same settings)")


def narrowed(model_config, divisor: int):
  """The same model with its channels and latent divided by `divisor` (at least 1 each)."""
  return dataclasses.replace(
      model_config, channels={r: max(1, c // divisor) for r, c in model_config.channels},
      latent_dim=max(1, model_config.latent_dim // divisor))


def _model_and_settings(args, torch_malloc_tuned: bool):
  """The model and the Settings the flags (and the preset, where given) ask for."""
  from progae_jax.config import ModelConfig
  train_config = preset_train_config(args.preset, args.image_channels) if args.preset else None
  dtype = args.compute_dtype or (train_config.compute_dtype if train_config else "float32")
  if args.model_json:
    model = ModelConfig.from_dict(json.loads(args.model_json))
  elif train_config is not None:
    model = train_config.model
  else:
    model = ModelConfig(image_channels=args.image_channels,
                        max_resolution=max(8, max(args.resolutions or DEFAULT_RESOLUTIONS)))
  if args.width_divisor < 1:
    raise ValueError(f"--width-divisor {args.width_divisor}: must be at least 1")
  if args.width_divisor > 1 and not args.model_json:
    model = narrowed(model, args.width_divisor)
  resolutions = args.resolutions or (model.resolutions if args.preset else DEFAULT_RESOLUTIONS)
  settings = dict(
      batch=args.batch, alpha=args.alpha, rounds=args.rounds, window_s=args.window,
      steps=args.steps, stage_budget_s=args.stage_budget, compute_dtype=dtype,
      ema_decay=args.ema_decay, microbatches=args.microbatches,
      peak_tflops=args.peak_tflops,
      peak_source=("given" if args.peak_tflops else
                   "measured" if args.measure_peak else "datasheet"),
      train_config=train_config, preset=args.preset, vs_torch=args.vs_torch,
      torch_modes=args.torch_modes, torch_python=args.torch_python,
      torch_device=args.torch_device, torch_malloc_tuning=torch_malloc_tuned,
      cpu_devices=args.cpu_devices, malloc=not args.no_malloc_tuning,
      compile_only=args.compile_only)
  return model, resolutions, settings


def _meta(args, malloc_tuned: bool, torch_malloc_tuned: bool, settings: dict) -> dict:
  """The run's first line. With --vs-torch this process never starts JAX's backend (on a GPU
  it would hold the memory the workers need): the stage records name the device."""
  import jax

  import progae_jax
  versions = {"progae_jax": progae_jax.__version__, "jax": jax.__version__,
              "python": sys.version.split()[0]}
  meta = {"kind": "meta", "command": "progae bench " + " ".join(args.argv),
          "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or
                      platform.machine(), "platform": platform.platform()},
          "versions": versions, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
          **versions, "cpu_cores": os.cpu_count(),
          "xla_flags": os.environ.get("XLA_FLAGS", ""), "malloc_tuned": malloc_tuned,
          "torch_malloc_tuned": torch_malloc_tuned, "preset": args.preset,
          "compute_dtype": settings["compute_dtype"],
          "vs_torch": args.vs_torch and os.path.relpath(args.vs_torch),
          "torch_modes": list(args.torch_modes) if args.vs_torch else None,
          "ema_decay": args.ema_decay, "microbatches": args.microbatches}
  if not args.vs_torch:
    meta.update(backend=jax.default_backend(), devices=len(jax.devices()),
                device_kind=jax.devices()[0].device_kind)
    meta["machine"].update(devices=meta["devices"], device_kind=meta["device_kind"])
  return meta


def _run(args, malloc_tuned: bool, torch_malloc_tuned: bool, emit) -> list[dict]:
  if args.vs_torch and (args.max_batch or args.compile_only):
    raise ValueError("--max-batch and --compile-only run in this process: not with --vs-torch")
  model, resolutions, settings = _model_and_settings(args, torch_malloc_tuned)
  phases = tuple(p.strip() for p in args.phases.split(",") if p.strip())
  emit(_meta(args, malloc_tuned, torch_malloc_tuned, settings))
  if settings["peak_source"] == "measured" and not args.vs_torch:
    measured = mfu.measured_matmul_tflops(settings["compute_dtype"])
    emit({"kind": "peak", **measured})
    import jax
    settings["peak_tflops"] = measured["tflops"] * len(jax.devices())
  records = run_bench(resolutions, phases=phases, model_config=model, emit=emit, **settings)
  if args.max_batch and records:
    top = max((r for r in records if r["phase"] == "stable"), key=lambda r: r["resolution"],
              default=None)
    if top is not None:
      limit = args.max_batch_memory and int(args.max_batch_memory * 2**30)
      emit(largest_batch(model, top["resolution"], top, Settings(**settings), limit))
  emit(summary(records, args.target if args.vs_torch else None))
  return records


def serve_worker(args) -> int:
  """`--worker`: one stage, compiled and warmed up, then timed windows on request (the JAX
  side of `--vs-torch`; the protocol is bench_workers.py's)."""
  model, resolutions, st = _model_and_settings(args, False)
  phases = [p.strip() for p in args.phases.split(",") if p.strip()]
  fading = phases[0] == "fade"
  stage = prepare_jax_stage(model, resolutions[0], fading, st["batch"] or 64, args.alpha if
                            fading else 1.0, compute_dtype=st["compute_dtype"],
                            train_config=st["train_config"])
  ready = {"ready": True, "impl": "jax", "compile_s": round(stage.compile_s, 3),
           "peak_mem_bytes": None if stage.peak_bytes is None
           else stage.peak_bytes * stage.devices,
           "peak_mem_bytes_per_device": stage.peak_bytes, "peak_mem_source": stage.peak_source,
           "xla_memory_per_device": stage.memory, "device_bytes_limit": stage.bytes_limit,
           "devices": stage.devices, "platform": stage.platform,
           "device_kind": stage.device_kind, "flops_per_step": stage.flops_per_step,
           "seconds_per_step": stage.run(2) / 2,
           "datasheet_peak_tflops": mfu.peak_tflops(stage.device_kind, st["compute_dtype"],
                                                    stage.devices)}
  if args.measure_peak:
    ready["measured_peak"] = mfu.measured_matmul_tflops(st["compute_dtype"])
  print(json.dumps(ready), flush=True)
  for line in sys.stdin:
    command = json.loads(line) if line.strip() else {}
    if command.get("op") == "quit":
      break
    if command.get("op") == "time":
      seconds = stage.run(int(command["steps"]))
      print(json.dumps({"img_per_s": int(command["steps"]) * (st["batch"] or 64) / seconds,
                        "seconds": seconds}), flush=True)
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  args = build_parser().parse_args(argv)
  args.argv = argv
  try:
    devices = _cpu_devices(args.cpu_devices)
  except ValueError as e:
    print(f"progae bench: error: {e}", file=sys.stderr)
    return 2
  # First thing: devices and flags must be in place before JAX's backend starts.
  malloc = not args.no_malloc_tuning
  warnings = configure_cpu(devices, args.xla_flags, malloc=malloc)
  for w in warnings:
    print(f"progae bench: warning: {w}", file=sys.stderr)
  if args.worker:
    return serve_worker(args)
  malloc_tuned = malloc and not any("malloc" in w for w in warnings)
  torch_malloc_tuned = bool(args.vs_torch) and args.torch_malloc == "same" and malloc_tuned
  json_file = open(args.json, "w") if args.json else None

  def emit(record: dict) -> None:
    text = json.dumps(record)
    print(text, flush=True)
    if json_file:
      json_file.write(text + "\n")
      json_file.flush()

  try:
    records = _run(args, malloc_tuned, torch_malloc_tuned, emit)
  except (ValueError, FileNotFoundError, RuntimeError) as e:
    print(f"progae bench: error: {e}", file=sys.stderr)
    return 2
  finally:
    if json_file:
      json_file.close()
  print()
  print(format_costs(records) if args.compile_only else format_table(records))
  note = args.vs_torch and malloc_note(malloc_tuned, torch_malloc_tuned)
  if note:
    print(note)
  return 0


if __name__ == "__main__":
  sys.exit(main())
