"""The GPU check's tables, from what experiments/gpu_check.sh left in its output folder.

    python experiments/gpu/report.py --out OUT --timings WORK/timings.tsv [--cpu-sizes 1]

Reads env.txt, smoke.txt, bench.jsonl and train_<dtype>.jsonl; writes OUT/gpu_check.md:

    environment        card, driver, versions
    smoke tests        pytest's last line
    step speed         images/s per stage (rows) and batch x dtype (columns); bf16 / float32
    FLOPs and MFU      TFLOP/s and MFU per stage, XLA's FLOP count of the compiled step
    PyTorch            JAX / PyTorch eager, where the reference ran
    main job           wall time, training images/s, final held-out PSNR / SSIM, per dtype
    timings            every step's wall time against its limit
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

DTYPES = ("float32", "bfloat16")


def _read(path: str) -> str:
  return open(path).read().strip() if os.path.exists(path) else ""


def _jsonl(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip().startswith("{")]


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
  return (["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
          + ["| " + " | ".join(r) + " |" for r in rows])


def _stages(bench: list[dict]) -> tuple[list[tuple], dict]:
  """Stage records by (resolution, phase, batch, dtype); the stage keys in training order."""
  by = {}
  for r in bench:
    if r.get("kind") == "stage" and r.get("torch_img_per_s") is None:
      by[(r["resolution"], r["phase"], r["batch"], r.get("compute_dtype", "float32"))] = r
  keys = sorted({(k[0], k[1]) for k in by}, key=lambda k: (k[0], k[1] == "stable"))
  return keys, by


def speed_tables(bench: list[dict]) -> list[str]:
  keys, by = _stages(bench)
  if not keys:
    return ["(no benchmark results: see log.txt)"]
  cols = sorted({(k[2], k[3]) for k in by}, key=lambda c: (c[0], DTYPES.index(c[1])))
  batches = sorted({c[0] for c in cols})
  fmt = lambda r, f: "-" if r is None or r.get(f) is None else r[f]
  rows, flops = [], []
  for res, phase in keys:
    cells = [f"{fmt(by.get((res, phase) + c), 'jax_img_per_s'):,.0f}"
             if by.get((res, phase) + c) else "-" for c in cols]
    ratios = []
    for b in batches:
      f32, bf = by.get((res, phase, b, "float32")), by.get((res, phase, b, "bfloat16"))
      ratios.append(f"{bf['jax_img_per_s'] / f32['jax_img_per_s']:.2f}" if f32 and bf else "-")
    rows.append([f"{res}x{res} {phase}", *cells, *ratios])
    for c in cols:
      r = by.get((res, phase) + c)
      if r and r.get("tflops") is not None:
        mfu = "-" if r.get("mfu") is None else f"{r['mfu']:.1%}"
        flops.append([f"{res}x{res} {phase}", str(c[0]), c[1],
                      f"{r['flops_per_step'] / 1e9:.2f}", f"{r['tflops']:.3g}", mfu])
  head = (["stage"] + [f"b{b} {dt}" for b, dt in cols]
          + [f"b{b} bf16/f32" for b in batches])
  out = ["Training step, images/s (median of the timed windows; data loading not included):",
         ""] + _table(head, rows)
  if flops:
    out += ["", "FLOPs per step from XLA's cost analysis of the compiled step; MFU against "
            "the datasheet's dense peak (progae_jax/mfu.py):", ""]
    out += _table(["stage", "batch", "dtype", "GFLOP/step", "TFLOP/s", "MFU"], flops)
  return out


def torch_table(bench: list[dict]) -> list[str]:
  rows = [[f"{r['resolution']}x{r['resolution']} {r['phase']}", str(r["batch"]),
           f"{r['jax_img_per_s']:,.0f}", f"{r['torch_img_per_s']:,.0f}", f"{r['ratio']:.2f}"]
          for r in bench if r.get("kind") == "stage" and r.get("torch_img_per_s") is not None]
  if not rows:
    return ["(no PyTorch comparison ran)"]
  return _table(["stage", "batch", "JAX img/s", "PyTorch eager img/s", "JAX / PyTorch"], rows)


def _result(rc: str) -> str:
  names = {"0": "ok", "skipped": "skipped, over budget", "missing": "did not run"}
  return names.get(rc, f"exit {rc}")


def train_table(out: str, timings: dict) -> list[str]:
  rows = []
  for dt in DTYPES:
    recs = _jsonl(os.path.join(out, f"train_{dt}.jsonl"))
    rates = [r["images_per_s"] for r in recs if r.get("kind") == "train" and "images_per_s" in r]
    evals = [r for r in recs if r.get("kind") == "eval"]
    last = evals[-1] if evals else {}
    wall, rc = timings.get(f"train_{dt}", ("-", "missing"))
    nan = float("nan")
    rows.append([dt, wall if rc == "0" else f"{wall} ({_result(rc)})",
                 f"{statistics.median(rates):,.0f}" if rates else "-",
                 f"{last.get('psnr', nan):.2f}", f"{last.get('ssim', nan):.3f}",
                 f"{last.get('images_seen', 0):,}"])
  return _table(["compute dtype", "wall s (process, compiles included)",
                 "train images/s (median of log windows)", "final held-out PSNR dB", "SSIM",
                 "images"], rows)


def read_timings(path: str) -> dict:
  """{step: (wall s, exit status)} from the script's tab-separated timings."""
  out = {}
  for line in _read(path).splitlines():
    name, _, wall, rc = line.split("\t")
    out[name] = (wall, rc)
  return out


def timings_table(path: str) -> list[str]:
  rows = [line.split("\t") for line in _read(path).splitlines()]
  total = sum(float(r[2]) for r in rows if r[2] != "-")
  rows = [[n, lim, w, _result(rc)] for n, lim, w, rc in rows]
  return _table(["step", "limit s", "wall s", "result"], rows) + ["", f"Steps total: {total:.0f} s"]


def report(out: str, timings_path: str, cpu_sizes: bool) -> str:
  bench = _jsonl(os.path.join(out, "bench.jsonl"))
  smoke = _read(os.path.join(out, "smoke.txt")).splitlines()
  parts = ["# GPU check", ""]
  if cpu_sizes:
    parts += ["Run with ALLOW_CPU=1: the CPU sizes of experiments/gpu_check.sh, not the GPU's.",
              ""]
  parts += ["```", _read(os.path.join(out, "env.txt")), "```", "",
            "## Quick tests (experiments/gpu/smoke_tests.txt)", "",
            smoke[-1] if smoke else "(did not run)", "", "## Training step", ""]
  parts += speed_tables(bench) + ["", "## PyTorch eager beside it", ""] + torch_table(bench)
  parts += ["", "## Main job (progae train --preset main)", ""]
  parts += train_table(out, read_timings(timings_path))
  parts += ["", "## Timings", ""] + timings_table(timings_path) + [""]
  return "\n".join(parts)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", required=True)
  p.add_argument("--timings", required=True)
  p.add_argument("--cpu-sizes", default="0")
  args = p.parse_args(argv)
  text = report(args.out, args.timings, args.cpu_sizes == "1")
  with open(os.path.join(args.out, "gpu_check.md"), "w") as f:
    f.write(text)
  print(text)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
