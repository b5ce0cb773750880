"""What the measured experiments share: running one configuration over seeds, reading its
metrics back, the loss jump at growth, mean and spread, and writing results.

Every experiment script takes `--quick` (a few hundred images of the digits and one seed, for
the test suite: checks that the script works, says nothing about the question) or runs its
full setting (for the README), and writes `<out>/result.json` and `<out>/<name>.png`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from typing import Iterable, Sequence

from progae_jax import ModelConfig, preemption, train
from progae_jax.metrics_log import read_metrics
from progae_jax.schedule import StageSchedule, TrainConfig

# The quick mode's model: small enough that a run compiles and trains in seconds.
TINY = ModelConfig(image_channels=1, max_resolution=8, channels={4: 8, 8: 8}, latent_dim=8)


class _Parser(argparse.ArgumentParser):
  """--seeds defaults to the full mode's count, and to one seed with --quick."""

  full_seeds = 3

  def parse_args(self, args=None, namespace=None):
    parsed = super().parse_args(args, namespace)
    if parsed.seeds is None:
      parsed.seeds = 1 if parsed.quick else self.full_seeds
    if parsed.seeds < 1:
      self.error(f"--seeds {parsed.seeds}: at least one seed")
    return parsed


def parser(doc: str, name: str, *, seeds: int = 3,
           reuse: bool = True) -> argparse.ArgumentParser:
  """The flags every experiment takes (`reuse`: whether it can read finished runs back)."""
  p = _Parser(description=doc.splitlines()[0],
              formatter_class=argparse.RawDescriptionHelpFormatter,
              epilog="\n".join(doc.splitlines()[1:]))
  p.full_seeds = seeds
  p.add_argument("--quick", action="store_true",
                 help="tiny runs on the digits (a smoke test of the script, not a result)")
  p.add_argument("--seeds", type=int, default=None,
                 help=f"seeds per configuration (default {seeds}; 1 with --quick)")
  p.add_argument("--out", default=os.path.join("experiments", "results", name),
                 help="where result.json and the plot go (with --variant, if the script "
                      "takes it: where the run's JSON goes; default <workdir>/runs)")
  p.add_argument("--workdir", default=os.path.join("runs", "experiments", name),
                 help="the runs' work directories (checkpoints, metrics)")
  p.add_argument("--data-dir", help="tfds data directory (default: tfds's own)")
  if reuse:
    p.add_argument("--reuse", action="store_true",
                   help="read back finished runs of the same config from --workdir instead "
                        "of training them again (to redo the analysis and plots)")
  return p


def schedule(stable_4: int, fade: int, stable: int, *, batch: int = 64,
             resolutions: Sequence[int] = (8, 16, 32), lr_4: float = 1e-3,
             lr: float = 3e-4, last_stable: int | None = None) -> dict[int, StageSchedule]:
  """Per-resolution schedules: `stable_4` images at 4x4, then `fade` + `stable` per growth
  (`last_stable` for the final resolution)."""
  stages = {4: StageSchedule(fade_images=0, stable_images=stable_4, batch_size=batch,
                             learning_rate=lr_4)}
  for r in resolutions:
    final = r == resolutions[-1] and last_stable is not None
    stages[r] = StageSchedule(fade_images=fade, stable_images=last_stable if final else stable,
                              batch_size=batch, learning_rate=lr)
  return stages


def config(model: ModelConfig, dataset: str, stages, data_dir, **kw) -> TrainConfig:
  """A TrainConfig for measuring: no EMA (evaluation sees the trained weights) and no
  checkpoints beyond the ones every phase end writes."""
  kw = {"ema_decay": None, "eval_images": 256, "checkpoint_every_images": 10**9,
        "keep_checkpoints": 1, **kw}
  return TrainConfig(model=model, dataset=dataset, data_dir=data_dir, stages=stages, **kw)


