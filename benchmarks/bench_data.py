"""Batches per second the data pipeline delivers, per dataset and resolution, on this machine.

    python benchmarks/bench_data.py                       # both built-in datasets, batch 64
    python benchmarks/bench_data.py --datasets image_patches --batch-size 64 --data-dir /tmp/tfds

Three numbers per stage: the first epoch from disk (every record read from the array_record
files, decoded and box-filtered), the first epoch of a later stage (the stored images are
kept in memory once per process, so only the box filter is left), and later epochs, served
from the pipeline's in-memory cache (`batches(cache=None)` caches a split that fits in
CACHE_LIMIT_BYTES). The target is at least
5x what the train step consumes at the same stage (20-60 batches/s of 64 at 8..32 on a
2-core CPU). The consumer here does nothing but take batches, so the loader's background
threads have the CPU to themselves: a busy train step leaves them less.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from progae_jax import data


def _rate(it, batches: int) -> tuple[float, float]:
  """(batches per second, CPU milliseconds per batch, all threads): the second number does
  not depend on what else the machine is running."""
  start, cpu = time.perf_counter(), time.process_time()
  for _ in range(batches):
    next(it)
  return (batches / (time.perf_counter() - start),
          1e3 * (time.process_time() - cpu) / batches)


def measure(name: str, resolution: int, args) -> dict:
  """Batches/s of one stage: first epoch from disk, first epoch after a stage, later epochs."""
  spec = data.dataset_info(name, data_dir=args.data_dir)
  per_epoch = spec.num_train // args.batch_size
  timed = max(1, min(args.batches, per_epoch - 2))

  def pipeline(seed):
    it = data.batches(name, resolution=resolution, batch_size=args.batch_size, seed=seed,
                      data_dir=args.data_dir, worker_threads=args.threads,
                      prefetch=args.prefetch, shard_index=0, shard_count=1)
    next(it)  # Start the threads.
    return it

  data.clear_cache()
  it = pipeline(0)
  from_disk = _rate(it, timed)
  for _ in range(per_epoch - 1 - timed):  # Finish the first epoch: every cache is full.
    next(it)
  later = _rate(it, args.batches)
  after_stage = _rate(pipeline(1), timed)
  row = {"dataset": name, "resolution": resolution, "batch_size": args.batch_size,
         "threads": args.threads}
  for key, (rate, cpu_ms) in (("first_epoch_from_disk", from_disk),
                              ("first_epoch_next_stage", after_stage),
                              ("later_epochs", later)):
    row[key] = round(rate, 1)
    row[key + "_cpu_ms"] = round(cpu_ms, 3)
  return row


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--datasets", nargs="+", default=list(data.BUILTIN_DATASETS))
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--batches", type=int, default=200, help="batches timed per number")
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--prefetch", type=int, default=8)
  parser.add_argument("--data-dir", default=None, help="default: $TFDS_DATA_DIR or "
                      "~/tensorflow_datasets (built-in datasets are prepared there once)")
  parser.add_argument("--json", action="store_true", help="one JSON object per line")
  parser.add_argument("--train-jsonl", metavar="FILE",
                      help="JSON lines of `progae bench --json FILE`: adds the train step's "
                           "batches/s at each resolution (its slower phase) and the ratio of "
                           "the pipeline's slowest number to it")
  args = parser.parse_args()
  step_rate = {}
  if args.train_jsonl:
    with open(args.train_jsonl) as f:
      for r in map(json.loads, f):
        if r.get("kind") == "stage":
          rate = r["jax_img_per_s"] / r["batch"]
          step_rate[r["resolution"]] = min(rate, step_rate.get(r["resolution"], rate))

  print(f"# {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
  if not args.json:
    print("batches/s (CPU ms/batch)  first epoch, disk  first epoch, next stage  later epochs")
  for name in args.datasets:
    for resolution in data.dataset_info(name, data_dir=args.data_dir).resolutions:
      row = measure(name, resolution, args)
      if resolution in step_rate:
        slowest = min(row[k] for k in ("first_epoch_from_disk", "first_epoch_next_stage",
                                       "later_epochs"))
        row["train_step_batches_per_s"] = round(step_rate[resolution], 1)
        row["slowest_over_step"] = round(slowest / step_rate[resolution], 1)
      if args.json:
        print(json.dumps(row), flush=True)
      else:
        cells = [f"{row[k]:.0f} ({row[k + '_cpu_ms']:.2f})" for k in
                 ("first_epoch_from_disk", "first_epoch_next_stage", "later_epochs")]
        step = (f"   step {row['train_step_batches_per_s']:.0f}/s, pipeline >= "
                f"{row['slowest_over_step']:.1f}x" if "slowest_over_step" in row else "")
        print(f"{name:<14} {resolution:>4}    {cells[0]:>22} {cells[1]:>24} {cells[2]:>13}"
              + step, flush=True)


if __name__ == "__main__":
  main()
