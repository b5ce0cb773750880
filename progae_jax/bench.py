"""`progae bench`: steady-state training speed of every stage, optionally beside PyTorch.

    progae bench                        # stages 8, 16, 32; fade and stable
    progae bench --vs-torch             # ... and the PyTorch reference, like for like
    python -m progae_jax.bench --resolutions 16 --rounds 5 --json bench.jsonl

For every stage (resolution and phase) it compiles the real training step
(`progae_jax.steps.make_train_step`: MSE against the faded target, Adam, metrics, state
donated) once, then times windows of steps on one fixed random batch: images/s is the
median over the windows, after warm-up. Data loading is not part of it.

With `--vs-torch`, the PyTorch reference of the same model (benchmarks/torch_reference.py in
the repository, or a script given as `--vs-torch PATH` that prints the same JSON line) runs
as a subprocess for the same resolution, batch, alpha, image channels, channel widths and
latent width, alternating with this process's own windows (so both see the same load on a
shared machine), and the ratio is JAX / PyTorch, median over median.

Output: JSON lines (`"kind"`: one "meta" with versions, devices and settings, one "stage" per
stage as it finishes, one "summary"), then a readable table. `--json PATH` writes the JSON
lines to a file as well. Each stage records `others_cpu_share`, the share of the CPU other
processes used while it was timed: above 0.1 the table warns that the numbers are noisy.

On the CPU the process is set up the way XLA:CPU trains fastest (benchmarks/training_speed.md
has the measurements): the step runs data-parallel over `--cpu-devices` host devices (default:
one per core; XLA:CPU runs each convolution on one core), and glibc's malloc is told to keep
freed memory (`tune_malloc`; otherwise every step page-faults XLA's buffers back in). Both
must happen before JAX starts its backend: `main` does that first thing (`configure_cpu`);
`run_bench` called from a process whose backend is already up runs with what it finds.
The reference gets the same malloc settings as this process (like for like; PyTorch's
allocator gains from them as well); `--torch-malloc default` leaves it glibc's defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Sequence

from progae_jax import mfu
from progae_jax.cpu import MALLOC_TUNABLES, configure_cpu, core_count

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
  peak_bytes: int | None  # per device: XLA's buffer assignment, or the device's own counter
  peak_source: str
  devices: int
  platform: str
  hlo_text: Callable[[], str] | None = None  # the compiled step's HLO text, for profiling
  flops_per_step: float | None = None  # XLA's cost analysis, all devices (progae_jax.mfu)
  device_kind: str = ""


def _state_at(config, resolution: int, fading: bool, optimizer, mesh):
  """The training state at a stage, grown from 4x4 the way training grows it."""
  from progae_jax import train_state
  from progae_jax.model import Stage
  return train_state.grow_to(train_state.init_state(config, optimizer, mesh),
                             Stage(resolution, fading), config, optimizer, mesh)


def prepare_jax_stage(model_config, resolution: int, fading: bool, batch: int, alpha: float,
                      *, compute_dtype: str = "float32", seed: int = 0,
                      ema_decay: float | None = None, microbatches: int = 1) -> JaxStage:
  """The training step at one stage, compiled and warmed up, on one fixed random batch."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from progae_jax import optim, parallel, steps, train_state
  from progae_jax.schedule import TrainConfig

  config = TrainConfig(model=model_config, compute_dtype=compute_dtype, seed=seed,
                       ema_decay=ema_decay)
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

  peak = _xla_peak_bytes(compiled)
  source = "n/a" if peak is None else "xla"
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
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  run(2)  # Warm-up: first-run allocations, thread pools.
  if stats is not None:  # Accelerators count their own peak (over the whole process).
    stats = device.memory_stats() or {}
    if stats.get("peak_bytes_in_use"):
      peak, source = int(stats["peak_bytes_in_use"]), "device"
  return JaxStage(run, compile_s, peak, source, mesh.devices.size, device.platform,
                  compiled.as_text, mfu.step_flops(compiled, mesh.devices.size),
                  device.device_kind)


def _xla_peak_bytes(compiled) -> int | None:
  """What XLA's buffer assignment needs on one device: arguments, outputs, temporaries."""
  try:
    mem = compiled.memory_analysis()
    return int(mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
               + mem.temp_size_in_bytes)
  except Exception:  # Not every backend has the analysis.
    return None