@dataclasses.dataclass
class Run:
  """One finished run: its config and the metrics.jsonl it wrote."""
  label: str
  seed: int
  config: TrainConfig
  train: list[dict]
  evals: list[dict]
  wall_seconds: float

  @property
  def final(self) -> dict:
    return self.evals[-1]

  @classmethod
  def read(cls, label: str, cfg: TrainConfig, workdir: str, wall_seconds: float) -> "Run":
    """The run in `workdir`, from the metrics.jsonl it wrote."""
    records = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    return cls(label, cfg.seed, cfg, [r for r in records if r["kind"] == "train"],
               [r for r in records if r["kind"] == "eval"], wall_seconds)


def finished(cfg: TrainConfig, workdir: str) -> bool:
  """Whether `workdir` holds a complete run of exactly `cfg`."""
  from progae_jax import checkpoint
  try:
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
    meta = ckpt.read_meta()
  except (checkpoint.CheckpointError, OSError):
    return False
  return (meta.get("images_seen") == train.phases(cfg)[-1].end
          and not checkpoint.config_differences(meta["config"], cfg.to_dict()))


def run(cfg: TrainConfig, workdir: str, label: str, reuse: bool = False) -> Run:
  """Trains `cfg` from scratch in `workdir` (or, with `reuse`, takes the finished run there)
  and reads back what it logged."""
  t0 = time.perf_counter()
  reused = reuse and finished(cfg, workdir)
  if not reused:
    result = train.train_and_evaluate(cfg, workdir, restart=True, progress=False)
    _refuse_unfinished(result, cfg, label)
  wall = float("nan") if reused else time.perf_counter() - t0
  run = Run.read(label, cfg, workdir, wall)
  print(f"  {label:<22} seed {cfg.seed}: held-out PSNR {run.final['psnr_full']:.2f} dB, "
        f"SSIM {run.final['ssim_full']:.3f} at {cfg.model.max_resolution}x"
        f"{cfg.model.max_resolution}; {run.final['train_seconds']:.0f} s training " +
        ("(read back)" if reused else f"({wall:.0f} s wall)"), flush=True)
  return run


def _refuse_unfinished(result: train.RunResult, cfg: TrainConfig, label: str) -> None:
  """A run stopped early (a signal, a job's time limit) is no measurement: the process ends
  with the signal's status and writes nothing for the run, so the collect lists it missing."""
  if not result.finished:
    why = f"by {result.stopped_by}" if result.stopped_by else "early"
    print(f"{label} seed {cfg.seed}: stopped {why} at {result.images_seen:,} of "
          f"{train.phases(cfg)[-1].end:,} images; nothing recorded for it", file=sys.stderr,
          flush=True)
    raise SystemExit(preemption.EXIT_STATUS.get(result.stopped_by, 1))


def over_seeds(variants: dict[str, TrainConfig], seeds: int, workdir: str,
               reuse: bool = False) -> dict[str, list[Run]]:
  """Every variant at seeds 0..seeds-1, interleaved (seed-major) so that a change in the
  machine's load over time hits all variants alike."""
  runs = {label: [] for label in variants}
  for seed in range(seeds):
    for label, cfg in variants.items():
      cfg = dataclasses.replace(cfg, seed=seed)
      runs[label].append(run(cfg, os.path.join(workdir, label, f"seed{seed}"), label, reuse))
  return runs


def loss_jump(train_records: list[dict], index: int, window: int = 10) -> float:
  """The largest training loss in the `window` steps from `index` on, over the mean loss of
  the `window` steps before it: 1 means no jump."""
  before = [r["loss"] for r in train_records[max(0, index - window):index]]
  after = [r["loss"] for r in train_records[index:index + window]]
  return max(after) / statistics.fmean(before)


