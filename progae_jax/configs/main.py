"""The main job: image_patches (RGB 32x32 crops), grown 4x4 -> 8x8 -> 16x16 -> 32x32.

    progae train --config configs/main.py                  # the same run as `progae train`
    progae train --config configs/main.py --config.model.latent_dim=64

Its timing on a 2-core CPU is in the README ("The main job's result"). Every key
is a TrainConfig field (progae_jax/schedule.py, where each is documented with its default);
a key left out keeps TrainConfig's default, a key that is not a field is an error.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.dataset = "image_patches"
  # Channels come from the dataset; latent_dim, channels per resolution and leaky_slope keep
  # ModelConfig's defaults (progae_jax/config.py).
  config.model = ml_collections.ConfigDict({"max_resolution": 32})
  # Every resolution without an entry in `stages` (here 8x8) trains on this schedule. Images,
  # not steps: the schedule means the same at any batch size.
  config.default_stage = ml_collections.ConfigDict({
      "fade_images": 12_800, "stable_images": 12_800, "batch_size": 64,
      "learning_rate": 3e-4})
  # 4x4 has nothing to fade in and takes a higher learning rate; the last two stages train
  # longer than the default.
  config.stages = ml_collections.ConfigDict({
      "4": {"fade_images": 0, "stable_images": 12_800, "batch_size": 64,
            "learning_rate": 1e-3},
      "16": {"fade_images": 12_800, "stable_images": 19_200, "batch_size": 64,
             "learning_rate": 3e-4},
      "32": {"fade_images": 12_800, "stable_images": 25_600, "batch_size": 64,
             "learning_rate": 3e-4},
  })
  # Short CPU runs: an EMA of the weights lagged the weights by ~2 dB held-out PSNR.
  config.ema_decay = None
  # Against the wobble late in fades (docs/results.md, "Smooth growth"): Adam's second
  # moment with a memory of ~100 steps instead of ~1,000, so it follows a fade's growing
  # gradients, and the last stable phase (25,600 images) with the learning rate annealed.
  config.adam_b2 = 0.99
  config.anneal_images = 25_600
  config.eval_every_images = 25_600
  config.checkpoint_every_images = 12_800
  return config
