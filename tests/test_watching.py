"""Watching real runs: TensorBoard event files of a stopped and resumed run, read back with
TensorBoard's own reader; config.json, overrides and a profile from `python -m progae_jax`."""

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing import event_accumulator

from conftest import tiny_config_py
from progae_jax import ModelConfig, cli, train
from progae_jax.schedule import StageSchedule, TrainConfig, phases

TINY = ModelConfig(image_channels=1, max_resolution=8, channels={4: 8, 8: 8}, latent_dim=8)


def _metrics(workdir, kind):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if r["kind"] == kind]


@pytest.fixture(scope="module")
def resumed(data_dir, tmp_path_factory):
  """4x4 stable (2 steps of 32) -> 8x8 fade (4) -> 8x8 stable (2), checkpoints every 64
  images: stopped at 160, its checkpoint at 160 then lost (as if killed after logging past
  the checkpoint at 128), resumed at 128 to the end."""
  workdir = str(tmp_path_factory.mktemp("resumed"))
  config = TrainConfig(model=TINY, dataset="digits", data_dir=data_dir, eval_images=32,
                       default_stage=StageSchedule(fade_images=128, stable_images=64,
                                                   batch_size=32, learning_rate=3e-3),
                       log_every_steps=2, eval_every_images=10**9,
                       checkpoint_every_images=64, keep_checkpoints=5)
  train.train_and_evaluate(config, workdir, progress=False, stop_after_images=160)
  shutil.rmtree(os.path.join(workdir, "checkpoints", "160"))
  train.train_and_evaluate(config, workdir, progress=False)
  acc = event_accumulator.EventAccumulator(os.path.join(workdir, "tensorboard"), size_guidance={
      event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0, event_accumulator.TENSORS: 0})
  acc.Reload()
  return config, workdir, acc


def test_the_training_scalars_are_metrics_jsonl_against_images_seen(resumed):
  config, workdir, acc = resumed
  records = _metrics(workdir, "train")
  for key in ("loss", "psnr", "grad_norm", "alpha", "resolution"):
    events = acc.Scalars(f"train/{key}")
    assert [e.step for e in events] == [r["images_seen"] for r in records]
    assert [e.value for e in events] == pytest.approx([r[key] for r in records], rel=1e-6)
  rates = [r for r in records if "images_per_s" in r]
  assert [e.step for e in acc.Scalars("train/images_per_s")] == [r["images_seen"] for r in rates]
  plan = phases(config)
  lr = {e.step: e.value for e in acc.Scalars("train/learning_rate")}
  assert all(lr[r["images_seen"]] == pytest.approx(3e-3) for r in records)
  assert [r["images_seen"] for r in records] == list(range(32, plan[-1].end + 1, 32))


def test_the_held_out_metrics_pictures_and_markers_of_every_phase_end(resumed):
  config, workdir, acc = resumed
  ends = [p.end for p in phases(config)]
  for key in ("psnr", "ssim", "psnr_full", "ssim_full", "mse"):
    assert [e.step for e in acc.Scalars(f"eval/{key}")] == ends
  evals = _metrics(workdir, "eval")
  assert [e.value for e in acc.Scalars("eval/psnr")] == pytest.approx(
      [r["psnr"] for r in evals], rel=1e-6)
  pictures = sorted(t for t in acc.Tags()["images"] if t.startswith("reconstructions/"))
  assert pictures == ["reconstructions/00_4x4_stable", "reconstructions/01_8x8_fade",
                      "reconstructions/02_8x8_stable"]
  assert [[e.step for e in acc.Images(t)] for t in pictures] == [[e] for e in ends]
  assert [e.step for e in acc.Tensors("phases/text_summary")] == ends


def test_a_stopped_and_resumed_run_has_each_step_once(resumed):
  config, workdir, acc = resumed
  # Two files: the first run's (it logged up to 160) and the resumed run's (from 128 on).
  assert len(glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))) == 2
  steps = [e.step for e in acc.Scalars("train/loss")]
  assert len(steps) == len(set(steps)) == phases(config)[-1].end // 32
  assert len(acc.Tensors("config/text_summary")) == 1  # From the first start only.
  with open(os.path.join(workdir, "config.json")) as f:
    assert TrainConfig.from_dict(json.load(f)) == config


TINY_PY = tiny_config_py(stable_images=64)


def test_python_dash_m_with_a_config_file_overrides_and_a_profile(data_dir, tmp_path, capsys):
  (tmp_path / "tiny.py").write_text(TINY_PY)
  workdir = str(tmp_path / "w")
  proc = subprocess.run(
      [sys.executable, "-m", "progae_jax", "train", "--config", str(tmp_path / "tiny.py"),
       "--config.seed=5", "--config.stages.8.stable_images", "32", "--data-dir", data_dir,
       "--workdir", workdir, "--quiet", "--profile-steps", "2", "--profile-stages", "8"],
      capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(workdir, "config.json")) as f:
    resolved = json.load(f)
  assert sorted(resolved) == sorted(TrainConfig().to_dict())  # Every field, defaults included.
  assert resolved["seed"] == 5 and resolved["stages"]["8"]["stable_images"] == 32
  assert resolved["model"]["image_channels"] == 1 and resolved["model"]["latent_dim"] == 8
  assert resolved["default_stage"]["fade_images"] == 64
  # The profile: 2 steps of the 8x8 stage, after its first.
  assert "profile of 2 steps at 8x8" in proc.stdout, proc.stdout
  assert glob.glob(os.path.join(workdir, "profile", "plugins", "profile", "*", "*.xplane.pb"))
  assert cli.main(["inspect", workdir]) == 0
  out = capsys.readouterr().out
  assert f"config ({os.path.join(workdir, 'config.json')}):" in out
  assert "  seed = 5\n" in out and "  stages.8.stable_images = 32\n" in out