# ---------------------------------------------------------------------------------------------
# PyTorch side


def torch_command(script: str, model_config, resolution: int, batch: int, alpha: float,
                  steps: int, python: str | None = None) -> list[str]:
  """The reference's command line, for exactly this model (channels, latent, image channels)."""
  ch = ",".join(f"{r}:{c}" for r, c in model_config.channels)
  return [python or sys.executable, script, "--res", str(resolution), "--batch", str(batch),
          "--steps", str(steps), "--alpha", repr(float(alpha)),
          "--channels", str(model_config.image_channels), "--ch", ch,
          "--latent", str(model_config.latent_dim)]


# The reference of the default model lives in the repository, beside the other benchmarks.
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


def run_torch(command: list[str], timeout: float = 900.0, *, same_malloc: bool = False) -> dict:
  """Runs the reference once: its JSON line, with "max_rss_bytes" (its own peak resident
  memory, as it reports it; None if it does not).

  `same_malloc` gives it the malloc settings of `tune_malloc`, as glibc tunables.
  """
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  if same_malloc:
    env["GLIBC_TUNABLES"] = ":".join(filter(None, [env.get("GLIBC_TUNABLES"),
                                                   MALLOC_TUNABLES]))
  try:
    proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env, timeout=timeout)
  except subprocess.TimeoutExpired:
    raise RuntimeError(f"the PyTorch reference ran past {timeout:.0f} s: {' '.join(command)}")
  out = proc.stdout
  if proc.returncode:
    raise RuntimeError(f"the PyTorch reference failed (exit {proc.returncode}): "
                       f"{' '.join(command)}\n{out[-2000:]}")
  lines = [l for l in out.splitlines() if l.lstrip().startswith("{")]
  if not lines:
    raise RuntimeError(f"the PyTorch reference printed no JSON line: {out[-2000:]}")
  record = json.loads(lines[-1])
  if "img_per_s" not in record:
    raise RuntimeError(f"the PyTorch reference's JSON has no img_per_s: {lines[-1]}")
  record.setdefault("max_rss_bytes", None)
  return record


# ---------------------------------------------------------------------------------------------
# The benchmark


