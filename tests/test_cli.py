import json
import os
import subprocess
import sys

import pytest

from progae_jax import cli, cpu

from conftest import tiny_run


def test_no_options_is_the_main_job(data_dir):
  config = cli.train_config(["--data-dir", data_dir])
  assert config.dataset == "image_patches"
  assert config.model.image_channels == 3 and config.model.resolutions == (4, 8, 16, 32)
  assert config.optimizer_on_growth == "carry"


def test_flags_override_preset_and_every_stage(data_dir):
  config = cli.train_config(["--data-dir", data_dir, "--batch-size", "16",
                             "--learning-rate", "0.0005", "--optimizer-on-growth", "reset",
                             "--no-ema", "--max-resolution", "16"])
  assert all(config.stage(r).batch_size == 16 for r in (4, 8, 16))
  assert all(config.stage(r).learning_rate == 5e-4 for r in (4, 8, 16))
  assert config.optimizer_on_growth == "reset" and config.ema_decay is None
  assert config.model.max_resolution == 16


def test_config_file_sets_per_stage_schedules(data_dir, tmp_path):
  path = tmp_path / "c.json"
  path.write_text(json.dumps({"stages": {"8": {"batch_size": 8, "fade_images": 80,
                                               "stable_images": 40, "learning_rate": 1e-4}}}))
  config = cli.train_config(["--preset", "digits", "--data-dir", data_dir,
                             "--config", str(path)])
  assert config.model.image_channels == 1 and config.model.max_resolution == 8
  assert config.stage(8).batch_size == 8 and config.stage(4).batch_size == 64


@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "0"], "must be at least 1"),
    (["--learning-rate", "3"], "must be in \\(0, 1\\)"),
    (["--optimizer-on-growth", "keep"], "invalid choice"),
    (["--cpu-devices", "-1"], "must be at least 0"),
    (["--fade-images", "many"], "not an integer"),
])
def test_bad_options_exit_with_one_line_errors(argv, message, capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(["train"] + argv)
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert pytest.importorskip("re").search(message, err)
  assert err.startswith("progae train: error: ") and len(err.splitlines()) == 1, err


def test_bad_values_are_reported_without_a_traceback(data_dir, capsys, tmp_path):
  assert cli.main(["train", "--dataset", "no_such_set", "--data-dir", data_dir,
                   "--workdir", str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert "progae train: error:" in err and "digits" in err and "Traceback" not in err
  assert cli.main(["train", "--preset", "digits", "--max-resolution", "12", "--data-dir",
                   data_dir, "--workdir", str(tmp_path)]) == 2
  assert "max_resolution=12" in capsys.readouterr().err


def test_python_dash_m_trains_the_seed_case(data_dir, tmp_path):
  workdir, config = str(tmp_path / "run"), tmp_path / "tiny.json"
  config.write_text(json.dumps(tiny_run()))
  proc = subprocess.run(
      [sys.executable, "-m", "progae_jax", "train", "--preset", "digits", "--config",
       str(config), "--data-dir", data_dir, "--workdir", workdir, "--fade-images", "128",
       "--stable-images", "128", "--batch-size", "32", "--quiet"],
      capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "final held-out PSNR" in proc.stdout and "8x8" in proc.stdout
  # A fresh process gets one CPU device per core, as many as split the batch of 32 evenly.
  assert f"training on {cpu.devices_for([32])} CPU device(s)" in proc.stdout, proc.stdout
  assert os.path.exists(os.path.join(workdir, "curves.png"))


@pytest.mark.parametrize("batches, cores, devices", [([64, 32], 2, 2), ([64], 16, 16),
                                                     ([48, 24], 16, 12), ([33], 2, 1)])
def test_cpu_devices_split_every_batch_evenly(batches, cores, devices):
  assert cpu.devices_for(batches, cores) == devices


def test_a_device_count_chosen_by_the_environment_is_left_alone(monkeypatch):
  monkeypatch.delenv("JAX_NUM_CPU_DEVICES", raising=False)
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_thunk_runtime=true")
  assert not cpu.device_count_requested()
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
  assert cpu.device_count_requested()


def test_reset_twice_is_an_optimizer_policy(data_dir):
  config = cli.train_config(["--data-dir", data_dir, "--optimizer-on-growth",
                             "reset_twice"])
  assert config.optimizer_on_growth == "reset_twice"


def test_only_a_cpu_run_is_set_up_for_the_cpu(monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "cuda,cpu")
  assert not cpu.trains_on_cpu()
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert cpu.trains_on_cpu()
  monkeypatch.delenv("JAX_PLATFORMS")
  monkeypatch.setattr(cpu, "ACCELERATOR_PLUGINS", ("json",))  # an importable stand-in
  assert not cpu.trains_on_cpu()
  monkeypatch.setattr(cpu, "ACCELERATOR_PLUGINS", ("no_such_plugin_here",))
  assert cpu.trains_on_cpu()
