"""The main job: image_patches (RGB photo crops), 4x4 -> 8x8 -> 16x16 -> 32x32.

    python experiments/main_job.py [any `progae train` option]

Same as `progae train` with no options; written here so the experiment has a script of its own.
"""

import sys

from progae_jax.cli import main

if __name__ == "__main__":
  sys.exit(main(["train", "--workdir", "runs/main", *sys.argv[1:]]))
