"""The seed's own case: 1,797 8x8 grayscale digits, trained at 4x4 then grown to 8x8.

    progae train --preset digits            # or: progae train --config configs/digits.py

Every key is a TrainConfig field (progae_jax/schedule.py, where each is documented with its
default); a key left out keeps TrainConfig's default, a key that is not a field is an error.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.dataset = "digits"
  config.model = ml_collections.ConfigDict({"max_resolution": 8})
  # 8x8: a fade of 20,000 images, then 40,000 at alpha = 1.
  config.default_stage = ml_collections.ConfigDict({
      "fade_images": 20_000, "stable_images": 40_000, "batch_size": 64,
      "learning_rate": 3e-4})
  # 4x4 has nothing to fade in and takes a higher learning rate.
  config.stages = ml_collections.ConfigDict({
      "4": {"fade_images": 0, "stable_images": 40_000, "batch_size": 64,
            "learning_rate": 1e-3},
  })
  config.ema_decay = None
  config.eval_every_images = 20_000
  config.checkpoint_every_images = 20_000
  return config
