"""Adam's state at growth: carry it, reset it, or reset it at both ends of the fade?

    python experiments/optimizer_at_growth.py            # full: image_patches 4->16, 3 seeds
    python experiments/optimizer_at_growth.py --quick    # digits, seconds (a smoke test)

`carry` keeps the moments of every kept weight (PIONEER); `reset` starts Adam afresh at
growth; `reset_twice` also when the fade ends (ProGAN). Measured per growth: the loss jump
(the largest training loss of the 10 steps after growth over the mean of the 10 before;
1 = no jump), the same at the fade's end, and the final held-out PSNR/SSIM.
"""

from __future__ import annotations

import sys

import _common as c

NAME = "optimizer_at_growth"
POLICIES = ("carry", "reset", "reset_twice")


def measure(run: c.Run) -> dict:
  growth = {r: c.loss_jump(run.train, i) for r, i in c.growth_indices(run.train).items()}
  fade_end = {r: c.loss_jump(run.train, i) for r, i in c.fade_end_indices(run.train).items()}
  return {"seed": run.seed, "jump_at_growth": growth, "jump_at_fade_end": fade_end,
          "noise_floor": c.noise_floor(run.train),
          "psnr": run.final["psnr_full"], "ssim": run.final["ssim_full"],
          "train_seconds": run.final["train_seconds"]}


def plot(runs: dict[str, list[c.Run]], measured: dict):
  from progae_jax import plots
  fig, (ax, bx) = plots.plt.subplots(1, 2, figsize=(11, 4), width_ratios=(2, 1))
  for k, (label, seeded) in enumerate(runs.items()):
    r = seeded[0]
    ax.plot([t["images_seen"] for t in r.train], [t["loss"] for t in r.train], lw=0.8,
            color=f"C{k}", label=f"{label} (seed 0)")
  first = runs[POLICIES[0]][0].train
  for indices, style in ((c.growth_indices(first), ":"), (c.fade_end_indices(first), "--")):
    for i in indices.values():
      ax.axvline(first[i - 1]["images_seen"], color="grey", ls=style, lw=1)
  ax.set_yscale("log")
  ax.set(xlabel="images seen (dotted: growth, dashed: end of the fade)",
         ylabel="training loss (MSE)")
  ax.legend()
  psnr = [c.spread(m["psnr"] for m in measured[p]) for p in runs]
  bx.bar(list(runs), [s["mean"] for s in psnr], yerr=[s["std"] for s in psnr],
         color=[f"C{k}" for k in range(len(runs))], capsize=4)
  for k, s in enumerate(psnr):
    bx.plot([k] * len(s["values"]), s["values"], "k.", ms=4)
  low = min(min(s["values"]) for s in psnr)
  bx.set_ylim(low - 1.0, max(max(s["values"]) for s in psnr) + 0.5)
  bx.set(ylabel="final held-out PSNR (dB)")
  fig.suptitle(f"Optimizer state at growth, {len(runs[POLICIES[0]])} seeds")
  return fig


def main(argv=None) -> int:
  args = c.parser(__doc__, NAME).parse_args(argv)
  c.set_up_cpu()
  model, dataset, s = c.small_setting(args.quick)
  stages = c.budget_schedule(s["budget"] // 2, **s)
  variants = {p: c.config(model, dataset, stages, args.data_dir, optimizer_on_growth=p,
                          eval_every_images=s["every"]) for p in POLICIES}
  runs = c.over_seeds(variants, args.seeds, args.workdir, args.reuse)
  measured = {p: [measure(r) for r in runs[p]] for p in POLICIES}
  summary = {}
  for p in POLICIES:
    summary[p] = c.spread_over_seeds(measured[p])
    growths = sorted(summary[p]["jump_at_growth"])
    jumps = ", ".join(f"{r}x{r} {c.fmt(summary[p]['jump_at_growth'][r])}" for r in growths)
    ends = ", ".join(f"{r}x{r} {c.fmt(summary[p]['jump_at_fade_end'][r])}" for r in growths)
    print(f"{p:<12} final PSNR {c.fmt(summary[p]['psnr'])} dB; loss jump at growth {jumps}; "
          f"at the fade's end {ends}; with nothing happening {c.fmt(summary[p]['noise_floor'])}")
  result = {"quick": args.quick, "seeds": args.seeds, "summary": summary,
            "per_seed": measured, "config": variants["carry"].to_dict()}
  c.write(args.out, NAME, result, plot(runs, measured))
  return 0


if __name__ == "__main__":
  sys.exit(main())
