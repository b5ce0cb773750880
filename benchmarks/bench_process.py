"""The main job as a user runs it: whole `progae train` processes, cold, warm and deterministic.

    python benchmarks/bench_process.py                       # the main job (--preset main)
    python benchmarks/bench_process.py --out FILE            # ... and write the result to FILE
    python benchmarks/bench_process.py --preset digits -- --stable-images 640

Four processes, one after the other, each timed from its start to its exit:

    cold            an empty compilation cache: every program is compiled
    warm            the same command again, on the cache the cold run filled
    deterministic   twice, with --deterministic (XLA's deterministic GPU kernels; on a CPU it
                    changes nothing): the first fills the cache for its flags, the second is warm

and whether the two deterministic runs ended with the same bits (every array of their last
checkpoints) and the same held-out PSNR. Arguments after `--` go to every `progae train`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

from _provenance import provenance, write


def train_process(workdir: str, cache: str, preset: str, extra: list[str]) -> dict:
  """One `progae train` process: its wall time and the final PSNR it printed."""
  env = dict(os.environ, PROGAE_COMPILE_CACHE=cache)
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  command = [sys.executable, "-m", "progae_jax.cli", "train", "--preset", preset,
             "--workdir", workdir, "--quiet", *extra]
  t = time.perf_counter()
  out = subprocess.run(command, env=env, capture_output=True, text=True)
  wall = time.perf_counter() - t
  if out.returncode != 0:
    raise RuntimeError(f"{' '.join(command)} failed ({out.returncode}): {out.stderr[-1500:]}")
  lines = out.stdout.splitlines()
  psnr = next((float(line.split()[3]) for line in lines
               if line.startswith("final held-out PSNR:")), None)
  devices = next((line.removeprefix("training on ").split(";")[0] for line in lines
                  if line.startswith("training on ")), None)
  return {"wall_s": round(wall, 2), "final_psnr": psnr, "trained_on": devices}


def same_bits(workdir_a: str, workdir_b: str) -> bool:
  """Whether the last checkpoints of two runs hold the same arrays, bit for bit."""
  import jax
  import numpy as np

  from progae_jax import checkpoint
  a, _ = checkpoint.restore(workdir_a)
  b, _ = checkpoint.restore(workdir_b)
  leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  return len(leaves_a) == len(leaves_b) and all(
      np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(leaves_a, leaves_b))


def measure(preset: str, extra: list[str]) -> dict:
  with tempfile.TemporaryDirectory() as root:
    cache, run = os.path.join(root, "cache"), lambda name, flags=(): train_process(
        os.path.join(root, name), cache, preset, [*extra, *flags])
    result = {"cold": run("cold"), "warm": run("warm"),
              "deterministic": run("det_a", ["--deterministic"]),
              "deterministic_warm": run("det_b", ["--deterministic"])}
    result["deterministic_same_bits"] = same_bits(os.path.join(root, "det_a"),
                                                  os.path.join(root, "det_b"))
    result["cold_warm_same_bits"] = same_bits(os.path.join(root, "cold"),
                                              os.path.join(root, "warm"))
  return result


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--preset", default="main")
  p.add_argument("--out", help="write the result to this JSON file (docs/ tables are rendered "
                 "from it by experiments/render_results.py)")
  p.add_argument("train_args", nargs="*", metavar="-- PROGAE_TRAIN_ARGS",
                 help="after --: arguments for every progae train")
  args = p.parse_args(argv)
  from progae_jax import cpu
  cpu.set_up([64])  # This process restores the runs' checkpoints as progae train runs them.
  record = {"kind": "process", "preset": args.preset, "train_args": args.train_args,
            **measure(args.preset, args.train_args), **provenance()}
  for name in ("cold", "warm", "deterministic", "deterministic_warm"):
    r = record[name]
    print(f"{name:<19} {r['wall_s']:7.1f} s   final PSNR {r['final_psnr']}")
  print(f"deterministic runs, same bits: {record['deterministic_same_bits']}; "
        f"cold and warm, same bits: {record['cold_warm_same_bits']}")
  write(args.out, record)
  return 0


if __name__ == "__main__":
  sys.exit(main())
