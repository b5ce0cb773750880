"""The tables of results in README.md, docs/ and benchmarks/, written from the result files.

A measured number is never typed into a page: a documented command writes it to a result
file (JSON, or JSONL: one record a line) under experiments/results/ or benchmarks/, with the
command line, the machine, the versions and the date inside, and this script writes the
table between two markers of the page:

    <!-- results: progressive_vs_direct -->
    | ... the generated table, then a line naming its file, command, machine and date ... |
    <!-- /results: progressive_vs_direct -->

    python experiments/render_results.py           # rewrites every table of every page
    python experiments/render_results.py --check   # says which tables differ; exits 1 if any

tests/test_render_results.py fails when a page's table differs from what this script writes
today, so a table edited by hand, or a result file changed without rendering, is caught.

Adding a table (the whole recipe):

    @table("my_experiment", "experiments/results/my_experiment/result.json")
    def my_experiment(result: dict) -> list[str]:
      return markdown_table(["variant", "PSNR"],
                            [[name, fmt(s["psnr"])] for name, s in result["summary"].items()])

then put `<!-- results: my_experiment -->` and `<!-- /results: my_experiment -->` in a page
and run the script. The function gets the parsed file (a dict for .json, a list of records
for .jsonl) and returns the table's lines; the source line under it is added here. A name is
rendered wherever its markers are, but each table should be in one page only (one place per
fact). A result file must say where it came from (`command`, `machine`, `versions`, `date`
at its top level, or in the first record with "kind": "meta" of a .jsonl): the test checks.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import re
import sys
from typing import Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROVENANCE = ("command", "machine", "versions", "date")
START, END = "<!-- results: {} -->", "<!-- /results: {} -->"
_MARKER = re.compile(r"<!-- results: ([\w.-]+) -->\n(.*?)<!-- /results: \1 -->", re.S)


@dataclasses.dataclass(frozen=True)
class Table:
  name: str
  source: str  # A result file, relative to the repository.
  render: Callable[[object], list[str]]


TABLES: dict[str, Table] = {}


def table(name: str, source: str):
  """Registers `fn(parsed result file) -> the table's markdown lines` as the table `name`."""
  def register(fn):
    if name in TABLES:
      raise ValueError(f"two tables are named {name!r}")
    TABLES[name] = Table(name, source, fn)
    return fn
  return register


# ---------------------------------------------------------------------------------------------
# Reading result files and writing markdown


def load(source: str):
  """A result file: the JSON object, or the list of a JSONL file's records."""
  with open(os.path.join(REPO, source), encoding="utf-8") as f:
    if source.endswith(".jsonl"):
      return [json.loads(line) for line in f if line.strip()]
    return json.load(f)


def provenance(result) -> dict:
  """The file's command, machine, versions and date (those it has)."""
  if isinstance(result, list):
    result = next((r for r in result if r.get("kind") == "meta"), {})
  return {key: result[key] for key in PROVENANCE if key in result}


def _machine_text(machine) -> str:
  if isinstance(machine, list):
    return "; ".join(_machine_text(m) for m in machine)
  if not isinstance(machine, dict):
    return str(machine)
  kind = machine.get("device_kind") or machine.get("platform", "")
  devices = machine.get("devices")
  cores = machine.get("cpu_count") or machine.get("cpu_cores")
  parts = [f"{devices} {kind} device{'s' * (devices != 1)}" if devices else kind,
           f"{cores} CPU cores" if cores else "", machine.get("processor", "")]
  return ", ".join(p for p in parts if p)


def _date_text(date) -> str:
  if isinstance(date, dict):  # Collected runs: the first and last run's dates.
    first, last = date.get("first_run", ""), date.get("last_run", "")
    return first if first[:10] == last[:10] else f"{first} to {last}"
  return str(date)


def source_line(source: str, result) -> str:
  """What the table was written from: the file, its command, machine, versions and date."""
  p = provenance(result)
  command = p.get("command", "not recorded")
  commands = [f"`{c}`" for c in (command if isinstance(command, list) else [command])]
  if len(commands) > 3:  # One process per run: the first stands for the rest.
    commands = [f"{commands[0]} and {len(commands) - 1} more runs like it"]
  collect = isinstance(result, dict) and result.get("collect_command")
  if collect and f"`{collect}`" not in commands:
    commands.append(f"then `{collect}`")
  versions = p.get("versions") or {}
  version_text = ", ".join(f"{k} {v}" for k, v in versions.items() if v)
  return (f"<sub>From `{source}`: " + ", ".join(commands) +
          f"; {_machine_text(p.get('machine', 'machine not recorded'))}"
          f"{'; ' + version_text if version_text else ''}; {_date_text(p.get('date', 'undated'))}."
          "</sub>")


