"""Growing width: narrow, wide, or narrow then widened (Net2Net) at the same images?

    python experiments/width_growth.py                 # full: the main job, 3 seeds, in turn
    python experiments/width_growth.py --quick         # digits, seconds (a smoke test)
    python experiments/width_growth.py --short         # digits 4x4 -> 8x8, minutes on a CPU
    # The full mode's runs as independent processes (one JSON each), then the table and plot:
    python experiments/width_growth.py --variant wide --seed 0
    python experiments/width_growth.py --collect

The main job (`progae train`: image_patches, 4x4 -> 32x32, 108,800 images) at three widths:
`narrow` (half the default channels at every resolution), `wide` (the default channels),
and `widened`: narrow until 16x16's fade is done, then every resolution widened to the wide
channels (TrainConfig.widen, widen.py: the function is kept, and 32x32 is grown wide).
`widened_fresh` is the same with Adam's state of the widened weights started afresh instead
of split like the weights (`optimizer_on_widening`). Measured per run: the held-out PSNR/SSIM
at 32x32 against images and training seconds, the loss jump at the widening (the largest
training loss of the 10 steps after it over the mean of the 10 before; 1 = no jump) and the
same with nothing happening; per seed, the wide run's PSNR at the widened run's training time.

`--short` asks the same on the digits (4x4 -> 8x8, 25,600 images, 32 -> 64 channels, widened
as 8x8's stable phase begins), small enough for a CPU: the optimizer-state question
(`widened` against `widened_fresh`) measured there, not guessed.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import _common as c
from progae_jax import ModelConfig, config_files
from progae_jax.schedule import TrainConfig

NAME = "width_growth"
VARIANTS = ("narrow", "wide", "widened", "widened_fresh")
WIDEN_AT = {"quick": 8, "short": 8, "full": 16}  # The stable phase that begins widened.


def setting(args) -> str:
  return "quick" if args.quick else "short" if args.short else "full"


def main_job(which: str, data_dir) -> TrainConfig:
  """The wide run: the main job (quick, short: digits runs), measured like every experiment."""
  if which == "quick":
    stages = c.schedule(192, 192, 192, batch=32, resolutions=(8,), lr_4=3e-3, lr=1e-3)
    return c.config(c.TINY, "digits", stages, data_dir, eval_every_images=128)
  if which == "short":
    model = ModelConfig(image_channels=1, max_resolution=8, channels={4: 64, 8: 64},
                        latent_dim=32)
    stages = c.schedule(6_400, 6_400, 12_800, resolutions=(8,))
    return c.config(model, "digits", stages, data_dir, eval_every_images=1_600)
  fields = config_files.preset("main")
  fields["model"] = dict(fields.get("model", {}), image_channels=3)
  base = TrainConfig.from_dict(fields)
  return dataclasses.replace(base, data_dir=data_dir, eval_images=256, eval_every_images=6_400,
                             checkpoint_every_images=10**9, keep_checkpoints=1)


def variants(which: str, data_dir) -> dict[str, TrainConfig]:
  wide = main_job(which, data_dir)
  channels = dict(wide.model.channels)
  narrow = dataclasses.replace(wide, model=dataclasses.replace(
      wide.model, channels={r: max(1, ch // 2) for r, ch in channels.items()}))
  widened = dataclasses.replace(narrow, widen={WIDEN_AT[which]: channels})
  return {"narrow": narrow, "wide": wide, "widened": widened,
          "widened_fresh": dataclasses.replace(widened, optimizer_on_widening="fresh")}


def measure(run: c.Run, widen_at: int) -> dict:
  """What one run's metrics say (everything the table and the plot need). The loss jump is
  taken where the widened runs widen, in every run: narrow and wide give the same point
  without a widening (the fade's end alone)."""
  jump = c.loss_jump(run.train, c.fade_end_indices(run.train)[widen_at])
  return {"variant": run.label, "seed": run.seed, "psnr": run.final["psnr_full"],
          "ssim": run.final["ssim_full"], "train_seconds": run.final["train_seconds"],
          "wall_seconds": run.wall_seconds, "loss_jump_at_widening": jump,
          "noise_floor": c.noise_floor(run.train),
          "evals": [{k: e[k] for k in ("images_seen", "train_seconds", "psnr_full", "ssim_full",
                                       "resolution", "phase")} for e in run.evals]}


def jobs(quick: bool, seeds: int | None = None) -> list[dict]:
  """Every run as its own process (run_parallel.py), seed-major."""
  return [{"args": ["--variant", v, "--seed", str(seed)], "pool": "device", "seed": seed}
          for seed in range(seeds or (1 if quick else 3)) for v in VARIANTS]


def _one_job(args) -> int:
  which = setting(args)
  cfg = dataclasses.replace(variants(which, args.data_dir)[args.variant], seed=args.seed,
                            deterministic=args.deterministic)
  run = c.run(cfg, os.path.join(args.workdir, args.variant, f"seed{args.seed}"), args.variant)
  c.write_run(args.out, NAME, run, quick=args.quick, setting=which)
  return 0


def psnr_at_seconds(evals: list[dict], seconds: float) -> float:
  """The held-out PSNR a run had after `seconds` of training (linear between evaluations;
  its last one past its end)."""
  points = [(e["train_seconds"], e["psnr_full"]) for e in evals]
  for (t0, y0), (t1, y1) in zip(points, points[1:]):
    if t0 <= seconds <= t1:
      return y0 + (y1 - y0) * (seconds - t0) / max(t1 - t0, 1e-9)
  return points[-1][1] if seconds > points[-1][0] else points[0][1]


def summarise(per_run: list[dict]) -> dict:
  by_variant = {v: sorted((m for m in per_run if m["variant"] == v), key=lambda m: m["seed"])
                for v in VARIANTS}
  summary = {}
  for v, runs in by_variant.items():
    numbers = [{k: m[k] for k in ("psnr", "ssim", "train_seconds", "loss_jump_at_widening",
                                  "noise_floor")} for m in runs]
    summary[v] = c.spread_over_seeds(numbers)
  wide = {m["seed"]: m for m in by_variant["wide"]}
  for v in ("narrow", "widened", "widened_fresh"):
    summary[v]["wide_psnr_at_its_seconds"] = c.spread(
        psnr_at_seconds(wide[m["seed"]]["evals"], m["train_seconds"])
        for m in by_variant[v] if m["seed"] in wide)
  return summary


def plot(per_run: list[dict], summary: dict, widen_at: int):
  from progae_jax import plots
  fig, (ax, tx, bx) = plots.plt.subplots(1, 3, figsize=(15, 4), width_ratios=(3, 3, 2))
  for k, v in enumerate(VARIANTS):
    for m in (m for m in per_run if m["variant"] == v):
      for axis, x in ((ax, "images_seen"), (tx, "train_seconds")):
        axis.plot([e[x] for e in m["evals"]], [e["psnr_full"] for e in m["evals"]],
                  color=f"C{k}", lw=1, marker=".", label=v if m["seed"] == 0 else None)
  ax.set(xlabel=f"images seen (widened as {widen_at}x{widen_at}'s stable phase begins)",
         ylabel="held-out PSNR at full size (dB)")
  tx.set(xlabel="training seconds (compiles included, evaluation left out)")
  ax.legend()
  psnr = [summary[v]["psnr"] for v in VARIANTS]
  bx.bar(VARIANTS, [s["mean"] for s in psnr], yerr=[s["std"] for s in psnr],
         color=[f"C{k}" for k in range(len(VARIANTS))], capsize=4)
  for k, s in enumerate(psnr):
    bx.plot([k] * len(s["values"]), s["values"], "k.", ms=4)
  bx.set_ylim(min(min(s["values"]) for s in psnr) - 1.0, max(max(s["values"]) for s in psnr) + 0.5)
  bx.set(ylabel="final held-out PSNR (dB), equal images")
  bx.tick_params(axis="x", labelrotation=20)
  seeds = len({m["seed"] for m in per_run})
  fig.suptitle(f"Growing width, {seeds} seed{'s' * (seeds > 1)}")
  return fig


def collect(runs_dir: str, out: str) -> dict:
  """result.json and the plot from every run under `runs_dir`."""
  runs, records = c.read_runs(runs_dir, NAME)
  absent = [v for v in VARIANTS if v not in runs]
  if absent:
    raise SystemExit(f"--collect {runs_dir}: no runs of {absent} under "
                     f"{os.path.join(runs_dir, NAME)}")
  quick, which = records[0]["quick"], records[0]["setting"]
  per_run = [measure(r, WIDEN_AT[which]) for v in VARIANTS for r in runs[v]]
  summary = summarise(per_run)
  for v in VARIANTS:
    s = summary[v]
    vs = (f"; wide at the same seconds {c.fmt(s['wide_psnr_at_its_seconds'])} dB"
          if "wide_psnr_at_its_seconds" in s else "")
    print(f"{v:<14} final PSNR {c.fmt(s['psnr'])} dB in {c.fmt(s['train_seconds'], 0)} s{vs}; "
          f"loss jump at the widening {c.fmt(s['loss_jump_at_widening'])}; with nothing "
          f"happening {c.fmt(s['noise_floor'])}")
  seeds = max(len(r) for r in runs.values())
  result = {**c.provenance(runs_dir, records), "quick": quick, "setting": which,
            "seeds": seeds, "missing": c.missing_runs(jobs(quick, seeds), runs),
            "summary": summary, "per_seed": per_run,
            "configs": {v: runs[v][0].config.to_dict() for v in VARIANTS}}
  c.write_collected(out, NAME, result, plot(per_run, summary, WIDEN_AT[which]))
  return result


def main(argv=None) -> int:
  p = c.parser(__doc__, NAME, reuse=False)
  c.add_job_flags(p, VARIANTS)
  p.add_argument("--short", action="store_true",
                 help="digits 4x4 -> 8x8, minutes on a CPU (results in width_growth_short/)")
  args = c.parse_job_args(p, argv, NAME)
  c.set_command(__file__, argv)
  if args.short and args.quick:
    p.error("--short and --quick are two settings: choose one")
  if args.short and args.out == os.path.join("experiments", "results", NAME):
    args.out += "_short"
  if args.short and args.workdir == p.get_default("workdir"):
    args.workdir += "_short"
  c.set_up_job(args)
  return c.dispatch(p, args, NAME, jobs, _one_job, collect,
                    ("--short",) if args.short else ())


if __name__ == "__main__":
  sys.exit(main())
