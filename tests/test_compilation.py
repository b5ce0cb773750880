"""The compilation cache and deterministic kernels, as `progae train` sets them up."""

import json
import os
import subprocess
import sys
import types

import pytest

from progae_jax import cli, compilation
from progae_jax.schedule import TrainConfig

from conftest import tiny_run

# A fresh process: `progae train` on a tiny run, printing how many programs it asked XLA
# for, and how many of those the persistent cache served.
_COUNTING_TRAIN = """
import sys, jax
programs, from_cache = [], []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, secs, **kw: programs.append(event)
    if event == "/jax/core/compile/backend_compile_duration" else None)
jax.monitoring.register_event_listener(
    lambda event, **kw: from_cache.append(event)
    if event == "/jax/compilation_cache/cache_hits" else None)
from progae_jax import cli
status = cli.main(sys.argv[1:])
print("PROGRAMS", len(programs), len(from_cache), flush=True)
sys.exit(status)
"""


def _train(config_path, workdir, data_dir, env, *flags):
  out = subprocess.run([sys.executable, "-c", _COUNTING_TRAIN, "train", "--config",
                        str(config_path), "--data-dir", data_dir, "--workdir", str(workdir),
                        "--quiet", "--no-tensorboard", *flags],
                       env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  programs, from_cache = out.stdout.split("PROGRAMS")[-1].split()[:2]
  return int(programs), int(from_cache)


def test_a_second_run_of_a_config_in_a_fresh_process_compiles_nothing(data_dir, tmp_path):
  config = tmp_path / "tiny.json"
  config.write_text(json.dumps(tiny_run(fade_images=64, stable_images=64)))
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  env.update(PROGAE_COMPILE_CACHE=str(tmp_path / "cache"), XLA_FLAGS="")
  programs, from_cache = _train(config, tmp_path / "a", data_dir, env, "--deterministic")
  assert programs > 5 and from_cache == 0 and os.listdir(tmp_path / "cache")
  with open(tmp_path / "a" / "config.json") as f:
    assert json.load(f)["deterministic"] is True  # The run says how it ran.
  # Every program of the second run comes from the cache: XLA compiles nothing.
  assert _train(config, tmp_path / "b", data_dir, env, "--deterministic") == (programs,
                                                                              programs)


def test_no_compile_cache_leaves_the_cache_off(monkeypatch):
  asked = []
  monkeypatch.setattr(compilation, "enable_cache", lambda *args: asked.append(args))
  config = TrainConfig()
  cli._set_up_compiler(types.SimpleNamespace(no_compile_cache=True), config)
  assert asked == []
  cli._set_up_compiler(types.SimpleNamespace(no_compile_cache=False), config)
  assert asked == [()]


def test_the_cache_directory_is_the_users_unless_told_otherwise(monkeypatch, tmp_path):
  monkeypatch.delenv(compilation.CACHE_ENV, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert compilation.cache_dir() == str(tmp_path / "progae_jax" / "xla")
  monkeypatch.setenv(compilation.CACHE_ENV, "off")
  assert compilation.cache_dir() is None
  monkeypatch.setenv(compilation.CACHE_ENV, str(tmp_path / "mine"))
  assert compilation.cache_dir() == str(tmp_path / "mine")


def test_deterministic_kernels_are_asked_for_in_xla_flags(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_onednn=true")
  with pytest.raises(ValueError, match="xla_gpu_deterministic_ops"):
    compilation.check_deterministic(True)
  compilation.check_deterministic(False)
  monkeypatch.setattr("progae_jax.cpu.backend_started", lambda: False)
  compilation.request_deterministic()
  assert os.environ["XLA_FLAGS"].split() == ["--xla_cpu_use_onednn=true",
                                             compilation.DETERMINISTIC_FLAG]
  compilation.check_deterministic(True)
  monkeypatch.setenv("XLA_FLAGS", "")
  monkeypatch.setattr("progae_jax.cpu.backend_started", lambda: True)
  with pytest.raises(ValueError, match="before JAX starts"):
    compilation.request_deterministic()
