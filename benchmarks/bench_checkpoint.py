"""How long a checkpoint blocks the training loop, how long it takes to write, and to restore.

For the main job's model (`progae train`'s default preset: RGB, 4x4 -> 32x32, no EMA), at
each stage of its growth, the real train state is built on the device (init + growth, as the
training loop does), then saved with `progae_jax.checkpoint.Checkpointer` exactly as
`train_and_evaluate` saves it (state, JSON metadata, a grain iterator's position):

  * blocking:     the `save()` call, asynchronous: what the training loop waits for;
  * written:      from `save()` until the checkpoint is committed on disk (`wait()`);
  * synchronous:  the same save with asynchronous checkpointing off, for comparison;
  * restore:      `progae_jax.checkpoint.restore(path, step)`, the public call: reads the
                  metadata, builds the abstract target with `jax.eval_shape`, reads the arrays;
  * target:       of which building the abstract target (`train_state.abstract_state`, traced
                  through every growth up to the stage).

Each is the median of --repeats runs. Writes a JSON file and a figure:

    python benchmarks/bench_checkpoint.py --out checkpoint_timing.png
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
import types

import grain
import jax

from progae_jax import checkpoint, cli, count_params, data, optim, parallel, stage_of, train_state
from progae_jax.schedule import phases


def main_job_config():
  """The TrainConfig of `progae train` with no options (the image_patches dataset is not
  needed for timing checkpoints, so only its channel count is given)."""
  real = data.dataset_info
  data.dataset_info = lambda name, **kw: types.SimpleNamespace(channels=3)
  try:
    return cli.train_config([])
  finally:
    data.dataset_info = real


def median_seconds(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def bench(repeats: int, directory: str) -> dict:
  load_before = os.getloadavg()[0]
  config = main_job_config()
  mesh = parallel.make_mesh()
  plan = phases(config)
  optimizer = optim.make_optimizer(plan[0].learning_rate)
  iterator = iter(grain.MapDataset.range(1000).batch(10).to_iter_dataset())
  next(iterator)
  state = train_state.init_state(config, optimizer, mesh)
  rows = []
  for phase in plan:
    state = train_state.move_to_phase(state, phase, config, optimizer, mesh)
    jax.block_until_ready(state)
    meta = train_state.checkpoint_meta(config, state, phase)
    nbytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(state))
    row = {"phase": phase.name, "params": count_params(state["params"]),
           "state_mib": nbytes / 2**20}
    for asynchronous in (True, False):
      path = os.path.join(directory, f"{phase.index}_{'async' if asynchronous else 'sync'}")
      ckpt = checkpoint.Checkpointer(path, keep=repeats + 1, asynchronous=asynchronous)
      blocking, written = [], []
      for step in range(1, repeats + 1):
        t = time.perf_counter()
        ckpt.save(step * 64, state, meta, iterator)
        blocking.append(time.perf_counter() - t)
        ckpt.wait()
        written.append(time.perf_counter() - t)
      ckpt.close()
      if asynchronous:
        row["save_blocking_s"] = statistics.median(blocking)
        row["save_written_s"] = statistics.median(written)
        row["restore_s"] = median_seconds(lambda: jax.block_until_ready(
            checkpoint.restore(path, 64, mesh=mesh)[0]), repeats)
        restored, _ = checkpoint.restore(path, 64, mesh=mesh)
        assert stage_of(restored["params"]) == stage_of(state["params"])
        stage = stage_of(state["params"])
        row["restore_target_s"] = median_seconds(
            lambda: train_state.abstract_state(config, stage, optimizer, mesh), repeats)
      else:
        row["save_sync_s"] = statistics.median(written)
      shutil.rmtree(path)
    rows.append(row)
    print(json.dumps(row))
  return {"rows": rows, "repeats": repeats, "machine": {
      "processor": _cpu_model(), "cpus": os.cpu_count(), "disk": directory,
      # Other work on the machine inflates every number; a load above the core count did.
      "load_average_1min": [load_before, os.getloadavg()[0]],
      "jax_devices": [str(d) for d in jax.devices()], "jax": jax.__version__,
      "python": platform.python_version()}}


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def figure(result: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  rows = result["rows"]
  series = [("save_blocking_s", "save, blocking the loop (async)"),
            ("save_written_s", "save, until written (async)"),
            ("save_sync_s", "save, synchronous"),
            ("restore_s", "restore (progae_jax.checkpoint.restore)"),
            ("restore_target_s", "  of which: abstract target (eval_shape)")]
  x = np.arange(len(rows))
  width = 0.16
  fig, ax = plt.subplots(figsize=(11, 4.5))
  for i, (key, label) in enumerate(series):
    values = [r[key] * 1000 for r in rows]
    bars = ax.bar(x + (i - 2) * width, values, width, label=label)
    ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=1)
  ax.set_xticks(x, [f"{r['phase']}\n{r['params'] / 1e6:.2f}M params\n"
                    f"{r['state_mib']:.1f} MiB state" for r in rows], fontsize=8)
  ax.set_ylabel("milliseconds (median)")
  m = result["machine"]
  ax.set_title(f"Checkpoints of the main job's model, by stage: {m['cpus']} CPU cores "
               f"({m['processor']}), jax on {m['jax_devices'][0]}, local disk, median of "
               f"{result['repeats']}", fontsize=9)
  ax.set_ylim(top=ax.get_ylim()[1] * 1.3)
  ax.legend(fontsize=8, ncol=3, loc="upper center")
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--dir", help="where to write the checkpoints (default: a temporary folder)")
  p.add_argument("--out", default="checkpoint_timing.png", help="the figure (PNG)")
  p.add_argument("--json", help="the numbers (default: the figure's name with .json)")
  args = p.parse_args(argv)
  directory = args.dir or tempfile.mkdtemp(prefix="progae_bench_ckpt_")
  result = bench(args.repeats, directory)
  figure(result, args.out)
  with open(args.json or os.path.splitext(args.out)[0] + ".json", "w") as f:
    json.dump(result, f, indent=1)
  print(f"wrote {args.out}")
  if not args.dir:
    shutil.rmtree(directory, ignore_errors=True)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