def markdown_table(header: list[str], rows: list[list[str]], align: str = "") -> list[str]:
  """A GitHub table; `align` is one of "l", "r" per column (default all left)."""
  rule = [("---:" if a == "r" else "---") for a in (align or "l" * len(header))]
  return ["| " + " | ".join(map(str, row)) + " |" for row in [header, rule, *rows]]


def fmt(spread: dict, digits: int = 2, unit: str = "") -> str:
  """`mean ± std` of a summary {"mean", "std", ...}; just the mean for one value."""
  mean = f"{spread['mean']:.{digits}f}"
  if len(spread.get("values", [0, 0])) < 2:
    return f"{mean}{unit}"
  return f"{mean} ± {spread['std']:.{digits}f}{unit}"


def fmt_ratio(spread: dict) -> str:
  """A loss-jump ratio: 2 decimals under 10, 1 under 100, none above."""
  g = lambda x: f"{x:.{2 if x < 10 else 1 if x < 100 else 0}f}"
  if len(spread.get("values", [0, 0])) < 2:
    return g(spread["mean"])
  return f"{g(spread['mean'])} ± {g(spread['std'])}"


# ---------------------------------------------------------------------------------------------
# The tables


def _if_reached(s: dict, key: str, digits: int, unit: str) -> str:
  """A number over the seeds whose progressive run reached the direct model's best PSNR."""
  return fmt(s[key], digits, unit) if key in s else "not reached"


@table("progressive_vs_direct", "experiments/results/progressive_vs_direct/result.json")
def progressive_vs_direct(result: dict) -> list[str]:
  s = result["summary"]
  rows = [
      ["held-out PSNR after the last image", fmt(s["progressive_psnr"], unit=" dB"),
       fmt(s["direct_psnr"], unit=" dB")],
      ["... SSIM", fmt(s["progressive_ssim"], 3), fmt(s["direct_ssim"], 3)],
      ["best held-out PSNR on the way", fmt(s["progressive_best_psnr"], unit=" dB"),
       fmt(s["direct_best_psnr"], unit=" dB")],
      ["training seconds", fmt(s["progressive_seconds"], 0, " s"),
       fmt(s["direct_seconds"], 0, " s")],
      ["held-out PSNR at the progressive run's training seconds",
       fmt(s["progressive_psnr"], unit=" dB"),
       fmt(s["direct_psnr_at_progressive_seconds"], unit=" dB")],
      ["seconds to reach the direct model's best PSNR",
       f"**{_if_reached(s, 'progressive_seconds_to_direct_best', 0, ' s')}**",
       _if_reached(s, "direct_seconds_to_its_best", 0, " s")],
      ["speed-up to the direct model's best PSNR", f"**{_if_reached(s, 'speedup', 1, 'x')}** "
       f"({s['reached']} seeds reached it)", ""],
  ]
  if "speedup_in_images" in s:  # Where compiles dominate a run's seconds (a GPU), images.
    rows.append(["... in images (the direct run's over the progressive run's)",
                 fmt(s["speedup_in_images"], 1, "x"), ""])
  return markdown_table(["", "progressive", "direct at 32x32"], rows)


@table("progressive_vs_direct_headline",
       "experiments/results/progressive_vs_direct/result.json")
def progressive_vs_direct_headline(result: dict) -> list[str]:
  """The README's summary of the table above: quality, and the time to reach it."""
  s = result["summary"]
  rows = [["best held-out PSNR on the way", fmt(s["progressive_best_psnr"], unit=" dB"),
           fmt(s["direct_best_psnr"], unit=" dB")],
          ["seconds to reach the direct model's best PSNR",
           f"**{_if_reached(s, 'progressive_seconds_to_direct_best', 0, ' s')}**",
           _if_reached(s, "direct_seconds_to_its_best", 0, " s")],
          ["speed-up to that PSNR", f"**{_if_reached(s, 'speedup', 1, 'x')}**", ""]]
  return markdown_table(["", "progressive", "direct at 32x32"], rows)


@table("optimizer_at_growth", "experiments/results/optimizer_at_growth/result.json")
def optimizer_at_growth(result: dict) -> list[str]:
  rows = []
  for policy, s in result["summary"].items():
    rows.append([policy, fmt(s["psnr"]), fmt(s["ssim"], 3),
                 " / ".join(fmt_ratio(s["jump_at_growth"][r]) for r in ("8", "16")),
                 " / ".join(fmt_ratio(s["jump_at_fade_end"][r]) for r in ("8", "16"))])
  return markdown_table(["policy", "final PSNR (dB)", "final SSIM",
                         "loss jump at growth to 8x8 / 16x16",
                         "at the end of the fade, 8x8 / 16x16"], rows)


