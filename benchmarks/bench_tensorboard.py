"""What TensorBoard writing costs the main job's training: step rate with and without it.

Runs `progae train` (the main job's config) in fresh processes, alternately with TensorBoard
event files (the default) and with `--no-tensorboard`, each stopped after --images images,
and reads the training rate back from metrics.jsonl: images seen over `train_seconds` (the
time spent in steps, compiles and growth; not evaluation or checkpoints), and the median
`images_per_s` of the logging windows of each stage (its first window, which compiles, left
out). Alternating the
two, repeat after repeat, keeps a shared machine's changing load from landing on one side.

Also times the writer alone (`Writers.train` for one step's record, no training), which is
the cost per step without the noise of a training run.

    python benchmarks/bench_tensorboard.py --images 25600 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def train_rate(workdir: str, images: int, tensorboard: bool,
               data_dir: str | None) -> tuple[float, dict[int, float]]:
  """(images / train_seconds over the run, {resolution: median window images/s})."""
  argv = [sys.executable, "-m", "progae_jax", "train", "--preset", "main", "--workdir",
          workdir, "--stop-after-images", str(images), "--quiet"]
  argv += [] if tensorboard else ["--no-tensorboard"]
  argv += ["--data-dir", data_dir] if data_dir else []
  subprocess.run(argv, check=True, capture_output=True, text=True)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [r for r in map(json.loads, f) if r["kind"] == "train"]
  windows = {}
  for r in records:
    if "images_per_s" in r:
      windows.setdefault(r["resolution"], []).append(r["images_per_s"])
  # A stage's first window holds its compile: left out of its median.
  medians = {res: statistics.median(v[1:] or v) for res, v in windows.items()}
  return records[-1]["images_seen"] / records[-1]["train_seconds"], medians


def writer_cost(records: int = 5000) -> float:
  """Microseconds per step's record written by `Writers.train` (TensorBoard only)."""
  from progae_jax import writers
  from progae_jax.schedule import TrainConfig
  with tempfile.TemporaryDirectory() as workdir:
    out = writers.open_writers(workdir, TrainConfig(), resume_at=0)
    t0 = time.perf_counter()
    for i in range(records):
      out.train({"images_seen": 64 * (i + 1), "loss": 0.01, "psnr": 20.0, "grad_norm": 0.1,
                 "alpha": 1.0, "resolution": 32, "images_per_s": 1000.0}, 3e-4)
    out.close()  # Includes writing the queue out to disk.
    return (time.perf_counter() - t0) / records * 1e6


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--images", type=int, default=25_600,
                      help="images per run (25,600: the main job's 4x4 and 8x8 fade)")
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--data-dir")
  args = parser.parse_args()
  print(json.dumps({"writer_us_per_step": round(writer_cost(), 1)}), flush=True)
  rates = {True: [], False: []}
  with tempfile.TemporaryDirectory() as base:
    for r in range(args.repeats):
      for tensorboard in (True, False):
        workdir = os.path.join(base, f"{r}_{tensorboard}")
        rate, windows = train_rate(workdir, args.images, tensorboard, args.data_dir)
        rates[tensorboard].append(rate)
        print(json.dumps({"repeat": r, "tensorboard": tensorboard, "img_per_s": round(rate, 1),
                          "window_img_per_s_by_resolution": {
                              k: round(v, 1) for k, v in windows.items()}}), flush=True)
  on, off = statistics.median(rates[True]), statistics.median(rates[False])
  print(json.dumps({"images": args.images, "median_img_per_s_tensorboard": round(on, 1),
                    "median_img_per_s_without": round(off, 1),
                    "ratio": round(on / off, 3)}))


if __name__ == "__main__":
  main()
