"""How close the training loop comes to its own step, and where a whole run's wall time goes.

    python benchmarks/bench_loop.py                        # tiny model, digits, 4x4 -> 8x8
    python benchmarks/bench_loop.py --preset main          # the main job (image_patches, 32x32)
    python benchmarks/bench_loop.py --preset main --images-scale 0.25 --out FILE

Loop: `train_and_evaluate` itself, every phase as the config has it (the tiny setting's are
long enough to time); its rate is the median `images_per_s` of each phase's log windows in
metrics.jsonl, the phase's first window left out (it holds the phase's start). Step: the
same phase's program alone (the one the loop ran, compiled already), on a state grown to
its stage and one batch already on the devices, timed in this process after the loop.

The breakdown: the whole call's wall time, split by `RunResult.timings` (start-up, growth,
waiting for a compile, writing metrics, evaluation, checkpoints, the end), the training steps
being the rest; `pictures` run in a thread beside the loop. Compiles on the critical path:
backend compiles on the main thread plus the waits for background ones, after the first
phase's end. `--out FILE` writes the result as JSON, with command, machine, versions and date.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import threading
import time

from _provenance import provenance, write

TINY = {"dataset": "digits", "max_resolution": 8,
        "model": {"channels": {"4": 8, "8": 8}, "latent_dim": 8}, "stages": {},
        "fade_images": 8192, "stable_images": 8192, "batch_size": 32, "learning_rate": 3e-3,
        "ema_decay": None, "eval_images": 64, "log_every_steps": 20,
        "eval_every_images": 10**9, "checkpoint_every_images": 10**9}


def _config(args):
  from progae_jax import cli, config_files
  fields = config_files.preset(args.preset) if args.preset else dict(TINY)
  fields = json.loads(json.dumps(fields))
  if args.images_scale != 1.0:
    _scale(fields, args.images_scale)
  if args.compute_dtype:
    fields["compute_dtype"] = args.compute_dtype
  if args.data_dir:
    fields["data_dir"] = args.data_dir
  return cli.config_from_fields(fields)


def _scale(fields: dict, scale: float) -> None:
  """Every phase's images times `scale` (a whole number of batches, at least one)."""
  schedules = [fields] + [fields.get("default_stage") or {}] + list(
      (fields.get("stages") or {}).values())
  for s in schedules:
    batch = s.get("batch_size", fields.get("batch_size", 64))
    for key in ("fade_images", "stable_images", "anneal_images"):
      if s.get(key):
        s[key] = max(batch, int(s[key] * scale) // batch * batch)


class CompileLog:
  """Every backend compile of the process: (end, thread name, seconds)."""

  def __init__(self):
    import jax
    self.events: list[tuple[float, str, float]] = []
    jax.monitoring.register_event_duration_secs_listener(self._note)

  def _note(self, event, seconds, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
      self.events.append((time.perf_counter(), threading.current_thread().name, seconds))


def loop_rates(workdir: str) -> dict[str, float]:
  """Median images/s of each phase's log windows but its first, by phase name."""
  by_phase: dict[str, list[float]] = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for r in map(json.loads, f):
      if r["kind"] == "train" and "images_per_s" in r:
        name = f"{r['resolution']}x{r['resolution']} {r['phase']}"
        by_phase.setdefault(name, []).append(r["images_per_s"])
  return {k: statistics.median(v[1:]) for k, v in by_phase.items() if len(v) > 1}


def step_rates(config, plan, window_s: float = 0.5, rounds: int = 3) -> dict[str, float]:
  """Images/s of each phase's own train program (the loop's, compiled already) alone: a state
  grown to the phase's stage, one random batch on the devices, the median of `rounds`
  windows of about `window_s`."""
  import jax
  import numpy as np

  from progae_jax import optim, parallel, steps, train, train_state
  from progae_jax.model import stage_of
  mesh = parallel.make_mesh()
  optimizer = optim.optimizer_for(config)
  programs = steps.programs_for(config, optimizer, mesh)
  advance = lambda state: programs.advance_step(stage_of(state["params"]))(state)
  state, rates = train_state.init_state(config, optimizer, mesh), {}
  for phase in plan:
    state = train_state.move_to_phase(state, phase, config, optimizer, mesh, advance=advance)
    program = programs.train_step(phase)
    shape = (phase.batch_size, phase.resolution, phase.resolution,
             config.model.image_channels)
    batch = jax.device_put(np.random.default_rng(0).random(shape, np.float32),
                           parallel.data_sharding(mesh))
    alpha = np.float32(0.5 if phase.fading else 1.0)

    def run(n, state=state):
      t, in_flight = time.perf_counter(), collections.deque()
      for _ in range(n):  # As many steps in flight at once as in the loop.
        state, metrics = program(state, batch, alpha)
        train._bound_in_flight(in_flight, metrics["loss"])
      jax.block_until_ready(state)
      return state, time.perf_counter() - t

    state, seconds = run(3)  # Warm-up.
    n = max(3, int(window_s / max(seconds / 3, 1e-6)))
    timed = []
    for _ in range(rounds):
      state, seconds = run(n, state)
      timed.append(n * phase.batch_size / seconds)
    rates[phase.name] = statistics.median(timed)
  return rates


def critical_compile_s(timings, compiles: CompileLog) -> float:
  """Compile seconds the loop waited for between the first phase's end and the last's."""
  ends = [t for t, kind, _ in timings.events if kind == "phase_end"]
  if len(ends) < 2:
    return 0.0
  within = lambda t: ends[0] < t <= ends[-1]
  main = sum(s for t, thread, s in compiles.events
             if thread == threading.main_thread().name and within(t))
  waits = sum(s for t, kind, s in timings.events if kind == "compile_wait" and within(t))
  return main + waits


def measure(args) -> dict:
  from progae_jax import train
  from progae_jax.schedule import phases
  config = _config(args)
  compiles = CompileLog()
  with tempfile.TemporaryDirectory() as workdir:
    print(f"training ({phases(config)[-1].end:,} images) ...", flush=True)
    t = time.perf_counter()
    result = train.train_and_evaluate(config, workdir, progress=False)
    wall = time.perf_counter() - t
    rates = loop_rates(workdir)
  seconds = dict(result.timings.seconds)
  beside = {"pictures": seconds.pop("pictures")}
  steps_s = wall - sum(seconds.values())
  plan = phases(config)
  batch = {p.name: p.batch_size for p in plan}
  print("timing each phase's step alone ...", flush=True)
  alone = step_rates(config, plan)
  stages = []
  for name, loop in rates.items():
    step = alone[name]
    stages.append({"phase": name, "batch": batch[name], "loop_img_per_s": round(loop, 1),
                   "step_img_per_s": round(step, 1), "loop_over_step": round(loop / step, 3)})
  return {"kind": "loop", "preset": args.preset or "tiny", "images_scale": args.images_scale,
          "compute_dtype": config.compute_dtype, "images": result.images_seen,
          "wall_s": round(wall, 2), "breakdown_s": {k: round(v, 2) for k, v in seconds.items()},
          "train_steps_s": round(steps_s, 2), "beside_loop_s": beside,
          "compiles": len(compiles.events),
          "compile_s_total": round(sum(s for *_, s in compiles.events), 2),
          "critical_compile_s_after_first_phase": round(critical_compile_s(result.timings,
                                                                           compiles), 2),
          "final_psnr": round(result.final_eval["psnr"], 3), "stages": stages}


def format_record(r: dict) -> str:
  lines = [f"{r['preset']} ({r['images']:,} images) on {r['machine']['devices']} "
           f"{r['machine']['device_kind']}: "
           f"{r['wall_s']:.1f} s wall, {r['train_steps_s']:.1f} s of it training steps"]
  lines += [f"  {k:<13} {v:7.2f} s" for k, v in r["breakdown_s"].items()]
  lines.append(f"  pictures      {r['beside_loop_s']['pictures']:7.2f} s (beside the loop)")
  lines.append(f"  compiles: {r['compiles']} ({r['compile_s_total']:.1f} s); on the critical "
               f"path after the first phase: {r['critical_compile_s_after_first_phase']:.2f} s")
  lines.append(f"  {'phase':<14}{'loop img/s':>12}{'step img/s':>12}{'loop/step':>10}")
  lines += [f"  {s['phase']:<14}{s['loop_img_per_s']:>12,.0f}{s['step_img_per_s']:>12,.0f}"
            f"{s['loop_over_step']:>10.2f}" for s in r["stages"]]
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--preset", help="a preset (progae_jax/configs/); default: the tiny setting")
  p.add_argument("--images-scale", type=float, default=1.0,
                 help="every phase's images times this (a shorter run)")
  p.add_argument("--compute-dtype", choices=("float32", "bfloat16"))
  p.add_argument("--data-dir", help="where the datasets are prepared (default: tfds's own)")
  p.add_argument("--out", help="write the result to this JSON file (docs/ tables are rendered "
                 "from it by experiments/render_results.py)")
  args = p.parse_args(argv)
  from progae_jax import compilation, cpu
  cpu.set_up([32, 64])
  if os.environ.get("PROGAE_BENCH_CACHE"):  # A warm run: the cache of an earlier one.
    compilation.enable_cache(os.environ["PROGAE_BENCH_CACHE"])
  record = {**measure(args), **provenance()}
  print(format_record(record))
  write(args.out, record)
  return 0


if __name__ == "__main__":
  sys.exit(main())
