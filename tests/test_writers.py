"""TensorBoard event files written by progae_jax.writers, read back with TensorBoard's reader."""

import os

import numpy as np
import pytest
from PIL import Image

from progae_jax import ModelConfig, writers
from progae_jax.schedule import StageSchedule, TrainConfig, phases

# The viewer's own reader (the tensorboard package is in the test extra).
from tensorboard.backend.event_processing import event_accumulator

CONFIG = TrainConfig(model=ModelConfig(image_channels=1, max_resolution=8, channels={4: 4, 8: 4},
                                       latent_dim=4),
                     default_stage=StageSchedule(fade_images=128, stable_images=64,
                                                 batch_size=32), dataset="digits")


def read(logdir):
  acc = event_accumulator.EventAccumulator(logdir, size_guidance={
      event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0, event_accumulator.TENSORS: 0})
  acc.Reload()
  return acc


def fake_run(workdir, resume_at=0, stop_at=None, offset=0.0):
  """What the train loop writes for CONFIG's plan, from `resume_at` to `stop_at` images."""
  plan = phases(CONFIG)
  out = writers.open_writers(workdir, CONFIG, resume_at=resume_at)
  for i, phase in enumerate(plan):
    if phase.end <= resume_at:
      continue  # The loop resumes in the phase of the checkpoint.
    for seen in range(phase.start + phase.batch_size, phase.end + 1, phase.batch_size):
      if seen <= resume_at:
        continue
      if stop_at is not None and seen > stop_at:
        out.close()
        return
      out.train({"images_seen": seen, "loss": 1.0 / seen + offset, "psnr": 20.0,
                 "grad_norm": 0.5, "alpha": 1.0, "resolution": phase.resolution,
                 "images_per_s": 100.0}, phase.learning_rate)
    out.eval({"images_seen": phase.end, "psnr": 20.0 + i, "ssim": 0.5, "mse": 0.01,
              "psnr_full": 19.0, "ssim_full": 0.4, "kind": "eval"})
    picture = os.path.join(workdir, f"recon_{i:02d}_{phase.name.replace(' ', '_')}.png")
    Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)).save(picture)
    out.phase_end(phase, plan[i + 1] if i + 1 < len(plan) else None, picture)
  out.close()


def test_scalars_images_markers_and_config_are_in_the_event_files(tmp_path):
  fake_run(str(tmp_path))
  acc = read(str(tmp_path / "tensorboard"))
  tags = acc.Tags()
  assert {f"train/{k}" for k in ("loss", "psnr", "grad_norm", "alpha", "learning_rate",
                                 "resolution", "images_per_s")} <= set(tags["scalars"])
  assert {f"eval/{k}" for k in writers.EVAL_KEYS} <= set(tags["scalars"])
  plan = phases(CONFIG)
  # Steps are images seen: every batch of every phase, evaluations at the phase ends.
  assert [e.step for e in acc.Scalars("train/loss")] == list(range(32, plan[-1].end + 1, 32))
  assert [e.step for e in acc.Scalars("eval/psnr")] == [p.end for p in plan]
  assert [e.value for e in acc.Scalars("train/learning_rate")][0] == pytest.approx(1e-3)
  # One picture per phase end, at its step, with the grid's pixels.
  pictures = sorted(t for t in tags["images"] if t.startswith("reconstructions/"))
  assert pictures == ["reconstructions/00_4x4_stable", "reconstructions/01_8x8_fade",
                      "reconstructions/02_8x8_stable"]
  image = acc.Images(pictures[1])
  assert [e.step for e in image] == [plan[1].end] and (image[0].width, image[0].height) == (30, 20)
  # The phase-end markers and the config (text plugin tensors) and the hparams session.
  markers = [e for e in acc.Tensors("phases/text_summary")]
  assert [e.step for e in markers] == [p.end for p in plan]
  assert b"grown to 8x8 fade" in markers[0].tensor_proto.string_val[0]
  assert b"the fade is over" in markers[1].tensor_proto.string_val[0]
  assert b'"latent_dim": 4' in acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0]
  from tensorboard.plugins.hparams import plugin_data_pb2
  start = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
  hparams = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info.hparams
  assert hparams["model.latent_dim"].number_value == 4
  assert hparams["dataset"].string_value == "digits"


def test_a_resumed_run_shows_each_step_once_with_the_new_values(tmp_path):
  workdir = str(tmp_path)
  # A run stopped at 224 images (its last checkpoint at 128), then resumed at 128 with other
  # values (a nondeterministic resume): steps past 128 come from the resumed run only.
  fake_run(workdir, stop_at=224)
  fake_run(workdir, resume_at=128, offset=1.0)
  assert len(os.listdir(os.path.join(workdir, "tensorboard"))) == 2
  acc = read(os.path.join(workdir, "tensorboard"))
  loss = acc.Scalars("train/loss")
  steps = [e.step for e in loss]
  assert steps == sorted(set(steps)) == list(range(32, phases(CONFIG)[-1].end + 1, 32))
  assert all((e.value > 1.0) == (e.step > 128) for e in loss)
  assert [e.step for e in acc.Scalars("eval/psnr")] == [p.end for p in phases(CONFIG)]
  assert len(acc.Tensors("config/text_summary")) == 1  # Written by the first start only.


def test_a_fresh_start_over_an_old_run_hides_the_old_events(tmp_path):
  fake_run(str(tmp_path), offset=5.0)
  fake_run(str(tmp_path), stop_at=64)  # --restart: a new run from 0 images.
  loss = read(str(tmp_path / "tensorboard")).Scalars("train/loss")
  assert [e.step for e in loss] == [32, 64] and all(e.value < 1 for e in loss)


def test_only_process_0_writes(tmp_path):
  out = writers.open_writers(str(tmp_path), CONFIG, resume_at=0, main_process=False)
  out.train({"images_seen": 32, "loss": 1.0}, 1e-3)
  out.close()
  assert not os.path.exists(tmp_path / "tensorboard")


def test_wandb_without_the_package_is_one_clear_error(tmp_path, monkeypatch):
  import sys
  monkeypatch.setitem(sys.modules, "wandb", None)  # As if it were not installed.
  with pytest.raises(ValueError, match="--wandb needs the wandb package: pip install wandb"):
    writers.open_writers(str(tmp_path), CONFIG, resume_at=0, tensorboard=False, wandb=True)


def test_a_full_disk_names_the_events_file_and_is_one_line(tmp_path, monkeypatch, capsys):
  """A write's ENOSPC names no file: the events' flush names its own, and the CLI says the
  disk is full in one line."""
  import errno

  from progae_jax import cli
  tensorboard = writers.TensorBoardWriter(str(tmp_path), CONFIG.to_dict(), 0)

  def full():
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(tensorboard._events, "flush", full)
  with pytest.raises(OSError) as e:
    tensorboard.flush()
  assert e.value.errno == errno.ENOSPC and ".tfevents." in e.value.filename
  monkeypatch.setattr(cli, "cmd_prepare", lambda args: tensorboard.flush())
  assert cli.main(["prepare", str(tmp_path)]) == 2
  err = capsys.readouterr().err.splitlines()
  assert len(err) == 1 and err[0].startswith("progae prepare: error: the disk is full: ")
  assert f"{e.value.filename} could not be written" in err[0]
