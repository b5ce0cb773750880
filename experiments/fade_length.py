"""Fade length: how much does fading a new resolution in (rather than switching) matter?

    python experiments/fade_length.py            # full: image_patches 4->16, 3 seeds
    python experiments/fade_length.py --quick    # digits, seconds (a smoke test)

Every growth gets the same number of images; a fade of F images leaves the rest to the
stable phase, so every variant trains on equally many images at every resolution. F = 0 is
no fade: the new resolution's path takes over at once. Measured: the loss jump at growth
(the largest training loss of the 10 steps after growth over the mean of the 10 before;
1 = no jump) and the final held-out PSNR/SSIM.
"""

from __future__ import annotations

import sys

import _common as c

NAME = "fade_length"


def fades(budget: int) -> tuple[int, ...]:
  """No fade, an eighth, half, and all of a growth's images."""
  return (0, budget // 8, budget // 2, budget)


def measure(run: c.Run) -> dict:
  growth = {r: c.loss_jump(run.train, i) for r, i in c.growth_indices(run.train).items()}
  return {"seed": run.seed, "jump_at_growth": growth, "noise_floor": c.noise_floor(run.train),
          "psnr": run.final["psnr_full"],
          "ssim": run.final["ssim_full"]}


def plot(summary: dict, budget: int):
  from progae_jax import plots
  fig, (ax, bx) = plots.plt.subplots(1, 2, figsize=(10, 4))
  xs = [int(f) for f in summary]
  resolutions = sorted(next(iter(summary.values()))["jump_at_growth"])
  for r in resolutions:
    s = [summary[f]["jump_at_growth"][r] for f in summary]
    ax.errorbar(xs, [v["mean"] for v in s], yerr=[v["std"] for v in s], marker="o",
                capsize=3, label=f"growth to {r}x{r}")
  ax.set_yscale("log")
  ax.set(xlabel=f"fade images (of {budget:,} per growth)",
         ylabel="loss jump at growth (max after / mean before)")
  ax.legend()
  s = [summary[f]["psnr"] for f in summary]
  bx.errorbar(xs, [v["mean"] for v in s], yerr=[v["std"] for v in s], marker="o", capsize=3)
  for x, v in zip(xs, s):
    bx.plot([x] * len(v["values"]), v["values"], "k.", ms=4)
  bx.set(xlabel="fade images", ylabel="final held-out PSNR (dB)")
  for a in (ax, bx):
    a.grid(alpha=0.3)
  fig.suptitle(f"Fade length, {len(s[0]['values'])} seeds")
  return fig


def main(argv=None) -> int:
  args = c.parser(__doc__, NAME).parse_args(argv)
  c.set_up_cpu()
  model, dataset, s = c.small_setting(args.quick)
  variants = {str(f): c.config(model, dataset, c.budget_schedule(f, **s), args.data_dir,
                               eval_every_images=s["every"]) for f in fades(s["budget"])}
  runs = c.over_seeds(variants, args.seeds, args.workdir, args.reuse)
  summary = {}
  for f, seeded in runs.items():
    m = [measure(r) for r in seeded]
    summary[f] = dict(c.spread_over_seeds(m), per_seed=m)
    growths = sorted(summary[f]["jump_at_growth"])
    jumps = ", ".join(f"{r}x{r} {c.fmt(summary[f]['jump_at_growth'][r])}" for r in growths)
    print(f"fade {int(f):>6,} images: final PSNR {c.fmt(summary[f]['psnr'])} dB, "
          f"SSIM {c.fmt(summary[f]['ssim'], 3)}; loss jump at growth {jumps}; with nothing "
          f"happening {c.fmt(summary[f]['noise_floor'])}")
  result = {"quick": args.quick, "seeds": args.seeds, "images_per_growth": s["budget"],
            "summary": summary, "config": variants[str(s["budget"] // 2)].to_dict()}
  c.write(args.out, NAME, result, plot(summary, s["budget"]))
  return 0


if __name__ == "__main__":
  sys.exit(main())
