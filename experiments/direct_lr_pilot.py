"""Which learning rate for the model trained directly at its final size? (a pilot for
progressive_vs_direct.py)

    python experiments/direct_lr_pilot.py            # 2 runs of 25,600 images, 1 seed
    python experiments/direct_lr_pilot.py --quick    # the tiny model on digits (a smoke test)

Trains the default model at 32x32 only, on image_patches, with Adam at 1e-3 (the rate the
progressive run starts with at 4x4) and at 3e-4 (its rate after 4x4), evaluating the
held-out PSNR every 6,400 images. progressive_vs_direct.py gives the direct model the
better one.
"""

from __future__ import annotations

import sys

import _common as c

NAME = "direct_lr_pilot"
RATES = (1e-3, 3e-4)


def variants(quick: bool, data_dir) -> dict:
  """One direct-training config per Adam learning rate, labelled "lr<rate>"."""
  if quick:
    model, dataset, batch, images, every = c.TINY, "digits", 32, 256, 64
  else:
    from progae_jax import ModelConfig
    model, dataset = ModelConfig(image_channels=3, max_resolution=32), "image_patches"
    batch, images, every = 64, 25_600, 6_400
  resolutions = tuple(r for r in model.resolutions if r > 4)
  return {f"lr{lr:g}": c.config(model, dataset,
                               c.schedule(0, 0, 0, batch=batch, resolutions=resolutions,
                                          lr=lr, last_stable=images),
                               data_dir, eval_every_images=every) for lr in RATES}


def plot(runs: dict[str, list[c.Run]]):
  from progae_jax import plots
  fig, ax = plots.plt.subplots(figsize=(6, 4))
  for k, (label, seeded) in enumerate(runs.items()):
    for i, r in enumerate(seeded):
      ax.plot([e["images_seen"] for e in r.evals], [e["psnr_full"] for e in r.evals], "o-",
              ms=3, color=f"C{k}", label=label if i == 0 else None)
  top = next(iter(runs.values()))[0].config.model.max_resolution
  ax.set(xlabel="images seen", ylabel=f"held-out PSNR at {top}x{top} (dB)")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.suptitle(f"Direct training at {top}x{top}: learning rate, "
               f"{len(next(iter(runs.values())))} seed(s)")
  return fig


def main(argv=None) -> int:
  args = c.parser(__doc__, NAME, seeds=1).parse_args(argv)
  c.set_up_cpu()
  configs = variants(args.quick, args.data_dir)
  runs = c.over_seeds(configs, args.seeds, args.workdir, args.reuse)
  summary = {label: c.spread(r.final["psnr_full"] for r in seeded)
             for label, seeded in runs.items()}
  for label, s in summary.items():
    print(f"{label}: final held-out PSNR {c.fmt(s)} dB")
  result = {"quick": args.quick, "seeds": args.seeds, "summary": summary,
            "curves": {label: [[(e["images_seen"], e["psnr_full"]) for e in r.evals]
                               for r in seeded] for label, seeded in runs.items()},
            "configs": {label: cfg.to_dict() for label, cfg in configs.items()}}
  c.write(args.out, NAME, result, plot(runs))
  return 0


if __name__ == "__main__":
  sys.exit(main())
