"""progae_jax: grow a convolutional autoencoder from 4x4 to any resolution without losing
what it learned.

Read in this order: `ops` (the one downsample and upsample), `model` (a stage, named by
resolution), `growth` (grow, finish_fade and the optimizer state that follows), then
`train_state` (the state a run carries and grows) and `train` (the loop). `load` turns a
run's checkpoint into a model to use (`trained`, `export`).
"""

from progae_jax.version import __version__
from progae_jax.checkpoint import CheckpointError, restore
from progae_jax.config import ModelConfig
from progae_jax.growth import finish_fade, grow, grow_opt_state, merge_by_path
from progae_jax import optim
from progae_jax.model import Stage, apply, build, count_params, init_params, stage_of
from progae_jax.ops import downsample, fade_in, fade_target, to_resolution, upsample
from progae_jax.summary import growth_diff, param_table


def __getattr__(name):
  """`progae_jax.load` and `progae_jax.Model` (trained.py), imported when first used: they
  bring the data package (tensorflow_datasets) in."""
  if name in ("load", "Model"):
    from progae_jax import trained
    return getattr(trained, name)
  raise AttributeError(f"module 'progae_jax' has no attribute {name!r}")
