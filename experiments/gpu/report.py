"""The GPU check's tables, from what experiments/gpu_check.sh left in its output folder.

    python experiments/gpu/report.py --out OUT --timings WORK/timings.tsv [--cpu-sizes 1]

Reads env.txt, smoke.txt, large.jsonl and train_main.jsonl; writes OUT/gpu_check.md:

    environment        card, driver, versions
    smoke tests        pytest's last line
    large preset       per stage: batch, JAX images/s, TFLOP/s, MFU (measured matrix rate and
                       datasheet), compile s, peak memory; each PyTorch mode's images/s and
                       JAX / it; JAX / the first mode with JAX first and with JAX after
    largest batch      at 128x128: the estimate from XLA's buffers, what was run
    main job           wall time, training images/s, final held-out PSNR / SSIM
    timings            every step's wall time against its limit
"""

from __future__ import annotations

import argparse
import json
import os
import statistics


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


def _pct(x) -> str:
  return "-" if x is None else f"{x:.1%}"


def _gib(b) -> str:
  return "-" if b is None else f"{b / 2**30:.1f}"


def _num(x, fmt: str = ",.0f") -> str:
  return "-" if x is None else format(x, fmt)


MODES = ("eager_bf16", "compile_bf16", "eager_fp32")


def large_table(records: list[dict]) -> list[str]:
  """One row per stage timed: JAX's numbers, then each PyTorch mode's images/s and ratio."""
  stages = [r for r in records if r.get("kind") == "stage"]
  if not stages:
    return ["(no results for the large preset: see log.txt)"]
  modes = [m for m in MODES if any(m in (r.get("torch") or {}) for r in stages)]
  head = ["stage", "batch", "JAX img/s", "TFLOP/s", "MFU (measured peak)", "MFU (datasheet)",
          "compile s", "peak GiB"]
  for m in modes:
    head += [f"{m} img/s", f"JAX / {m}"]
  head += ["JAX / first mode, JAX first / after"] if modes else []
  rows = []
  for r in sorted(stages, key=lambda r: (-r["resolution"], "torch" not in r)):
    mfu_sheet = r.get("mfu_datasheet", r.get("mfu") if r.get("peak_source") == "datasheet"
                      else None)
    row = [f"{r['resolution']}x{r['resolution']} {r['phase']}", str(r["batch"]),
           _num(r["jax_img_per_s"]), _num(r.get("tflops"), ".3g"),
           _pct(r.get("mfu") if r.get("peak_source") == "measured" else None), _pct(mfu_sheet),
           _num(r.get("compile_s"), ".1f"), _gib(r.get("peak_mem_bytes"))]
    for m in modes:
      t = (r.get("torch") or {}).get(m) or {}
      if "error" in t:  # The worker failed (its error is in large.jsonl).
        row += ["failed", "-"]
        continue
      row += [_num(t.get("img_per_s")), "-" if not t else f"{t['ratio']:.2f}"]
    if modes:
      o = r.get("ratio_by_order") or {}
      row.append(f"{o.get('jax_first', '-')} / {o.get('jax_after', '-')}" if o else "-")
    rows.append(row)
  peaks = [r for r in records if r.get("kind") == "peak"] + [
      {"tflops": r["peak_tflops"]} for r in stages if r.get("peak_source") == "measured"]
  out = ["FLOPs from XLA's cost analysis of the compiled step; MFU against the device's own "
         "bf16 matrix rate (a large matrix product timed first"
         + (f": {peaks[0]['tflops']:,.4g} TFLOP/s" if peaks else "")
         + ") and against the datasheet's dense peak (progae_jax/mfu.py). Peak memory: the "
         "device's counter in the JAX process (a worker per stage). PyTorch: "
         "benchmarks/torch_reference.py, each mode a worker beside JAX's, rounds in rotating "
         "order.", ""]
  return out + _table(head, rows)


def max_batch_lines(records: list[dict]) -> list[str]:
  found = [r for r in records if r.get("kind") == "max_batch"]
  if not found:
    return ["(not run)"]
  r = found[-1]
  if r.get("estimate") is None:
    return [f"not estimated: {r.get('why')}"]
  tried = ", ".join(f"{t['batch']} ({'ran' if t['ran'] else 'failed'})" for t in r["tried"])
  return [f"{r['resolution']}x{r['resolution']} stable: estimated {r['estimate']:,} from XLA's "
          f"buffers and {_gib(r['limit_bytes_per_device'])} GiB per device; tried {tried}; "
          f"largest that ran: {r.get('largest_that_ran', '-')}"]


def _result(rc: str) -> str:
  names = {"0": "ok", "skipped": "skipped, over budget", "missing": "did not run",
           "not asked": "not asked for (ONLY)"}
  return names.get(rc, f"exit {rc}")


def train_table(out: str, timings: dict) -> list[str]:
  recs = _jsonl(os.path.join(out, "train_main.jsonl"))
  rates = [r["images_per_s"] for r in recs if r.get("kind") == "train" and "images_per_s" in r]
  evals = [r for r in recs if r.get("kind") == "eval"]
  last = evals[-1] if evals else {}
  wall, rc = timings.get("train", ("-", "missing"))
  nan = float("nan")
  row = [wall if rc == "0" else f"{wall} ({_result(rc)})",
         f"{statistics.median(rates):,.0f}" if rates else "-",
         f"{last.get('psnr', nan):.2f}", f"{last.get('ssim', nan):.3f}",
         f"{last.get('images_seen', 0):,}"]
  return _table(["wall s (process, compiles included)", "train images/s (median of log "
                 "windows)", "final held-out PSNR dB", "SSIM", "images"], [row])


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
  return (_table(["step", "limit s", "wall s", "result"], rows)
          + ["", f"Steps total: {total:.0f} s (smoke and data ran in the background)"])


def report(out: str, timings_path: str, cpu_sizes: bool) -> str:
  large = _jsonl(os.path.join(out, "large.jsonl"))
  smoke = _read(os.path.join(out, "smoke.txt")).splitlines()
  parts = ["# GPU check", ""]
  if cpu_sizes:
    parts += ["Run with ALLOW_CPU=1: the CPU sizes of experiments/gpu_check.sh, not the GPU's.",
              ""]
  parts += ["```", _read(os.path.join(out, "env.txt")), "```", "",
            "## Quick tests (experiments/gpu/smoke_tests.txt)", "",
            smoke[-1] if smoke else "(did not run)", "",
            "## The large preset's training step (progae bench --preset large)", ""]
  parts += large_table(large) + ["", "## Largest batch", ""] + max_batch_lines(large)
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
