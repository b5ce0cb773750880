"""What every test file shares: the prepared data and the tiny run.

`data_dir` holds every built-in dataset, prepared once per session with the network cut off.
One persistent XLA compilation cache serves the session (and the processes it starts): the
same tiny step compiled by two tests is compiled once, and a cached executable is the very
one a fresh compile makes, so no number changes.
`tiny_run()` is the tests' run as a `progae train --preset digits --config` file's fields:
the digits (8x8 grayscale), 4x4 -> 8x8, 8 channels and an 8-wide latent, so a real run
compiles and trains in seconds. Each test file changes only what its tests are about (the
schedule, how often it evaluates or checkpoints); `tiny_config` is the same run as a
TrainConfig, for tests that train in this process.
"""

import json
import os
import shutil
import socket
import tempfile

# The tests run on the CPU, whatever accelerator the machine has.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tiny models, many stages: compiling is most of a test's time, and XLA's optimisation passes
# most of compiling (they halve the suite). Every comparison a test makes is between runs
# under the same setting. The processes the tests start inherit it.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import pytest

TINY_RUN = {
    "dataset": "digits", "max_resolution": 8,
    "model": {"channels": {"4": 8, "8": 8}, "latent_dim": 8},
    # One schedule for every stage (no per-stage entries unless a test sets `stages`).
    "stages": {}, "fade_images": 256, "stable_images": 256, "batch_size": 32,
    "learning_rate": 3e-3, "ema_decay": 0.99,
    "eval_images": 64, "log_every_steps": 4,
    # Only at phase ends, unless a test asks for more.
    "eval_every_images": 10**9, "checkpoint_every_images": 10**9,
}


_CACHE_DIR = None


def pytest_configure(config):
  global _CACHE_DIR
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return  # The caller's own cache.
  _CACHE_DIR = tempfile.mkdtemp(prefix="progae-tests-xla-cache-")
  os.environ.update(JAX_COMPILATION_CACHE_DIR=_CACHE_DIR,
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  import jax  # Reads the variables now; set again in case a plugin imported it already.
  jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
  if _CACHE_DIR is not None:
    shutil.rmtree(_CACHE_DIR, ignore_errors=True)


def tiny_run(**changes) -> dict:
  """TINY_RUN with `changes`: the contents of a `--config` file (a fresh copy)."""
  return json.loads(json.dumps({**TINY_RUN, **changes}))


def tiny_config(data_dir: str, **changes):
  """The TrainConfig that `progae train --preset digits --config <tiny_run(**changes)>
  --data-dir DATA_DIR` trains."""
  from progae_jax import cli
  return cli.config_from_fields(dict(tiny_run(**changes), data_dir=data_dir))


def tiny_config_py(stable_images: int) -> str:
  """A tiny digits run as a Python config file, as a user writes one (configs/*.py)."""
  return f'''"""A tiny digits run for the tests."""
import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.dataset = "digits"
  config.model = ml_collections.ConfigDict({{"max_resolution": 8, "latent_dim": 8,
                                            "channels": {{"4": 8, "8": 8}}}})
  config.default_stage = ml_collections.ConfigDict({{"fade_images": 64,
                                                    "stable_images": {stable_images},
                                                    "batch_size": 32}})
  config.eval_images = 32
  return config
'''


def cut_network(monkeypatch) -> None:
  """Any connection attempt raises: what needs no network is shown to need none."""
  def refuse(*args, **kwargs):
    raise OSError("network access in a test")
  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)


TEST_LARGE_PATCH_COUNTS = {"train": 70, "test": 20}


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """One tfds data directory for the whole session, every built-in dataset prepared in it
  once, offline. image_patches_128 is prepared small (TEST_LARGE_PATCH_COUNTS crops: the
  same code, a tenth of a second instead of ~12 s)."""
  from progae_jax import data
  from progae_jax.data import builtin
  path = tmp_path_factory.mktemp("tfds")
  with pytest.MonkeyPatch.context() as mp:
    cut_network(mp)
    mp.setattr(builtin, "_LARGE_PATCH_COUNTS", TEST_LARGE_PATCH_COUNTS)
    for name in data.BUILTIN_DATASETS:
      data.prepare(name, data_dir=str(path))
  return str(path)