def noise_floor(train_records: list[dict], window: int = 10) -> float:
  """`loss_jump` in the middle of the last stable phase, where nothing happens: what the
  measure gives from batch-to-batch noise alone."""
  last = [i for i, r in enumerate(train_records) if r["phase"] == "stable"
          and r["resolution"] == train_records[-1]["resolution"]]
  return loss_jump(train_records, last[len(last) // 2], window)


def growth_indices(train_records: list[dict]) -> dict[int, int]:
  """For every resolution after the first, the index of its first training step."""
  out = {}
  for i, r in enumerate(train_records):
    if i and r["resolution"] != train_records[i - 1]["resolution"]:
      out[r["resolution"]] = i
  return out


def fade_end_indices(train_records: list[dict]) -> dict[int, int]:
  """For every fade, the index of the first stable step after it."""
  return {r["resolution"]: i for i, r in enumerate(train_records)
          if i and r["phase"] == "stable" and train_records[i - 1]["phase"] == "fade"}


def spread(values: Iterable[float]) -> dict:
  """Mean, sample standard deviation, min, max and the values themselves."""
  values = [float(v) for v in values]
  return {"mean": statistics.fmean(values),
          "std": statistics.stdev(values) if len(values) > 1 else 0.0,
          "min": min(values), "max": max(values), "values": values}


def spread_over_seeds(measured: list[dict]) -> dict:
  """`spread` of every number (and of every number in a dict) the seeds' measurements share."""
  out = {}
  for key, value in measured[0].items():
    if isinstance(value, dict):
      out[key] = {k: spread(m[key][k] for m in measured) for k in value}
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and key != "seed":
      out[key] = spread(m[key] for m in measured)
  return out


def fmt(s: dict, digits: int = 2) -> str:
  return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def machine() -> dict:
  import jax
  return {"platform": jax.devices()[0].platform, "devices": jax.device_count(),
          "device_kind": jax.devices()[0].device_kind, "cpu_count": os.cpu_count(),
          "processor": platform.processor() or platform.machine(), "jax": jax.__version__}


def cpu_machine(devices) -> dict:
  """`machine()` for runs made in CPU-only child processes (without starting JAX here)."""
  from importlib import metadata
  return {"platform": "cpu", "devices": devices, "device_kind": "cpu",
          "cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
          "jax": metadata.version("jax")}


def write(out: str, name: str, result: dict, figure) -> tuple[str, str]:
  """`<out>/result.json` (with the command and machine) and `<out>/<name>.png`."""
  result = {"command": " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]),
            "machine": machine(), **result}
  return write_collected(out, name, result, figure)


def set_up_cpu() -> None:
  """One CPU device per core and tuned malloc, as `progae train` does (before JAX starts)."""
  from progae_jax import cpu
  cpu.set_up([64])


def small_setting(quick: bool):
  """The setting of the growth-detail experiments: (model, dataset, base schedule kwargs).

  Full: image_patches (RGB), 4x4 -> 8x8 -> 16x16, the default model's widths, batch 64,
  Adam 1e-3 at 4x4 and 3e-4 after (the presets' rates). Quick: the tiny model on digits.
  """
  if quick:
    return TINY, "digits", {"stable_4": 192, "budget": 256, "last_extra": 64, "batch": 32,
                            "resolutions": (8,), "lr_4": 3e-3, "lr": 1e-3, "every": 10**9}
  return (ModelConfig(image_channels=3, max_resolution=16), "image_patches",
          {"stable_4": 6_400, "budget": 12_800, "last_extra": 6_400, "batch": 64,
           "resolutions": (8, 16), "lr_4": 1e-3, "lr": 3e-4, "every": 10**9})


def budget_schedule(fade: int, *, stable_4: int, budget: int, last_extra: int, batch: int,
                    resolutions, lr_4: float, lr: float, **_) -> dict[int, StageSchedule]:
  """`fade` images of fade and `budget - fade` stable per growth (plus `last_extra` stable at
  the end): every fade length trains on the same number of images at every resolution."""
  stages = schedule(stable_4, fade, budget - fade, batch=batch, resolutions=resolutions,
                    lr_4=lr_4, lr=lr, last_stable=budget - fade + last_extra)
  return stages


# --- One run per process, then a collect step ------------------------------------------------
#
# A sweep of many runs is one process per (variant, seed), each writing its own JSON, so that
# run_parallel.py can run several at once (on a GPU, several processes share it):
#
#     SCRIPT --variant V --seed S --out RUNS     trains, writes RUNS/<name>/<V>/seed<S>.json
#     SCRIPT --collect RUNS [--out RESULTS]      reads every run back, writes result.json + plot


def add_job_flags(p: argparse.ArgumentParser, variants) -> None:
  """--variant/--seed (train one run and write its JSON under --out) and --collect."""
  p.add_argument("--variant", choices=list(variants),
                 help="train this one variant at --seed and write its run's JSON under --out")
  p.add_argument("--seed", type=int, default=0, help="the seed of --variant (default 0)")
  p.add_argument("--collect", metavar="RUNS",
                 help="read the runs' JSON under RUNS and write result.json and the plot")
  p.add_argument("--deterministic", action="store_true",
                 help="with --variant: deterministic GPU kernels (TrainConfig.deterministic)")


def set_up_job(args) -> None:
  """What a job's process sets up before JAX starts, as `progae train` does: CPU devices,
  the persistent compilation cache (JAX_COMPILATION_CACHE_DIR if set: run_parallel.py's,
  shared by its jobs) and, if asked, deterministic kernels."""
  from progae_jax import compilation
  if getattr(args, "deterministic", False):
    compilation.request_deterministic()
  set_up_cpu()
  compilation.enable_cache()


def parse_job_args(p: argparse.ArgumentParser, argv, name: str) -> argparse.Namespace:
  """The parsed flags, --out defaulting to where its mode writes: the runs' JSON (with
  --variant: <workdir>/runs), else result.json (experiments/results/<name>)."""
  p.set_defaults(out=None)
  args = p.parse_args(argv)
  if args.out is None:
    args.out = (os.path.join(args.workdir, "runs") if args.variant
                else os.path.join("experiments", "results", name))
  return args


def versions() -> dict:
  """The versions of what the runs' numbers depend on."""
  from importlib import metadata
  out = {"python": platform.python_version()}
  for name in ("progae_jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy"):
    try:
      out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      out[name] = None
  from progae_jax.version import __version__
  out["progae_jax"] = __version__
  return out


def now() -> str:
  return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


_COMMAND: list[str] = []


def set_command(script: str, argv) -> None:
  """What `command()` reports: `script` with `argv` (main's own, or the process's)."""
  _COMMAND[:] = [os.path.relpath(script), *(sys.argv[1:] if argv is None else argv)]


def command() -> str:
  """The command that is running, as its script's main set it (else the process's argv)."""
  return " ".join(_COMMAND or [os.path.relpath(sys.argv[0])] + sys.argv[1:])


def run_path(runs_dir: str, name: str, label: str, seed: int) -> str:
  return os.path.join(runs_dir, name, label, f"seed{seed}.json")


def write_run(runs_dir: str, name: str, run: Run, **extra) -> str:
  """One finished run as JSON: its config, metrics, wall time and where it ran. The training
  records keep what the measures read (not the per-step speed)."""
  keep = ("step", "images_seen", "resolution", "phase", "alpha", "loss", "grad_norm",
          "train_seconds", "images_per_s")  # The last two: on a window's last step only.
  record = {"experiment": name, "variant": run.label, "seed": run.seed, **extra,
            "command": command(), "machine": machine(), "versions": versions(), "date": now(),
            "wall_seconds": run.wall_seconds, "config": run.config.to_dict(),
            "train": [{k: r[k] for k in keep if k in r} for r in run.train],
            "evals": run.evals}
  path = run_path(runs_dir, name, run.label, run.seed)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(record, f)
  os.replace(path + ".tmp", path)  # A run killed mid-write leaves no half file behind.
  print(f"wrote {path}")
  return path


def read_runs(runs_dir: str, name: str) -> tuple[dict[str, list[Run]], list[dict]]:
  """Every run under `runs_dir/<name>/`, by variant and seed: ({label: [Run]}, their records
  without the metrics)."""
  import glob
  runs, records = {}, []
  for path in sorted(glob.glob(os.path.join(runs_dir, name, "*", "seed*.json"))):
    with open(path) as f:
      record = json.load(f)
    cfg = TrainConfig.from_dict(record["config"])
    runs.setdefault(record["variant"], []).append(
        Run(record["variant"], record["seed"], cfg, record["train"], record["evals"],
            record["wall_seconds"]))
    records.append({k: v for k, v in record.items() if k not in ("train", "evals", "config")})
  for seeded in runs.values():
    seeded.sort(key=lambda r: r.seed)
  return runs, records


def missing_runs(jobs: list[dict], runs: dict[str, list[Run]]) -> list[str]:
  """The device jobs of a plan (a script's `jobs()`) whose run is not among `runs`."""
  have = {(label, r.seed) for label, seeded in runs.items() for r in seeded}
  out = []
  for job in jobs:
    if job["pool"] == "device":
      variant = job["args"][job["args"].index("--variant") + 1]
      if (variant, job["seed"]) not in have:
        out.append(f"{variant} seed {job['seed']}")
  return out


def provenance(runs_dir: str, records: list[dict]) -> dict:
  """Where and how the collected runs ran: the launcher's command (run_parallel.py's
  jobs.json, if there), the machines, versions and dates the runs recorded, and this step."""
  launched = None
  jobs = os.path.join(runs_dir, "jobs.json")
  if os.path.exists(jobs):
    with open(jobs) as f:
      launched = json.load(f).get("command")
  def unique(key):  # The one value all runs share, else the list of those seen.
    seen = [json.loads(s) for s in sorted({json.dumps(r[key], sort_keys=True) for r in records})]
    return seen[0] if len(seen) == 1 else seen
  dates = sorted(r["date"] for r in records)
  return {"command": launched or sorted({r["command"] for r in records}),
          "collect_command": command(), "machine": unique("machine"),
          "versions": unique("versions"), "date": {"first_run": dates[0], "last_run": dates[-1],
                                                   "collected": now()}}


def write_collected(out: str, name: str, result: dict, figure) -> tuple[str, str]:
  """`<out>/result.json` (provenance first) and `<out>/<name>.png`."""
  os.makedirs(out, exist_ok=True)
  json_path, png_path = os.path.join(out, "result.json"), os.path.join(out, f"{name}.png")
  with open(json_path, "w") as f:
    json.dump(result, f, indent=1)
  figure.savefig(png_path, dpi=110, bbox_inches="tight")
  print(f"wrote {json_path} and {png_path}")
  return json_path, png_path


def dispatch(p, args, name: str, jobs, one_job, collect, extra: tuple[str, ...] = ()) -> int:
  """What an experiment's main does once its flags are read: `--collect` the runs there, run
  the one `--variant` job asked for, or run every job here one after another and collect
  them. `extra`: flags each of those jobs also gets."""
  if args.collect:
    collect(args.collect, args.out)
    return 0
  if args.variant:
    return one_job(args)
  runs_dir = os.path.join(args.workdir, "runs")
  common = ["--out", runs_dir, "--workdir", args.workdir, *(["--quick"] if args.quick else []),
            *(["--data-dir", args.data_dir] if args.data_dir else []),
            *(["--deterministic"] if args.deterministic else []), *extra]
  for job in jobs(args.quick, args.seeds):
    one_job(parse_job_args(p, [*job["args"], *common], name))
  collect(runs_dir, args.out)
  return 0