def _width_growth(result: dict) -> list[str]:
  rows = []
  for variant, s in result["summary"].items():
    wide_at = s.get("wide_psnr_at_its_seconds")
    rows.append([variant, fmt(s["psnr"]), fmt(s["ssim"], 3), fmt(s["train_seconds"], 0),
                 fmt(wide_at) if wide_at else "-", fmt_ratio(s["loss_jump_at_widening"]),
                 fmt_ratio(s["noise_floor"])])
  return markdown_table(["variant", "final PSNR (dB)", "final SSIM", "training seconds",
                         "wide's PSNR at those seconds (dB)",
                         "loss jump where widened", "with nothing happening"], rows)


@table("width_growth", "experiments/results/width_growth/result.json")
def width_growth(result: dict) -> list[str]:
  return _width_growth(result)


@table("width_growth_short", "experiments/results/width_growth_short/result.json")
def width_growth_short(result: dict) -> list[str]:
  return _width_growth(result)


@table("fade_length", "experiments/results/fade_length/result.json")
def fade_length(result: dict) -> list[str]:
  rows = []
  for fade, s in sorted(result["summary"].items(), key=lambda kv: int(kv[0])):
    rows.append([f"{int(fade):,}", fmt(s["psnr"]), fmt(s["ssim"], 3),
                 " / ".join(fmt_ratio(s["jump_at_growth"][r]) for r in ("8", "16"))])
  return markdown_table([f"fade images (of {result['images_per_growth']:,})", "final PSNR (dB)",
                         "final SSIM", "loss jump at growth to 8x8 / 16x16"], rows)


@table("seed_digits", "experiments/results/seed_digits/result.json")
def seed_digits(result: dict) -> list[str]:
  s = result["summary"]
  rows = [["the 4x4 model, at 4x4", fmt(s["psnr_4"], 1)],
          ["the 4x4 model, enlarged to 8x8", fmt(s["psnr_4_enlarged_to_8"])],
          ["the grown 8x8 model", f"{fmt(s['psnr_8'])} (SSIM {fmt(s['ssim_8'], 3)})"],
          ["loss jump at growth (not PSNR)", fmt_ratio(s["jump_at_growth"])]]
  lowest = min(v for seed in result["per_seed"] for v in seed["kernel_correlation"].values())
  rows.append(["lowest correlation of a 4x4-trained kernel with itself after growing "
               "(not PSNR)", f"{lowest:.3f}"])
  return markdown_table(["", "held-out PSNR (dB)"], rows)


def _first_seed(s: dict, key: str):
  """A variant's number for its lowest seed (seed 0 of the sweep)."""
  if "per_seed" in s:
    return min(s["per_seed"], key=lambda m: m["seed"])[key]
  return s[key]["values"][0]  # A file from before per-seed records: seeds in order.


@table("smooth_growth", "experiments/results/smooth_growth/result.json")
def smooth_growth(result: dict) -> list[str]:
  """The issue's table: `before`, the preset and the sweep's best two (`main_table`; every
  variant in a file without one), over every seed."""
  rows = []
  for variant in result.get("main_table") or list(result["summary"]):
    s = result["summary"][variant]
    drops = " / ".join(fmt(s["fade_end_drop"][r]) for r in sorted(s["fade_end_drop"], key=int))
    psnr = s["psnr"]["values"]
    ratio = s.get("goals", {}).get("time_over_preset")
    rows.append([variant, drops, f"{s['worst_fade_end_drop']['max']:.2f}",
                 ", ".join(str(int(n)) for n in s["spikes"]["values"]),
                 fmt(s["psnr"], unit=" dB"), f"{max(psnr) - min(psnr):.2f} dB",
                 f"{ratio:.2f}x" if ratio is not None else "-"])
  return markdown_table(["variant", "fade-end drop 8 / 16 / 32 (dB)", "worst, any seed (dB)",
                         "spikes per seed", "final held-out PSNR", "spread (max - min)",
                         "training time / preset's"], rows)


