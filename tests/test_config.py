import json

import jax
import numpy as np
import pytest

from progae_jax import ModelConfig
from progae_jax.schedule import StageSchedule, TrainConfig


def test_defaults_are_the_reference_model():
  c = ModelConfig()
  assert c.image_channels == 3 and c.max_resolution == 32 and c.latent_dim == 128
  assert dict(c.channels) == {4: 128, 8: 128, 16: 64, 32: 32}
  assert dict(ModelConfig(max_resolution=128).channels)[128] == 8
  assert c.leaky_slope == 0.2
  assert c.resolutions == (4, 8, 16, 32)


def test_hashable_and_static_for_jit():
  c = ModelConfig(channels={4: 8, 8: 4}, max_resolution=8)
  assert hash(c) == hash(ModelConfig(channels={8: 4, 4: 8}, max_resolution=8))
  f = jax.jit(lambda cfg, x: x * cfg.latent_dim, static_argnums=0)
  assert float(f(c, 2.0)) == 256.0


def test_dict_round_trip():
  c = ModelConfig(image_channels=1, max_resolution=16, channels={4: 8, 8: 8, 16: 4},
                  latent_dim=16)
  assert ModelConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize("kwargs, field", [
    ({"image_channels": 0}, "image_channels"),
    ({"image_channels": 1.5}, "image_channels"),
    ({"max_resolution": 24}, "max_resolution"),
    ({"max_resolution": 4}, "max_resolution"),
    ({"channels": {4: 8}}, "channels"),
    ({"channels": {4: 8, 8: 0, 16: 8, 32: 8}}, "channels"),
    ({"channels": {3: 8, 4: 8, 8: 8, 16: 8, 32: 8}}, "channels"),
    ({"channels": "wide"}, "channels"),
    ({"latent_dim": -1}, "latent_dim"),
    ({"leaky_slope": 1.5}, "leaky_slope"),
])
def test_every_field_is_validated(kwargs, field):
  with pytest.raises(ValueError, match=f"ModelConfig.{field}="):
    ModelConfig(**kwargs)


def test_a_bool_is_never_a_count_and_numpy_integers_are_stored_as_ints():
  with pytest.raises(ValueError, match="ModelConfig.latent_dim=True is invalid"):
    ModelConfig(latent_dim=True)
  with pytest.raises(ValueError, match="StageSchedule.batch_size=True is invalid"):
    StageSchedule(batch_size=True)
  with pytest.raises(ValueError, match="TrainConfig.keep_checkpoints=False is invalid"):
    TrainConfig(keep_checkpoints=False)
  c = ModelConfig(image_channels=np.int64(1), max_resolution=np.int32(8),
                  channels={4: np.int64(8), 8: 8}, latent_dim=np.int64(8))
  assert all(type(v) is int for v in (c.image_channels, c.max_resolution, c.latent_dim))
  assert json.loads(json.dumps(TrainConfig(model=c, seed=np.int64(3)).to_dict()))["seed"] == 3


@pytest.mark.parametrize("kwargs, field", [
    ({"seed": -1}, "seed"), ({"seed": "1"}, "seed"), ({"ema_decay": "0.9"}, "ema_decay"),
    ({"eval_images": 0}, "eval_images"), ({"compute_dtype": "float16"}, "compute_dtype"),
])
def test_every_train_field_is_validated(kwargs, field):
  with pytest.raises(ValueError, match=f"TrainConfig.{field}="):
    TrainConfig(**kwargs)
