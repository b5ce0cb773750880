"""Configs as data: TrainConfig.from_dict is strict, config files and overrides resolve to one
TrainConfig, and every bad one is a single line from the CLI."""

import json
import os
import subprocess
import sys

import pytest

from progae_jax import config_files
from progae_jax.config import ConfigError
from progae_jax.schedule import StageSchedule, TrainConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("d, where, key", [
    ({"bogus": 1}, "at the top level", "'bogus'"),
    ({"model": {"bogus": 1}}, "in 'model'", "'bogus'"),
    ({"stages": {"4": {"bogus": 1}}}, "in 'stages.4'", "'bogus'"),
    ({"default_stage": {"batch": 8}}, "in 'default_stage'", "'batch'"),
    ({"dataset_options": {"nonsense": 1}}, "in 'dataset_options'", "'nonsense'"),
])
def test_an_unknown_key_at_any_level_names_itself_where_and_the_allowed_ones(d, where, key):
  with pytest.raises(ConfigError) as e:
    TrainConfig.from_dict(d)
  message = str(e.value)
  assert f"unknown key {key} {where}" in message and "\n" not in message
  allowed = message.split("allowed there: ")[1].split(", ")
  expected = {"at the top level": "stages", "in 'model'": "latent_dim",
              "in 'stages.4'": "batch_size", "in 'default_stage'": "batch_size",
              "in 'dataset_options'": "fit"}[where]
  assert expected in allowed


@pytest.mark.parametrize("d, says", [
    ([], "the config must be a mapping"), (None, "got null"),
    ({"model": [1]}, "'model' must be a mapping"), ({"stages": {"4": 3}}, "'stages.4' must"),
    ({"stages": {"sixteen": {}}}, "key 'sixteen' in 'stages' is not a resolution"),
])
def test_a_list_or_null_where_a_mapping_belongs_is_one_error(d, says):
  with pytest.raises(ConfigError, match=says):
    TrainConfig.from_dict(d)


def test_the_resolved_dict_round_trips():
  config = TrainConfig(stages={8: StageSchedule(batch_size=8)}, ema_decay=None,
                       dataset_options={"fit": "resize"})
  assert TrainConfig.from_dict(json.loads(config.to_json())) == config