class OtherLoad:
  """How busy the machine was with other processes while we timed (Linux; None elsewhere).

  All cores' busy time from /proc/stat, minus this process's and its children's CPU time, as
  a fraction of the cores' capacity. On a shared machine 0.3 means that a third of every core
  went to someone else, and every images/s here is lower (PyTorch's OpenMP threads suffer most).
  """

  def __init__(self):
    self.busy = self.total = 0.0

  @staticmethod
  def _sample():
    try:
      with open("/proc/stat") as f:
        fields = [float(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
      return None
    hz = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    own = os.times()
    mine = own.user + own.system + own.children_user + own.children_system
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
  per_step = stage.run(2) / 2
  return int(min(500, max(3, round(window_s / max(per_step, 1e-6)))))


def time_stage(stage: JaxStage, *, batch: int, steps: int, rounds: int,
               torch_cmd: list[str] | None = None, torch_malloc_tuning: bool = False) -> dict:
  """`rounds` timed windows of `steps` steps, each next to one run of the reference (if any),
  in alternating order: images/s of every window, the reference's peak memory, and others'
  share of the CPU meanwhile."""
  jax_rates, torch_rates, torch_rss = [], [], []
  others = OtherLoad()
  for i in range(rounds):
    for who in (("jax", "torch") if i % 2 == 0 else ("torch", "jax")):
      if who == "jax":
        with others:
          jax_rates.append(steps * batch / stage.run(steps))
      elif torch_cmd is not None:
        with others:
          rec = run_torch(torch_cmd, same_malloc=torch_malloc_tuning)
        torch_rates.append(float(rec["img_per_s"]))
        torch_rss.append(rec["max_rss_bytes"])
  jax_ips, torch_ips = _median(jax_rates), _median(torch_rates)
  return {"jax_img_per_s": round(jax_ips, 2),
          "jax_img_per_s_runs": [round(r, 2) for r in jax_rates],
          "torch_img_per_s": None if torch_ips is None else round(torch_ips, 2),
          "torch_img_per_s_runs": [round(r, 2) for r in torch_rates],
          "torch_max_rss_bytes": max(filter(None, torch_rss), default=None),
          "ratio": None if not torch_ips else round(jax_ips / torch_ips, 3),
          "others_cpu_share": others.fraction}


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


def run_bench(resolutions: Sequence[int] = DEFAULT_RESOLUTIONS, *, batch: int = 64,
              phases: Sequence[str] = PHASES, alpha: float = 0.5, rounds: int = 3,
              window_s: float = 2.0, steps: int | None = None, vs_torch: str | None = None,
              torch_python: str | None = None, model_config=None, image_channels: int = 3,
              compute_dtype: str = "float32", torch_malloc_tuning: bool = False,
              ema_decay: float | None = None, microbatches: int = 1,
              peak_tflops: float | None = None,
              emit: Callable[[dict], None] | None = None) -> list[dict]:
  """Times every (resolution, phase); returns (and emits, one by one) a record per stage.

  `steps` fixes the steps per timed window; by default they are chosen so that a window lasts
  about `window_s` seconds. With `vs_torch` (the reference script), each round runs it once
  with the same number of steps, in alternating order with this process's window;
  `torch_malloc_tuning` gives it the malloc settings of `tune_malloc`.
  `peak_tflops` (all devices together) is what MFU is measured against; by default the
  chip's datasheet peak where `progae_jax.mfu` knows it.
  """
  from progae_jax.config import ModelConfig

  if model_config is None:
    model_config = ModelConfig(image_channels=image_channels,
                               max_resolution=max(8, max(resolutions)))
  if rounds < 1:
    raise ValueError("rounds must be at least 1")
  if vs_torch is not None:
    check_reference(vs_torch, torch_python)
  records = []
  for resolution, fading in _stages(model_config, resolutions, phases):
    a = alpha if fading else 1.0
    stage = prepare_jax_stage(model_config, resolution, fading, batch, a,
                              compute_dtype=compute_dtype, ema_decay=ema_decay,
                              microbatches=microbatches)
    n = _steps_per_window(stage, steps, window_s)
    command = (torch_command(vs_torch, model_config, resolution, batch, a, n, torch_python)
               if vs_torch else None)
    timed = time_stage(stage, batch=batch, steps=n, rounds=rounds, torch_cmd=command,
                       torch_malloc_tuning=torch_malloc_tuning)
    record = {
        "kind": "stage", "resolution": resolution, "phase": "fade" if fading else "stable",
        "alpha": a, "batch": batch, "image_channels": model_config.image_channels,
        "steps_per_window": n, "rounds": rounds, "compile_s": round(stage.compile_s, 3),
        "peak_mem_bytes": (None if stage.peak_bytes is None
                           else stage.peak_bytes * stage.devices),
        "peak_mem_bytes_per_device": stage.peak_bytes, "peak_mem_source": stage.peak_source,
        "devices": stage.devices, "platform": stage.platform, "compute_dtype": compute_dtype,
        **timed}
    record.update(mfu.utilisation(
        stage.flops_per_step, record["jax_img_per_s"] / batch,
        peak_tflops or mfu.peak_tflops(stage.device_kind, compute_dtype, stage.devices)))
    records.append(record)
    if emit is not None:
      emit(record)
  return records


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


def format_table(records: list[dict]) -> str:
  has_torch = any(r.get("torch_img_per_s") is not None for r in records)
  has_mfu = any(r.get("mfu") is not None for r in records)
  head = ["stage", "phase", "alpha", "batch", "JAX img/s", "TFLOP/s", "compile s", "peak MB"]
  head += ["MFU"] if has_mfu else []
  if has_torch:
    head += ["torch img/s", "torch RSS MB", "JAX/torch"]
  rows = []
  for r in records:
    row = [f"{r['resolution']}x{r['resolution']}", r["phase"], f"{r['alpha']:g}",
           str(r["batch"]), f"{r['jax_img_per_s']:.1f}",
           "-" if r.get("tflops") is None else f"{r['tflops']:.3g}", f"{r['compile_s']:.2f}",
           _mb(r["peak_mem_bytes"])]
    row += (["-" if r.get("mfu") is None else f"{r['mfu']:.1%}"] if has_mfu else [])
    if has_torch:
      t = r.get("torch_img_per_s")
      row += ["-" if t is None else f"{t:.1f}", _mb(r.get("torch_max_rss_bytes")),
              "-" if r.get("ratio") is None else f"{r['ratio']:.2f}x"]
    rows.append(row)
  widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
            for i, h in enumerate(head)]
  line = lambda cells: "  ".join(c.rjust(w) if i >= 2 else c.ljust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths)))
  out = [line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]
  shares = [r["others_cpu_share"] for r in records if r.get("others_cpu_share") is not None]
  if shares and max(shares) > BUSY_WARNING:
    out.append(f"warning: other processes used up to {max(shares):.0%} of the CPU while this "
               "ran; the numbers (PyTorch's most of all) are lower and noisier than on an idle "
               "machine")
  return "\n".join(out)


