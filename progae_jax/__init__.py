"""progae_jax: grow a convolutional autoencoder from 4x4 to any resolution without losing what it learned."""

__version__ = "0.1.0"

from progae_jax.config import ModelConfig
from progae_jax.ops import downsample, fade_in, fade_target, upsample
