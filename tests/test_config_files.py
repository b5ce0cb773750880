"""Configs as data: TrainConfig.from_dict is strict, config files and overrides resolve to one
TrainConfig, and every bad one is a single line from the CLI."""

import json
import os
import subprocess
import sys

import pytest

from conftest import tiny_config_py
from progae_jax import cli, config_files
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
  assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


# ---------------------------------------------------------------------------------------------
# Files, presets and overrides, through the CLI's build_config


_build = cli.train_config  # What `progae train ARGV` would train.


TINY_PY = tiny_config_py(stable_images=32)


@pytest.fixture
def tiny_py(tmp_path):
  path = tmp_path / "tiny.py"
  path.write_text(TINY_PY)
  return str(path)


def test_a_preset_is_its_config_file(data_dir):
  by_name = _build(["--preset", "main", "--data-dir", data_dir])
  by_path = _build(["--config", os.path.join(REPO, "configs", "main.py"), "--data-dir", data_dir])
  assert by_name == by_path and by_name == _build(["--data-dir", data_dir])
  assert by_name.model.image_channels == 3 and by_name.stage(32).stable_images == 25_600


def test_a_py_file_then_flags_then_overrides(tiny_py, data_dir):
  config = _build(["--config", tiny_py, "--data-dir", data_dir, "--seed", "3",
                   "--config.model.latent_dim=16", "--config.stages.8.batch_size", "16",
                   "--config.ema_decay=None", "--config.dataset_options.fit=pad"])
  assert config.dataset == "digits" and config.model.image_channels == 1  # from the dataset
  assert config.model.latent_dim == 16 and config.seed == 3 and config.ema_decay is None
  assert config.stage(8).batch_size == 16 and config.stage(8).fade_images == 20_000
  assert config.stage(4).batch_size == 32 and config.dataset_options == {"fit": "pad"}
  # Keys the file leaves out keep TrainConfig's defaults, not a preset's.
  assert config.eval_every_images == TrainConfig.eval_every_images


def test_a_json_file_is_merged_over_the_preset_key_by_key(tmp_path, data_dir):
  path = tmp_path / "c.json"
  path.write_text(json.dumps({"stages": {"16": {"batch_size": 32}}}))
  config = _build(["--preset", "main", "--config", str(path), "--data-dir", data_dir])
  assert config.stage(16).batch_size == 32 and config.stage(16).stable_images == 19_200
  assert config.stage(4).learning_rate == 1e-3  # The preset's other stages stay.


def test_the_resolved_config_json_rebuilds_the_same_config(tmp_path, tiny_py, data_dir):
  config = _build(["--config", tiny_py, "--data-dir", data_dir, "--config.seed=7"])
  config_files.save(str(tmp_path), config)
  assert _build(["--config", str(tmp_path / "config.json")]) == config


BAD_FILES = {
    "top.json": ('{"bogus": 1}', "unknown key 'bogus' at the top level; allowed there: "),
    "model.json": ('{"model": {"bogus": 1}}', "unknown key 'bogus' in 'model'; allowed there: "
                   "channels, equalized_lr, image_channels, latent_dim, leaky_slope, "
                   "max_resolution"),
    "stage.json": ('{"stages": {"4": {"bogus": 1}}}', "unknown key 'bogus' in 'stages.4'"),
    "options.json": ('{"dataset_options": {"nonsense": 1}}',
                     "unknown key 'nonsense' in 'dataset_options'; allowed there: channels, data_resolution, fit, "),
    "list.json": ("[1, 2]", "holds list, not a mapping"),
    "null.json": ("null", "holds null, not a mapping"),
    "broken.json": ('{"seed": ', "not a readable JSON file"),
    "none.py": ("x = 1\n", "defines no get_config()"),
    "raises.py": ("def get_config():\n  raise KeyError('latent')\n", "KeyError: 'latent'"),
    "typo.py": (TINY_PY.replace("eval_images", "eval_imgs"), "unknown key 'eval_imgs'"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_each_bad_config_file_is_one_line_with_status_2(name, tmp_path, data_dir, capsys):
  from progae_jax import cli
  text, says = BAD_FILES[name]
  (tmp_path / name).write_text(text)
  status = cli.main(["train", "--config", str(tmp_path / name), "--data-dir", data_dir,
                     "--workdir", str(tmp_path / "w")])
  err = capsys.readouterr().err
  assert status == 2 and says in err, err
  assert err.count("\n") == 1 and err.startswith(f"progae train: error: --config {tmp_path}")
  assert not os.path.exists(tmp_path / "w")  # Refused before anything was made.


@pytest.mark.parametrize("override, says", [
    ("--config.model.latnt_dim=8", "--config.model.latnt_dim: unknown key 'latnt_dim' in "
                                   "'model'; allowed there: channels, "),
    ("--config.stages.big.batch_size=8", "key 'big' in 'stages' is not a resolution"),
    ("--config.seed.x=1", "'seed' holds 0, not a mapping"),
    ("--config.model.latent_dim=-1", "ModelConfig.latent_dim=-1 is invalid"),
])
def test_a_bad_override_is_one_line_with_status_2(override, says, tiny_py, tmp_path, data_dir,
                                                   capsys):
  from progae_jax import cli
  status = cli.main(["train", "--config", tiny_py, override, "--data-dir", data_dir,
                     "--workdir", str(tmp_path / "w")])
  err = capsys.readouterr().err
  assert status == 2 and says in err and err.count("\n") == 1, err


def test_a_file_may_name_the_flags_at_its_top_level(tmp_path, data_dir):
  path = tmp_path / "c.json"
  path.write_text(json.dumps({"dataset": "digits", "max_resolution": 8, "batch_size": 16,
                              "model": {"latent_dim": 8}}))
  config = _build(["--config", str(path), "--data-dir", data_dir])
  assert config.model.max_resolution == 8 and config.model.latent_dim == 8
  assert config.default_stage.batch_size == 16 and config.stage(8).batch_size == 16