def _parse_resolutions(text: str) -> tuple[int, ...]:
  try:
    return tuple(int(t) for t in text.split(",") if t.strip())
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r}: expected e.g. 8,16,32") from None


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="progae bench", description=__doc__.split("\n\n")[0],
      epilog="Peak MB: the training step's memory summed over the devices (on the CPU, what "
             "XLA's buffer assignment reserves: state, batch, temporaries; on accelerators, the "
             "device's own peak counter). Torch RSS: the reference process's peak resident "
             "memory, its libraries included.")
  p.add_argument("--resolutions", type=_parse_resolutions, default=DEFAULT_RESOLUTIONS,
                 help="stages to time, comma separated (default: 8,16,32)")
  p.add_argument("--phases", default="fade,stable",
                 help="fade, stable or both (default: fade,stable)")
  p.add_argument("--batch", type=int, default=64, help="global batch size (default: 64)")
  p.add_argument("--alpha", type=float, default=0.5, help="alpha of the fade phases (0.5)")
  p.add_argument("--image-channels", type=int, default=3, help="1 grey, 3 RGB (default: 3)")
  p.add_argument("--compute-dtype", choices=("float32", "bfloat16"), default="float32")
  p.add_argument("--ema-decay", type=float, default=None,
                 help="also update an EMA of the weights every step (default: none, as the "
                      "presets train; the PyTorch reference keeps none either)")
  p.add_argument("--microbatches", type=int, default=1,
                 help="chunks each device's rows go through the model in (default 1)")
  p.add_argument("--rounds", type=int, default=3,
                 help="timed windows per stage (each followed or preceded by one reference "
                      "run with --vs-torch); the median counts (default: 3)")
  p.add_argument("--window", type=float, default=2.0,
                 help="seconds per timed window; sets the steps per window (default: 2)")
  p.add_argument("--steps", type=int, help="steps per window (overrides --window)")
  p.add_argument("--vs-torch", metavar="PATH", nargs="?", const=REFERENCE,
                 help="also time the PyTorch reference of the same model: "
                      "benchmarks/torch_reference.py, or a script at PATH that takes its "
                      "flags and prints one JSON line with img_per_s")
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
  p.add_argument("--json", metavar="PATH", help="also write the JSON lines to this file")
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


def _run(args, malloc_tuned: bool, torch_malloc_tuned: bool, emit) -> list[dict]:
  import jax

  import progae_jax
  phases = tuple(p.strip() for p in args.phases.split(",") if p.strip())
  emit({"kind": "meta", "progae_jax": progae_jax.__version__, "jax": jax.__version__,
        "backend": jax.default_backend(), "devices": len(jax.devices()),
        "cpu_cores": os.cpu_count(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "malloc_tuned": malloc_tuned, "torch_malloc_tuned": torch_malloc_tuned,
        "vs_torch": args.vs_torch and os.path.relpath(args.vs_torch),
        "ema_decay": args.ema_decay, "microbatches": args.microbatches})
  records = run_bench(args.resolutions, batch=args.batch, phases=phases, alpha=args.alpha,
                      rounds=args.rounds, window_s=args.window, steps=args.steps,
                      vs_torch=args.vs_torch, torch_python=args.torch_python,
                      image_channels=args.image_channels, compute_dtype=args.compute_dtype,
                      ema_decay=args.ema_decay, microbatches=args.microbatches,
                      peak_tflops=args.peak_tflops, torch_malloc_tuning=torch_malloc_tuned,
                      emit=emit)
  emit(summary(records, args.target if args.vs_torch else None))
  return records


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
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
  print(format_table(records))
  note = args.vs_torch and malloc_note(malloc_tuned, torch_malloc_tuned)
  if note:
    print(note)
  return 0


if __name__ == "__main__":
  sys.exit(main())
