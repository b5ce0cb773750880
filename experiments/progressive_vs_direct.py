"""Progressive vs direct: does growing from 4x4 reach a given quality sooner?

    python experiments/run_parallel.py --out runs/smooth   # with smooth_growth's runs
    python experiments/progressive_vs_direct.py --variant direct --seed 1 --out RUNS
    python experiments/progressive_vs_direct.py --collect RUNS      # result.json, the plot
    python experiments/progressive_vs_direct.py            # every run here, then collect
    python experiments/progressive_vs_direct.py --quick    # digits, seconds (a smoke test)

Progressive: the main job as `progae train` runs it (`configs/main.py`), 4x4 -> 8x8 -> 16x16
-> 32x32. Direct: the same model, initialised at 32x32 and trained there only, on as many
images, with the preset's optimizer (Adam b2, step counts, the annealing of the last images,
the equalized learning rate if the preset has it) at the preset's 32x32 learning rate. Both
are evaluated on the same held-out images at 32x32 every 3,200 images (a progressive stage's
output enlarged to 32x32), against the images seen and the training seconds (steps, compiles
and growth; evaluation left out). Reported per seed, then mean and spread:

* final PSNR/SSIM of both at equal images;
* the direct model's PSNR after the progressive run's training time (equal time);
* the time (and images) each run needs to reach the direct model's best held-out PSNR, and
  the speed-up: the direct run's time over the progressive run's (ProGAN's measure). The
  best, not the last: a late loss spike can pull one evaluation down, and the best is the
  harder level for the progressive run to reach.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import numpy as np

import _common as c

from progae_jax import config_files
from progae_jax.schedule import TrainConfig, phases

NAME = "progressive_vs_direct"
VARIANTS = ("progressive", "direct")


def variants(quick: bool, data_dir, direct_lr: float | None = None) -> dict:
  """{"progressive": the main preset, "direct": its model trained at the top stage only on
  as many images}; quick: a tiny digits pair."""
  if quick:
    progressive = c.config(c.TINY, "digits", c.schedule(192, 192, 192, batch=32, resolutions=(8,),
                                                        lr_4=3e-3, lr=1e-3), data_dir,
                           eval_every_images=128, adam_b2=0.99, anneal_images=64)
  else:
    progressive = TrainConfig.from_dict(dict(
        config_files.preset("main"), eval_every_images=3_200, eval_images=256,
        checkpoint_every_images=10**9, keep_checkpoints=1, data_dir=data_dir))
  top = progressive.model.max_resolution
  stages = {r: progressive.stage(r) for r in progressive.model.resolutions}
  direct = {r: dataclasses.replace(s, fade_images=0, stable_images=0)
            for r, s in stages.items() if r < top}
  direct[top] = dataclasses.replace(stages[top], fade_images=0,
                                    stable_images=phases(progressive)[-1].end,
                                    learning_rate=direct_lr or stages[top].learning_rate)
  return {"progressive": progressive,
          "direct": dataclasses.replace(progressive, stages=direct)}


def crossing(evals: list[dict], level: float, axis: str) -> float | None:
  """Where (on `axis`) the PSNR curve first reaches `level`, interpolated; None if never."""
  xs = [e[axis] for e in evals]
  ys = [e["psnr_full"] for e in evals]
  for i, y in enumerate(ys):
    if y >= level:
      if i == 0:
        return xs[0]
      return float(np.interp(level, [ys[i - 1], y], [xs[i - 1], xs[i]]))
  return None


def at(evals: list[dict], x: float, axis: str) -> float:
  """The PSNR curve's value at `x` on `axis`, interpolated between evaluations."""
  return float(np.interp(x, [e[axis] for e in evals], [e["psnr_full"] for e in evals]))


def compare(progressive: c.Run, direct: c.Run) -> dict:
  """One seed's numbers. The speed-up is measured at the direct model's best held-out PSNR
  (not its last, which one late loss spike can pull down): the time the direct run took to
  get there over the time the progressive run took to get there."""
  p, d = progressive.evals, direct.evals
  p_time, d_time = p[-1]["train_seconds"], d[-1]["train_seconds"]
  level = max(e["psnr_full"] for e in d)
  direct_s = crossing(d, level, "train_seconds")
  reach_s = crossing(p, level, "train_seconds")
  direct_images = crossing(d, level, "images_seen")
  reach_images = crossing(p, level, "images_seen")
  return {"seed": progressive.seed,
          "progressive_psnr": p[-1]["psnr_full"], "progressive_ssim": p[-1]["ssim_full"],
          "direct_psnr": d[-1]["psnr_full"], "direct_ssim": d[-1]["ssim_full"],
          "progressive_best_psnr": max(e["psnr_full"] for e in p), "direct_best_psnr": level,
          "progressive_seconds": p_time, "direct_seconds": d_time,
          "direct_psnr_at_progressive_seconds": at(d, p_time, "train_seconds"),
          "direct_seconds_to_its_best": direct_s,
          "progressive_seconds_to_direct_best": reach_s,
          "progressive_images_to_direct_best": reach_images,
          "direct_images_to_its_best": direct_images,
          "speedup": direct_s / reach_s if reach_s else None,
          # Where compiles take most of a short run's seconds (a GPU), images tell more.
          "speedup_in_images": direct_images / reach_images if reach_images else None}