@table("smooth_growth_sweep", "experiments/results/smooth_growth/result.json")
def smooth_growth_sweep(result: dict) -> list[str]:
  """Every variant: its first seed (the sweep) and the mean over its seeds."""
  diff = result.get("verdict", {}).get("psnr_vs_preset_db", {})
  rows = []
  for variant, s in result["summary"].items():
    rows.append([variant, f"{_first_seed(s, 'worst_fade_end_drop'):.2f}",
                 str(int(_first_seed(s, "spikes"))), f"{_first_seed(s, 'psnr'):.2f}",
                 f"{fmt(s['psnr'])} ({len(s['psnr']['values'])})",
                 f"{diff[variant]:+.2f}" if variant in diff else "-"])
  return markdown_table(["variant", "seed 0: worst fade-end drop (dB)", "seed 0: spikes",
                         "seed 0: final PSNR (dB)", "final PSNR (dB) over seeds (how many)",
                         "mean vs the preset's (dB)"], rows)


@table("device_drift", "experiments/results/smooth_growth/result.json")
def device_drift(result: dict) -> list[str]:
  steps = ("40", "90", "150")
  rows = []
  for variant, s in result["summary"].items():
    if s.get("device_drift"):  # Variants whose digits run is another's have none.
      by_step = s["device_drift"]["by_step"]
      rows.append([variant] + [f"{by_step[k]:.1e}" if k in by_step else "-" for k in steps])
  return markdown_table(["variant"] + [f"by step {k}" for k in steps], rows)


@table("bench_cpu_2core", "benchmarks/results_cpu_2core.jsonl")
def bench_cpu_2core(records: list[dict]) -> list[str]:
  runs, rows = [[]], {}
  for r in records:  # Each run: its meta record, its stages, its summary.
    if r["kind"] == "meta" and runs[-1]:
      runs.append([])
    runs[-1].append(r)
  for i, run in enumerate(runs):
    for r in (r for r in run if r["kind"] == "stage"):
      key = f"{r['resolution']}x{r['resolution']} {r['phase']}"
      rows.setdefault(key, [key]).append(
          f"{r['jax_img_per_s']:.0f} / {r['torch_img_per_s']:.0f} = {r['ratio']:.2f}x")
  return markdown_table(["stage"] + [f"run {i + 1}: JAX / torch img/s" for i in range(len(runs))],
                        list(rows.values()))


@table("large_preset_costs", "benchmarks/large_preset_costs.jsonl")
def large_preset_costs(records: list[dict]) -> list[str]:
  """The large preset's step per stage: FLOPs (XLA's cost analysis), XLA's buffers, and the
  images/s that 316 TFLOP/s (40% of an H200's ~790 TFLOP/s bf16 matrix rate) would give."""
  rows = []
  for r in (r for r in records if r["kind"] == "stage"):
    rows.append([f"{r['resolution']}x{r['resolution']} {r['phase']}", f"{r['batch']:,}",
                 f"{r['params']:,}", f"{r['flops_per_image'] / 1e9:.2f}",
                 f"{r['flops_per_step'] / 1e12:.2f}",
                 f"{r['xla_memory_per_device']['total'] / 2**30:.1f}",
                 f"{316e12 / r['flops_per_image']:,.0f}"])
  return markdown_table(["stage", "batch", "parameters", "GFLOP / image", "TFLOP / step",
                         "XLA GiB", "img/s at 316 TFLOP/s"], rows, "lrrrrrr")


@table("vs_torch_order", "benchmarks/vs_torch_order_cpu_2core.jsonl")
def vs_torch_order(records: list[dict]) -> list[str]:
  """`progae bench --vs-torch` with both sides as workers: every round's images/s in the order
  it ran, and JAX / PyTorch over the rounds where JAX went first and where it went after."""
  rows = []
  for r in (r for r in records if r["kind"] == "stage"):
    mode = r["torch_mode"]
    runs = {"jax": r["jax_img_per_s_runs"],
            **{m: t["img_per_s_runs"] for m, t in r["torch"].items()}}
    rounds = "; ".join(", ".join(f"{side} {runs[side][i]:.0f}" for side in order)
                       for i, order in enumerate(r["round_orders"]))
    rows.append([f"{r['resolution']}x{r['resolution']} {r['phase']}", str(r["batch"]), rounds,
                 f"{r['ratio']:.2f}x", f"{r['ratio_by_order']['jax_first']:.2f}x",
                 f"{r['ratio_by_order']['jax_after']:.2f}x",
                 f"{r['others_cpu_share']:.0%}" if r.get("others_cpu_share") is not None
                 else "-"])
  return markdown_table(["stage", "batch", "rounds (img/s, in the order run)",
                         f"JAX / {mode}", "JAX first", "JAX after", "others' CPU"], rows,
                        "lrlrrrr")


