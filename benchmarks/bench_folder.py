"""How fast a folder of JPEGs is prepared (decoded, cropped, resized, written as a tfds dataset).

    python benchmarks/bench_folder.py                                  # 10,000 JPEGs, 256-1024 px
    python benchmarks/bench_folder.py --min-size 256 --max-size 256    # 10,000 JPEGs of 256 px
    python benchmarks/bench_folder.py --dir /tmp/jpegs                 # generate once, reuse

Generates the folder (crops of scikit-image's photographs, quality 90, sides drawn uniformly
from [--min-size, --max-size]) unless --dir already holds it, then prepares it at
--resolution into a fresh data_dir and prints files per second and MB of JPEG per second, with
the CPU milliseconds per file (all threads), which do not depend on what else the machine runs.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import tempfile
import time

import numpy as np

from progae_jax.cpu import core_count


def _photos() -> list[np.ndarray]:
  """Three photographs enlarged to 1024 px on the short side: crops up to 1024 px fit."""
  import skimage.data
  from PIL import Image
  out = []
  for photo in (skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee()):
    h, w, _ = photo.shape
    scale = 1024 / min(h, w)
    size = (int(np.ceil(w * scale)), int(np.ceil(h * scale)))
    out.append(np.asarray(Image.fromarray(photo).resize(size, Image.Resampling.BICUBIC)))
  return out


def _write(args) -> int:
  """One JPEG: a crop of (h, w) at a random place; returns its size in bytes."""
  from PIL import Image
  path, photo, h, w, seed = args
  rng = np.random.default_rng(seed)
  y, x = rng.integers(photo.shape[0] - h + 1), rng.integers(photo.shape[1] - w + 1)
  Image.fromarray(photo[y:y + h, x:x + w]).save(path, quality=90)
  return os.path.getsize(path)


def generate(root: str, count: int, low: int, high: int) -> None:
  """`count` JPEGs in 100 subfolders, unless `root` already holds as many."""
  existing = sum(len(f) for _, _, f in os.walk(root)) if os.path.isdir(root) else 0
  if existing >= count:
    print(f"reusing the {existing:,} files in {root}")
    return
  photos = _photos()
  rng = np.random.default_rng(0)
  jobs = []
  for i in range(count):
    sub = os.path.join(root, f"{i % 100:02d}")
    os.makedirs(sub, exist_ok=True)
    h, w = rng.integers(low, high + 1, size=2)
    jobs.append((os.path.join(sub, f"{i:05d}.jpg"), photos[i % 3], int(h), int(w), i))
  start = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(core_count()) as pool:
    total = sum(pool.map(_write, jobs, chunksize=64))
  print(f"generated {count:,} JPEGs ({total / 1e6:,.0f} MB) in {root} in "
        f"{time.perf_counter() - start:.0f} s")


def measure(root: str, data_dir: str, resolution: int) -> dict:
  from progae_jax.data import folder
  files = folder.scan(root)
  megabytes = sum(e.size for e in files) / 1e6
  start, cpu = time.perf_counter(), time.process_time()
  prepared = folder.prepare(root, data_dir, resolution, 3)
  seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
  print(prepared.report)
  return {"files": len(files), "megabytes": megabytes, "seconds": seconds,
          "files_per_s": len(files) / seconds, "mb_per_s": megabytes / seconds,
          "cpu_ms_per_file": 1e3 * cpu / len(files), "load_average": os.getloadavg()[0]}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--count", type=int, default=10_000)
  parser.add_argument("--min-size", type=int, default=256)
  parser.add_argument("--max-size", type=int, default=1024)
  parser.add_argument("--resolution", type=int, default=64)
  parser.add_argument("--dir", help="where the JPEGs are (generated there if missing, kept "
                      "after); default: a temporary folder, deleted after")
  args = parser.parse_args()
  scratch = tempfile.mkdtemp(prefix="bench_folder_")
  root = os.path.abspath(args.dir or os.path.join(scratch, "jpegs"))
  try:
    generate(root, args.count, args.min_size, args.max_size)
    row = measure(root, os.path.join(scratch, "tfds"), args.resolution)
    print(f"{row['files']:,} JPEGs ({args.min_size}-{args.max_size} px, "
          f"{row['megabytes']:,.0f} MB) -> {args.resolution}x{args.resolution}: "
          f"{row['files_per_s']:,.0f} images/s, {row['mb_per_s']:,.1f} MB/s, "
          f"{row['cpu_ms_per_file']:.2f} CPU ms per image, {core_count()} cores "
          f"(load average {row['load_average']:.1f})")
  finally:
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
  main()
