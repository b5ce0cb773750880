"""A model big enough for a GPU: ProGAN's shape, 4x4 -> 128x128 RGB, in bfloat16.

    progae train --preset large                       # image_patches_128: 128x128 RGB crops
    progae train --preset large --dataset PATH        # or any folder of images (stored at 128)
    progae bench --preset large                       # its training speed, stage by stage

Channels as ProGAN's generator has them up to 128x128: 512 from 4x4 to 32x32, then halving
(256 at 64x64, 128 at 128x128). Wide where the maps are small and narrow where they are large
keeps the work per stage within a factor of a few (a 3x3 convolution costs resolution^2 x
channels^2: 32x32x512^2 = 64x64x256^2 = 128x128x128^2), so no stage is launch-bound at a
GPU-sized batch and none dwarfs the others; the bfloat16 matrix units want channel counts
that are multiples of 64. The latent is 512 wide, like ProGAN's.

On the CPU this preset builds, compiles and takes steps (tests/test_large_preset.py grows it at a
reduced width); it is meant to finish on a GPU. Its FLOPs per image and speed per stage are
in docs/accelerators.md. Every key is a TrainConfig field (progae_jax/schedule.py); a key
left out keeps TrainConfig's default.
"""

import ml_collections

CHANNELS = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128}


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # 10,000 train and 1,000 test crops of the packaged photographs, stored at 128x128.
  config.dataset = "image_patches_128"
  config.model = ml_collections.ConfigDict({
      "max_resolution": 128, "channels": {str(r): c for r, c in CHANNELS.items()},
      "latent_dim": 512})
  # bfloat16 on the matrix units; parameters, Adam and the loss stay float32.
  config.compute_dtype = "bfloat16"
  # Images, not steps, as in the main preset: 200,000 per fade and per stable phase (a
  # quarter of ProGAN's 800,000, for a data set of 10,000 crops), 4.4 M images in all:
  # about 11 minutes of steps on an H200 at 40% MFU (docs/accelerators.md). Batch 256 from
  # 16x16 on is 4-63 TFLOP a step; 4x4 and 8x8 take 1,024 so that their small maps still
  # fill the device.
  config.default_stage = ml_collections.ConfigDict({
      "fade_images": 200_000, "stable_images": 200_000, "batch_size": 256,
      "learning_rate": 3e-4})
  config.stages = ml_collections.ConfigDict({
      "4": {"fade_images": 0, "stable_images": 200_000, "batch_size": 1024,
            "learning_rate": 1e-3},
      "8": {"fade_images": 200_000, "stable_images": 200_000, "batch_size": 1024,
            "learning_rate": 3e-4},
  })
  # As the main preset (docs/results.md, "Smooth growth"): Adam's second moment with a
  # memory of ~100 steps, and the last stable phase with the learning rate annealed.
  config.ema_decay = None
  config.adam_b2 = 0.99
  config.anneal_images = 200_000
  config.eval_every_images = 200_000
  config.checkpoint_every_images = 200_000
  return config
