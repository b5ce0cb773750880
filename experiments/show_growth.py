"""Prints what growth does to the parameter tree, using the library's own diff.

    python experiments/show_growth.py

This is the output shown in the README's "How growth works".
"""

import jax

import progae_jax as pj


def main():
  config = pj.ModelConfig(image_channels=1, max_resolution=8)
  four = pj.init_params(config, 4, jax.random.key(0))
  print("== the 4x4 model ==")
  print(pj.param_table(four))
  grown = pj.grow(four, config, jax.random.key(1))
  print("\n== grow(params, config, rng): 4x4 stable -> 8x8 fading ==")
  print(pj.growth_diff(four, grown))
  stable = pj.finish_fade(grown)
  print("\n== finish_fade(params): 8x8 fading -> 8x8 stable ==")
  print(pj.growth_diff(grown, stable))


if __name__ == "__main__":
  main()
