"""Which learning rate for the model trained directly at 32x32? (a pilot for
progressive_vs_direct.py, one seed)

    python experiments/direct_lr_pilot.py    # 2 runs of 25,600 images, about 6 minutes here

Trains the default model at 32x32 only, on image_patches, with Adam at 1e-3 (the rate the
progressive run starts with at 4x4) and at 3e-4 (its rate after 4x4), and prints the
held-out PSNR every 6,400 images. progressive_vs_direct.py gives the direct model the
better one.
"""

import sys

import _common as c

NAME = "direct_lr_pilot"


def main(argv=None) -> int:
  p = c.parser(__doc__, NAME)
  p.set_defaults(seeds=1)
  args = p.parse_args(argv)
  c.set_up_cpu()
  from progae_jax import ModelConfig
  model = ModelConfig(image_channels=3, max_resolution=32)
  curves = {}
  for lr in (1e-3, 3e-4):
    stages = c.schedule(0, 0, 0, last_stable=25_600, lr=lr)
    cfg = c.config(model, "image_patches", stages, args.data_dir, eval_every_images=6_400)
    r = c.run(cfg, f"{args.workdir}/lr{lr}", f"direct, Adam {lr}", args.reuse)
    curves[lr] = [(e["images_seen"], round(e["psnr_full"], 2)) for e in r.evals]
    print(f"  (images seen, held-out PSNR): {curves[lr]}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