# ---------------------------------------------------------------------------------------------
# Pages


def pages() -> list[str]:
  """Every page that may hold tables, relative to the repository."""
  found = ["README.md"] + sorted(glob.glob("docs/*.md", root_dir=REPO)) + \
      sorted(glob.glob("benchmarks/*.md", root_dir=REPO))
  return [p for p in found if os.path.exists(os.path.join(REPO, p))]


def rendered(name: str) -> str:
  """The text between a table's markers: the table, then its source line."""
  if name not in TABLES:
    raise KeyError(f"no table named {name!r} in experiments/render_results.py "
                   f"(there are {sorted(TABLES)})")
  t = TABLES[name]
  result = load(t.source)
  return "\n".join(t.render(result) + ["", source_line(t.source, result)]) + "\n"


def render_page(text: str) -> str:
  """`text` with every table between markers written afresh."""
  return _MARKER.sub(lambda m: START.format(m.group(1)) + "\n" + rendered(m.group(1)) +
                     END.format(m.group(1)), text)


def tables_in(text: str) -> list[str]:
  return [m.group(1) for m in _MARKER.finditer(text)]


def stale_pages() -> list[str]:
  """The pages whose tables differ from what `render_page` writes today."""
  out = []
  for page in pages():
    with open(os.path.join(REPO, page), encoding="utf-8") as f:
      text = f.read()
    if render_page(text) != text:
      out.append(page)
  return out


def _loop_table(r: dict) -> list[str]:
  """The loop beside its own step, phase by phase; then where the run's wall time went."""
  stages = markdown_table(
      ["phase", "batch", "loop img/s", "step alone img/s", "loop / step"],
      [[s["phase"], s["batch"], f"{s['loop_img_per_s']:,.0f}", f"{s['step_img_per_s']:,.0f}",
        f"{s['loop_over_step']:.2f}"] for s in r["stages"]], "lrrrr")
  spent = [[kind, f"{seconds:.2f}"] for kind, seconds in r["breakdown_s"].items()]
  spent += [["training steps (the rest)", f"{r['train_steps_s']:.2f}"],
            ["**whole call**", f"**{r['wall_s']:.2f}**"],
            ["pictures (in a thread beside the loop)", f"{r['beside_loop_s']['pictures']:.2f}"],
            ["compiles waited for after the first phase",
             f"{r['critical_compile_s_after_first_phase']:.2f}"]]
  return stages + [""] + markdown_table([f"{r['preset']}, {r['images']:,} images: seconds",
                                         ""], spent, "lr")


@table("loop_cpu", "benchmarks/results/loop_cpu.json")
def loop_cpu(r: dict) -> list[str]:
  return _loop_table(r)


@table("loop_main_cpu", "benchmarks/results/loop_main_cpu.json")
def loop_main_cpu(r: dict) -> list[str]:
  return _loop_table(r)


@table("process_cpu", "benchmarks/results/process_cpu.json")
def process_cpu(r: dict) -> list[str]:
  names = {"cold": "cold: an empty compilation cache", "warm": "warm: the same command again",
           "deterministic": "--deterministic, its first run",
           "deterministic_warm": "--deterministic again (warm)"}
  rows = [[label, f"{r[key]['wall_s']:.1f}", f"{r[key]['final_psnr']:.2f}"]
          for key, label in names.items()]
  rows += [["the two --deterministic runs end with the same bits", "",
            str(r["deterministic_same_bits"])],
           ["cold and warm end with the same bits", "", str(r["cold_warm_same_bits"])]]
  on = r["cold"].get("trained_on")
  return markdown_table([f"`progae train --preset {r['preset']}`, whole process"
                         + (f" (training on {on})" if on else ""), "wall s",
                         "final held-out PSNR (dB)"], rows, "lrr")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--check", action="store_true",
                 help="write nothing; list the pages whose tables differ, exit 1 if any")
  args = p.parse_args(argv)
  try:
    stale = stale_pages()
  except (KeyError, OSError, ValueError) as e:  # An unknown table, a missing or bad file.
    print(f"render_results: error: {e.args[0] if isinstance(e, KeyError) else e}",
          file=sys.stderr)
    return 2
  if args.check:
    for page in stale:
      print(f"{page}: its tables differ from the result files; run "
            "python experiments/render_results.py")
    return 1 if stale else 0
  for page in stale:
    path = os.path.join(REPO, page)
    with open(path, encoding="utf-8") as f:
      text = render_page(f.read())
    with open(path, "w", encoding="utf-8") as f:
      f.write(text)
    print(f"rewrote the tables of {page}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
