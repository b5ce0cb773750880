"""Configs as files: presets, `--config FILE` (.py with `get_config()`, or .json), overrides.

    preset (--preset, default main)  or  --config FILE  or  --preset P --config FILE (merged)
        -> flags (--dataset, --batch-size, ...)
        -> overrides (--config.model.latent_dim=64, --config.stages.16.batch_size=32)
        -> TrainConfig.from_dict: the one check of every key and value
        -> WORKDIR/config.json, the whole resolved config, written when the run starts

A config is a nested dict in TrainConfig.to_dict's layout; a `.py` file follows the
ml_collections convention (`get_config()` returning a ConfigDict, or a plain dict), as the
Flax examples and big_vision do. The presets are such files in progae_jax/configs/, shipped
with the package. Keys a file leaves out keep TrainConfig's defaults.
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import json
import os
from typing import Any, Iterable

from progae_jax import config as config_lib
from progae_jax.config import ConfigError

PRESETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
OVERRIDE_PREFIX = "--config."
CONFIG_JSON = "config.json"
# What config.json records about the run beside its config (continuations on new contents of
# its folder, pinning.py); `load` leaves it out, so the file still runs the same config.
RUN_RECORDS = ("data_changes",)


def preset_names() -> list[str]:
  return sorted(f[:-3] for f in os.listdir(PRESETS_DIR)
                if f.endswith(".py") and not f.startswith("_"))


def preset(name: str) -> dict:
  """The fields of a preset (a config file in progae_jax/configs/)."""
  if name not in preset_names():
    raise ConfigError(f"no preset {name!r}; presets: {', '.join(preset_names())}")
  return load(os.path.join(PRESETS_DIR, name + ".py"))


def load(path: str) -> dict:
  """The fields a config file holds: a `.py` file's `get_config()`, or a JSON object."""
  if not os.path.isfile(path):
    raise ConfigError(f"--config {path}: no such file")
  if path.endswith(".py"):
    fields = _from_python(path)
  else:
    try:
      with open(path) as f:
        fields = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
      raise ConfigError(f"--config {path}: not a readable JSON file ({e}); a config is a "
                        ".py file with get_config() or a .json file") from None
  if hasattr(fields, "to_dict"):  # An ml_collections ConfigDict.
    fields = fields.to_dict()
  if not isinstance(fields, dict):
    got = "null" if fields is None else type(fields).__name__
    raise ConfigError(f"--config {path}: holds {got}, not a mapping of TrainConfig fields")
  fields = {k: v for k, v in fields.items() if k not in RUN_RECORDS}
  fields = unfold_flag_names(fields)
  check_keys(fields, f"--config {path}")
  return fields


# Top-level keys named like the flags, which config files have always been allowed to use:
# where each one sits in TrainConfig's layout.
FLAG_NAMES = {"max_resolution": "model", "batch_size": "default_stage",
              "fade_images": "default_stage", "stable_images": "default_stage",
              "learning_rate": "default_stage"}


def unfold_flag_names(fields: dict) -> dict:
  """{"max_resolution": 8, "batch_size": 32} -> {"model": {"max_resolution": 8},
  "default_stage": {"batch_size": 32}}; every other key as it is (a new copy)."""
  out = {k: copy.deepcopy(v) for k, v in fields.items() if k not in FLAG_NAMES}
  for key, parent in FLAG_NAMES.items():
    if key in fields:
      out[parent] = {**config_lib.check_keys(out.get(parent, {}), None, parent),
                     key: fields[key]}
  return out


def check_keys(fields: dict, source: str) -> None:
  """The key check of TrainConfig.from_dict on what one source (a file, an override) holds,
  its errors naming the source. Values are checked once the config is whole."""
  from progae_jax.schedule import TrainConfig
  try:
    TrainConfig.from_dict(fields)
  except ConfigError as e:
    raise ConfigError(f"{source}: {e}") from None
  except ValueError:
    pass  # A value that fits only with the rest of the config (or is wrong: reported then).


