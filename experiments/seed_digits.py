"""The seed's own case: train on 4x4 digits, grow to 8x8, keep what was learned.

    python experiments/seed_digits.py [--workdir runs/digits]

Trains scikit-learn's 8x8 grayscale digits at 4x4, grows the model to 8x8 with a fade-in, and
then checks that the 4x4 stage's kernels are still inside the 8x8 model (they moved on while
training at 8x8, but the 4x4 block was never re-initialised or reshaped).
"""

import argparse

import numpy as np

from progae_jax import ModelConfig, checkpoint, stage_of, train
from progae_jax.schedule import StageSchedule, TrainConfig


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="runs/digits")
  args = parser.parse_args()
  config = TrainConfig(model=ModelConfig(image_channels=1, max_resolution=8),
                       dataset="digits",
                       stages={4: StageSchedule(fade_images=0, stable_images=40_000,
                                                batch_size=64, learning_rate=1e-3)},
                       default_stage=StageSchedule(fade_images=20_000, stable_images=40_000,
                                                   batch_size=64, learning_rate=3e-4),
                       eval_every_images=20_000, checkpoint_every_images=20_000)
  result = train.train_and_evaluate(config, args.workdir, restart=True)
  four, _ = checkpoint.restore(args.workdir, step=train.phases(config)[0].end)
  eight = result.state
  print(f"4x4 checkpoint: {stage_of(four['params'])}; final: {stage_of(eight['params'])}")
  for path in (("encoder", "block_4", "conv1"), ("encoder", "to_latent"),
               ("decoder", "block_4", "conv1")):
    k4, k8 = four["params"], eight["params"]
    for key in path:
      k4, k8 = k4[key], k8[key]
    k4, k8 = np.asarray(k4["kernel"]).ravel(), np.asarray(k8["kernel"]).ravel()
    print(f"{'/'.join(path)}: kernel shape unchanged, correlation with the 4x4-trained "
          f"kernel {np.corrcoef(k4, k8)[0, 1]:.3f}")

if __name__ == "__main__":
  main()
