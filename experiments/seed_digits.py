"""The seed's own case: train on 4x4 digits, grow to 8x8, keep what was learned.

    python experiments/seed_digits.py            # full: the digits preset's schedule, 3 seeds
    python experiments/seed_digits.py --quick    # the tiny model, seconds (a smoke test)

Trains scikit-learn's 8x8 grayscale digits at 4x4, stops there (a checkpoint, as a
preempted job would), resumes, grows the model to 8x8 with a fade-in and trains on. Reported
per seed: held-out PSNR of the 4x4 model (at 4x4, and enlarged to 8x8), of the final 8x8
model, the loss jump at growth (1 = none), and how much the 4x4-trained kernels still match
in the 8x8 model (they train on, but are never re-initialised or reshaped). The figure shows
held-out digits, the 4x4 model's reconstructions and the 8x8 model's.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import numpy as np

import _common as c

NAME = "seed_digits"
SHARED_KERNELS = (("encoder", "block_4", "conv1"), ("encoder", "to_latent"),
                  ("decoder", "block_4", "conv1"))


def kernel(params, path):
  for key in path:
    params = params[key]
  return np.asarray(params["kernel"])


def one_seed(cfg, workdir: str):
  """Trains to the end of the 4x4 stage, then resumes to the end; both states and the run."""
  from progae_jax import train
  four = train.phases(cfg)[0]
  stopped = train.train_and_evaluate(cfg, workdir, restart=True, progress=False,
                                     stop_after_images=four.end)
  state_4 = stopped.state
  # Resumes from the 4x4 checkpoint: growth happens in the second call.
  state_8 = train.train_and_evaluate(cfg, workdir, progress=False).state
  return state_4, state_8, c.Run.read("digits", cfg, workdir, float("nan"))


def reconstructions(cfg, params, resolution: int, count: int = 10) -> tuple:
  from progae_jax import data
  from progae_jax.model import apply
  images = data.eval_images(cfg.dataset, resolution=resolution, count=count,
                            data_dir=cfg.data_dir)
  return images, np.clip(np.asarray(apply(cfg.model, params, images, 1.0)[0]), 0, 1)


def figure(cfg, state_4, state_8, measured):
  from progae_jax import plots, to_resolution
  originals, recon_8 = reconstructions(cfg, state_8["params"], 8)
  _, recon_4 = reconstructions(cfg, state_4["params"], 4)
  recon_4 = to_resolution(recon_4, 8)  # shown at 8x8, pixels doubled
  rows = [("held-out digits (8x8)", originals),
          (f"4x4 model ({measured['psnr_4']:.1f} dB at 4x4)", recon_4),
          (f"grown 8x8 model ({measured['psnr_8']:.1f} dB)", recon_8)]
  fig, axes = plots.plt.subplots(len(rows), 1, figsize=(8, 3.4))
  for ax, (title, images) in zip(axes, rows):
    strip = np.concatenate([np.pad(im[..., 0], 1, constant_values=1) for im in images], axis=1)
    ax.imshow(strip, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")
  fig.suptitle(f"digits: trained at 4x4, grown to 8x8 (seed {measured['seed']})", fontsize=10)
  return fig


def main(argv=None) -> int:
  args = c.parser(__doc__, NAME, reuse=False).parse_args(argv)
  c.set_up_cpu()
  from progae_jax import ModelConfig
  if args.quick:
    model, stages = c.TINY, c.schedule(256, 128, 128, batch=32, resolutions=(8,), lr_4=3e-3,
                                       lr=1e-3)
  else:  # The digits preset (`progae train --preset digits`).
    model = ModelConfig(image_channels=1, max_resolution=8)
    stages = c.schedule(40_000, 20_000, 40_000, resolutions=(8,))
  cfg = c.config(model, "digits", stages, args.data_dir, eval_every_images=10**9,
                 keep_checkpoints=2)
  measured, figure_states = [], None
  for seed in range(args.seeds):
    cfg_seed = dataclasses.replace(cfg, seed=seed)
    state_4, state_8, run = one_seed(cfg_seed, os.path.join(args.workdir, f"seed{seed}"))
    end_4 = next(e for e in run.evals if e["resolution"] == 4)
    m = {"seed": seed, "psnr_4": end_4["psnr"], "psnr_4_enlarged_to_8": end_4["psnr_full"],
         "psnr_8": run.final["psnr"], "ssim_8": run.final["ssim"],
         "jump_at_growth": c.loss_jump(run.train, c.growth_indices(run.train)[8]),
         "kernel_correlation": {"/".join(p): float(np.corrcoef(
             kernel(state_4["params"], p).ravel(), kernel(state_8["params"], p).ravel())[0, 1])
             for p in SHARED_KERNELS},
         "kernel_shapes_unchanged": all(
             kernel(state_4["params"], p).shape == kernel(state_8["params"], p).shape
             for p in SHARED_KERNELS)}
    print(f"  seed {seed}: 4x4 {m['psnr_4']:.2f} dB (enlarged to 8x8: "
          f"{m['psnr_4_enlarged_to_8']:.2f} dB) -> 8x8 {m['psnr_8']:.2f} dB; loss jump at "
          f"growth {m['jump_at_growth']:.3f}; kernels kept their shapes: "
          f"{m['kernel_shapes_unchanged']}, correlation with the 4x4-trained ones " +
          ", ".join(f"{v:.2f}" for v in m["kernel_correlation"].values()), flush=True)
    measured.append(m)
    if seed == 0:
      figure_states = (cfg_seed, state_4, state_8, m)
  keys = ("psnr_4", "psnr_4_enlarged_to_8", "psnr_8", "ssim_8", "jump_at_growth")
  summary = {k: c.spread(m[k] for m in measured) for k in keys}
  print(f"4x4: {c.fmt(summary['psnr_4'])} dB; grown 8x8: {c.fmt(summary['psnr_8'])} dB; "
        f"loss jump at growth {c.fmt(summary['jump_at_growth'], 3)}")
  result = {"quick": args.quick, "seeds": args.seeds, "summary": summary, "per_seed": measured,
            "config": cfg.to_dict()}
  c.write(args.out, NAME, result, figure(*figure_states))
  return 0


if __name__ == "__main__":
  sys.exit(main())