def plot(runs: dict[str, list[c.Run]]):
  from progae_jax import plots
  fig, axes = plots.plt.subplots(2, 2, figsize=(11, 7.5), sharex="col")
  colours = {"progressive": "tab:blue", "direct": "tab:orange"}
  for label, seeded in runs.items():
    for i, r in enumerate(seeded):
      for row, metric in enumerate(("psnr_full", "ssim_full")):
        for col, axis in enumerate(("images_seen", "train_seconds")):
          axes[row, col].plot([e[axis] for e in r.evals], [e[metric] for e in r.evals], "o-",
                              ms=3, color=colours[label], alpha=0.8,
                              label=label if i == 0 else None)
  growths = [r.train[i - 1]["images_seen"] for r in runs["progressive"][:1]
             for i in c.growth_indices(r.train).values()]
  top = runs["direct"][0].config.model.max_resolution
  for row, name in enumerate((f"held-out PSNR at {top}x{top} (dB)",
                              f"held-out SSIM at {top}x{top}")):
    for x in growths:
      axes[row, 0].axvline(x, color="grey", ls=":", lw=1)
    for ax in axes[row]:
      ax.set_ylabel(name)
      ax.grid(alpha=0.3)
      ax.legend()
  axes[1, 0].set_xlabel("images seen (dotted: growth)")
  axes[1, 1].set_xlabel("training seconds (evaluation excluded)")
  fig.suptitle(f"Progressive vs direct, {len(runs['direct'])} seeds, "
               f"{runs['direct'][0].config.dataset}")
  return fig


def summarize(per_seed: list[dict]) -> dict:
  keys = ("progressive_psnr", "direct_psnr", "progressive_ssim", "direct_ssim",
          "progressive_best_psnr", "direct_best_psnr", "progressive_seconds", "direct_seconds",
          "direct_psnr_at_progressive_seconds")
  summary = {k: c.spread(s[k] for s in per_seed) for k in keys}
  reached = [s for s in per_seed if s["speedup"] is not None]
  summary["reached"] = f"{len(reached)} of {len(per_seed)}"
  if reached:
    for k in ("speedup", "direct_seconds_to_its_best", "progressive_seconds_to_direct_best",
              "progressive_images_to_direct_best", "direct_images_to_its_best",
              "speedup_in_images"):
      summary[k] = c.spread(s[k] for s in reached)
  print(f"final PSNR at equal images: progressive {c.fmt(summary['progressive_psnr'])} dB, "
        f"direct {c.fmt(summary['direct_psnr'])} dB (best on the way: "
        f"{c.fmt(summary['progressive_best_psnr'])} and {c.fmt(summary['direct_best_psnr'])})")
  print(f"training seconds: progressive {c.fmt(summary['progressive_seconds'], 0)}, direct "
        f"{c.fmt(summary['direct_seconds'], 0)}; direct's PSNR at the progressive run's time: "
        f"{c.fmt(summary['direct_psnr_at_progressive_seconds'])} dB")
  print(f"progressive reached direct's best PSNR in {summary['reached']} seeds" +
        (f": in {c.fmt(summary['progressive_seconds_to_direct_best'], 0)} s against direct's "
         f"{c.fmt(summary['direct_seconds_to_its_best'], 0)} s, speed-up "
         f"{c.fmt(summary['speedup'])}x" if reached else ""))
  return summary


def collect(runs_dir: str, out: str) -> dict:
  """result.json and the plot from the runs under `runs_dir` (the seeds both sides have)."""
  runs, records = c.read_runs(runs_dir, NAME)
  quick = records[0].get("quick", False) if records else False
  missing = c.missing_runs(jobs(quick), runs)
  print(f"missing runs: {', '.join(missing) or 'none'}")
  seeds = sorted({r.seed for r in runs.get("progressive", [])}
                 & {r.seed for r in runs.get("direct", [])})
  if not seeds:
    raise SystemExit(f"--collect {runs_dir}: no seed with both a progressive and a direct run "
                     f"under {os.path.join(runs_dir, NAME)}")
  runs = {k: [r for r in runs[k] if r.seed in seeds] for k in VARIANTS}
  per_seed = [compare(pr, dr) for pr, dr in zip(runs["progressive"], runs["direct"])]
  result = {**c.provenance(runs_dir, records), "quick": quick, "missing": missing,
            "seeds": len(seeds), "per_seed": per_seed, "summary": summarize(per_seed),
            "configs": {k: v[0].config.to_dict() for k, v in runs.items()},
            "curves": {k: [r.evals for r in v] for k, v in runs.items()}}
  c.write_collected(out, NAME, result, plot(runs))
  return result


def jobs(quick: bool, seeds: int | None = None) -> list[dict]:
  """The runs, seed-major; direct first in each seed (its steps are all at 32x32)."""
  return [{"args": ["--variant", v, "--seed", str(s)], "pool": "device", "seed": s}
          for s in range(seeds or (1 if quick else 3)) for v in ("direct", "progressive")]


def _one_job(args) -> int:
  cfg = dataclasses.replace(variants(args.quick, args.data_dir, args.direct_lr)[args.variant],
                            seed=args.seed, deterministic=args.deterministic)
  run = c.run(cfg, os.path.join(args.workdir, args.variant, f"seed{args.seed}"), args.variant)
  c.write_run(args.out, NAME, run, quick=args.quick)
  return 0


def main(argv=None) -> int:
  p = c.parser(__doc__, NAME, reuse=False)
  c.add_job_flags(p, VARIANTS)
  p.add_argument("--direct-lr", type=float, default=None,
                 help="the direct model's Adam learning rate (default: the preset's 32x32 "
                      "rate, 3e-4 today, the better of 1e-3 and 3e-4 in "
                      "experiments/direct_lr_pilot.py)")
  args = c.parse_job_args(p, argv, NAME)
  c.set_command(__file__, argv)
  c.set_up_job(args)
  extra = ("--direct-lr", str(args.direct_lr)) if args.direct_lr else ()
  return c.dispatch(p, args, NAME, jobs, _one_job, collect, extra)


if __name__ == "__main__":
  sys.exit(main())