def _from_python(path: str) -> Any:
  name = "progae_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    get_config = getattr(module, "get_config", None)
    if get_config is None:
      raise ConfigError(f"--config {path}: defines no get_config()")
    return get_config()
  except ConfigError:
    raise
  except Exception as e:  # The user's file: whatever it raises is reported in one line.
    raise ConfigError(f"--config {path}: {type(e).__name__}: {e}") from None


def merge(base: dict, over: dict) -> dict:
  """`over`'s fields on top of `base`'s, nested mappings merged key by key (a new copy)."""
  out = copy.deepcopy(base)
  for key, value in over.items():
    if isinstance(value, dict) and isinstance(out.get(key), dict):
      out[key] = merge(out[key], value)
    else:
      out[key] = copy.deepcopy(value)
  return out


def split_overrides(argv: Iterable[str]) -> tuple[list[str], list[tuple[str, str]]]:
  """(argv without the overrides, [(dotted key, value text)]) from `--config.KEY=VALUE` or
  `--config.KEY VALUE` (argparse cannot declare flags whose names are data)."""
  rest, overrides, argv = [], [], list(argv)
  i = 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith(OVERRIDE_PREFIX):
      key, eq, value = arg[len(OVERRIDE_PREFIX):].partition("=")
      if not eq:
        if i + 1 >= len(argv):
          raise ConfigError(f"{arg}: no value (give {arg}=VALUE)")
        value, i = argv[i + 1], i + 1
      overrides.append((key, value))
    else:
      rest.append(arg)
    i += 1
  return rest, overrides


def parse_value(text: str) -> Any:
  """A Python literal (64, 3e-4, None, True, {"fit": "pad"}), else the text as a string."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_override(fields: dict, dotted: str, text: str) -> None:
  """Sets `fields[a][b][c]` for `a.b.c`, after checking the key is a TrainConfig field."""
  keys = dotted.split(".")
  if not all(keys):
    raise ConfigError(f"{OVERRIDE_PREFIX}{dotted}: not a dotted key such as model.latent_dim")
  value = parse_value(text)
  alone = value
  for key in reversed(keys):
    alone = {key: alone}
  check_keys(alone, f"{OVERRIDE_PREFIX}{dotted}")
  from progae_jax.schedule import TrainConfig
  view = merge(TrainConfig().to_dict(), fields)  # What each key holds now, defaults included.
  node = fields
  for i, key in enumerate(keys[:-1]):
    view = view.get(key, {}) if isinstance(view, dict) else view
    if not isinstance(view, dict):
      raise ConfigError(f"{OVERRIDE_PREFIX}{dotted}: '{'.'.join(keys[:i + 1])}' holds "
                        f"{view!r}, not a mapping; set it with "
                        f"{OVERRIDE_PREFIX}{'.'.join(keys[:i + 1])}=VALUE")
    if not isinstance(node.get(key), dict):
      node[key] = {}
    node = node[key]
  node[keys[-1]] = value


def save(workdir: str, config, data_changes: list | None = None) -> str:
  """Writes the whole resolved config to WORKDIR/config.json (through a temporary file), and
  the run's `data_changes`, if any (RUN_RECORDS)."""
  path = os.path.join(workdir, CONFIG_JSON)
  tmp = path + ".tmp"
  fields = config.to_dict()
  if data_changes:
    fields["data_changes"] = data_changes
  with open(tmp, "w") as f:
    json.dump(fields, f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)
  return path


def read(workdir: str) -> dict | None:
  """WORKDIR/config.json as a dict, or None when the run has none."""
  path = os.path.join(workdir, CONFIG_JSON)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def flatten(fields: dict, prefix: str = "") -> dict[str, Any]:
  """{"model.latent_dim": 128, ...}: the dotted keys that `--config.KEY=VALUE` takes."""
  out = {}
  for key, value in fields.items():
    if isinstance(value, dict) and value:
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out
