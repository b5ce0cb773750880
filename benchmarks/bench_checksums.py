"""What the per-array checksums cost a checkpoint of the main job's model at 32x32.

The main job's state at its last stage (32x32 stable, as `progae train` with no options
builds it) is saved and restored with `progae_jax.checkpoint`, alternately with the
checksums computed (as always) and with them replaced by nothing, so both are measured side
by side under the same load. Prints the medians (milliseconds) and the checksums alone:

    python benchmarks/bench_checksums.py --repeats 9
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time

import jax

from progae_jax import checkpoint, optim, parallel, train_state
from progae_jax.schedule import phases

from bench_checkpoint import main_job_config


def _state(config, mesh):
  plan = phases(config)
  optimizer = optim.make_optimizer(plan[0].learning_rate)
  state = train_state.init_state(config, optimizer, mesh)
  state = train_state.move_to_phase(state, plan[-1], config, optimizer, mesh)
  return jax.block_until_ready(state), train_state.checkpoint_meta(config, state, plan[-1])


def bench(repeats: int, directory: str) -> dict:
  config, mesh = main_job_config(), parallel.make_mesh()
  state, meta = _state(config, mesh)
  real = checkpoint.checksums
  times = {k: [] for k in ("checksums", "save_with", "save_without", "restore_with",
                           "restore_without")}
  for i in range(repeats):
    t = time.perf_counter()
    real(state)
    times["checksums"].append(time.perf_counter() - t)
    for variant in ("with", "without"):
      checkpoint.checksums = real if variant == "with" else (lambda s: None)
      path = os.path.join(directory, f"{variant}_{i}")
      ckpt = checkpoint.Checkpointer(path)
      t = time.perf_counter()
      ckpt.save(64, state, meta)
      times[f"save_{variant}"].append(time.perf_counter() - t)  # What the loop waits for.
      ckpt.close()
      checkpoint.checksums = real  # Restore verifies only what the metadata holds.
      t = time.perf_counter()
      jax.block_until_ready(checkpoint.restore(path, mesh=mesh)[0])
      times[f"restore_{variant}"].append(time.perf_counter() - t)
      shutil.rmtree(path)
  leaves = jax.tree_util.tree_leaves(state)
  return {"state_mib": sum(x.nbytes for x in leaves) / 2**20, "arrays": len(leaves),
          "repeats": repeats, "load_average_1min": os.getloadavg()[0],
          **{f"{k}_ms": 1000 * statistics.median(v) for k, v in times.items()}}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--repeats", type=int, default=9)
  args = p.parse_args(argv)
  directory = tempfile.mkdtemp(prefix="progae_bench_checksums_")
  try:
    print(json.dumps(bench(args.repeats, directory), indent=1))
  finally:
    shutil.rmtree(directory, ignore_errors=True)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
