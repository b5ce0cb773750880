"""How long `progae train` takes from SIGTERM to its exit, training the main job's model at 32x32.

Each repeat starts a real `python -m progae_jax train` process on the main preset's model
and data, with a schedule cut short (64 images a phase) up to a long 32x32 stable phase;
once it has logged 640 images at 32x32, the run gets SIGTERM and the time to the process's
exit is measured: the step in flight, the checkpoint's save (written in full), the line
saying how to resume. Prints each repeat's seconds and their median:

    python benchmarks/bench_preemption.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

SCHEDULE = {"fade_images": 64, "stable_images": 64, "eval_every_images": 10**9,
            "checkpoint_every_images": 10**9,
            "stages": {"32": {"fade_images": 64, "stable_images": 10**7, "batch_size": 64,
                              "learning_rate": 3e-4}}}
THIRTY_TWO_STABLE = 64 * 6  # 4 stable, then a fade and a stable phase for 8, 16 and 32.


def _logged(metrics: str) -> int:
  try:
    with open(metrics) as f:
      return max((json.loads(line)["images_seen"] for line in f if line.endswith("\n")),
                 default=0)
  except OSError:
    return 0


def once(directory: str) -> float:
  config = os.path.join(directory, "schedule.json")
  with open(config, "w") as f:
    json.dump(SCHEDULE, f)
  workdir = os.path.join(directory, "run")
  shutil.rmtree(workdir, ignore_errors=True)
  with open(os.path.join(directory, "log"), "w") as log:
    proc = subprocess.Popen([sys.executable, "-m", "progae_jax", "train", "--config", config,
                             "--workdir", workdir, "--quiet"], stdout=log, stderr=log)
  try:
    while _logged(os.path.join(workdir, "metrics.jsonl")) < THIRTY_TWO_STABLE + 640:
      if proc.poll() is not None:
        raise SystemExit(f"the run ended early:\n{open(os.path.join(directory, 'log')).read()}")
      time.sleep(0.05)
    t = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    status = proc.wait()
    seconds = time.perf_counter() - t
  finally:
    if proc.poll() is None:
      proc.kill()
  assert status == 128 + signal.SIGTERM, status
  return seconds


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--repeats", type=int, default=3)
  args = p.parse_args(argv)
  directory = tempfile.mkdtemp(prefix="progae_bench_preemption_")
  try:
    times = [once(directory) for _ in range(args.repeats)]
  finally:
    shutil.rmtree(directory, ignore_errors=True)
  print(json.dumps({"signal_to_exit_s": times, "median_s": statistics.median(times),
                    "load_average_1min": os.getloadavg()[0]}))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
