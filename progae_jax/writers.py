"""Where a run's numbers go for people to watch: TensorBoard always, Weights & Biases on request.

    train loop ──> Writers ──┬──> TensorBoard   WORKDIR/tensorboard/events.out.tfevents.*
                             └──> W&B (--wandb) online, or offline in WORKDIR/wandb/

`metrics.jsonl` stays the machine-readable record; these are views of the same numbers, with
the step axis in images seen (the axis of metrics.jsonl and of the schedule):

    train/loss  train/psnr  train/grad_norm  train/alpha  train/learning_rate
    train/resolution  train/images_per_s                         every logged step
    eval/mse  eval/psnr  eval/ssim  eval/psnr_full  eval/ssim_full   every evaluation
    reconstructions/NN_RxR_PHASE (image)  phases (text)             every phase end
    config (text) and the hparams dashboard                         when a run starts

The event files are written by tensorboardX (no TensorFlow); clu's metric writers need
TensorFlow for event files, so they are not used here.

Resuming: everything a run writes at or before a checkpoint was written before that
checkpoint was saved (phase-end markers and pictures included), so a resumed run writes only
what follows it. Its event file starts with TensorBoard's purge marker (`purge_step`, a
SessionLog.START) one image past the checkpoint, so what a stopped run logged past its last
checkpoint is dropped by the readers and each step is shown once, as metrics.jsonl does.

Only process 0 writes; the others get writers that do nothing.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from typing import Any

import numpy as np

TENSORBOARD_DIR = "tensorboard"
EVAL_KEYS = ("mse", "psnr", "ssim", "psnr_full", "ssim_full")
TRAIN_KEYS = ("loss", "psnr", "grad_norm", "alpha", "resolution", "images_per_s")


def _hparams(config_dict: dict) -> dict[str, bool | int | float | str]:
  """The config's leaves by dotted key, as the hparams dashboard takes them (None left out)."""
  from progae_jax.config_files import flatten
  return {k: v if isinstance(v, (bool, int, float, str)) else str(v)
          for k, v in flatten(config_dict).items() if v is not None}


class TensorBoardWriter:
  """Event files of one run, in WORKDIR/tensorboard/ (tensorboardX)."""

  def __init__(self, workdir: str, config_dict: dict, resume_at: int):
    from tensorboardX import SummaryWriter
    self.logdir = os.path.join(workdir, TENSORBOARD_DIR)
    # A fresh run (resume_at 0) purges whatever an earlier run (--restart) left in the folder.
    # Files are read in name order and named by the second they were opened in; the suffix
    # keeps a resumed run's file apart from (and after) one opened in the same second.
    # A long queue: the loop hands over a window of steps at once, and should not wait for
    # the writer's thread to catch up.
    self._writer = SummaryWriter(self.logdir, purge_step=resume_at + 1 if resume_at else 0,
                                 flush_secs=30, max_queue=1000,
                                 filename_suffix=f".from{resume_at:012d}")
    if not resume_at:
      self._write_config(config_dict)

  def _write_config(self, config_dict: dict) -> None:
    from tensorboardX.summary import hparams
    text = json.dumps(config_dict, indent=2, sort_keys=True)
    self._writer.add_text("config", "```\n" + text + "\n```", 0)
    # The hparams dashboard compares runs by their config and held-out metrics; the metrics
    # are the eval/ scalars this run writes (the dashboard shows their last values).
    experiment, session_start, _ = hparams(_hparams(config_dict),
                                           {f"eval/{k}": 0.0 for k in EVAL_KEYS})
    self._writer.file_writer.add_summary(experiment)
    self._writer.file_writer.add_summary(session_start)

  def scalars(self, step: int, values: dict[str, float]) -> None:
    # One event holding every value of the step: add_scalar per value (an event each, and a
    # numpy check of each value) cost ~7x as much host time per step.
    from tensorboardX.proto.summary_pb2 import Summary
    self._writer.file_writer.add_summary(Summary(value=[
        Summary.Value(tag=tag, simple_value=float(value)) for tag, value in values.items()]),
        step)

  def image(self, step: int, tag: str, picture: np.ndarray) -> None:
    self._writer.add_image(tag, picture, step, dataformats="HWC")

  def text(self, step: int, tag: str, text: str) -> None:
    self._writer.add_text(tag, text, step)

  def close(self) -> None:
    self._writer.close()


class WandbWriter:
  """The same scalars, pictures and config in a W&B run (online, or offline without network).

  The run's id is kept in WORKDIR/wandb_id, so a resumed run continues the same W&B run.
  """

  def __init__(self, workdir: str, config_dict: dict, resume_at: int):
    try:
      import wandb
    except ImportError:
      raise ValueError("--wandb needs the wandb package: pip install wandb") from None
    self._wandb = wandb
    mode, why = _wandb_mode()
    id_path = os.path.join(workdir, "wandb_id")
    if resume_at and os.path.exists(id_path):
      with open(id_path) as f:
        run_id = f.read().strip()
    else:
      run_id = uuid.uuid4().hex[:8]
      with open(id_path, "w") as f:
        f.write(run_id + "\n")
    self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "progae_jax"),
                          name=os.path.basename(os.path.abspath(workdir)), id=run_id,
                          resume="allow", dir=workdir, mode=mode, config=config_dict)
    if mode == "offline":
      print(f"W&B: {why}; logging offline to {self.run.dir}; upload it later with "
            f"`wandb sync {os.path.dirname(self.run.dir)}`")

  def scalars(self, step: int, values: dict[str, float]) -> None:
    self.run.log(values, step=step)

  def image(self, step: int, tag: str, picture: np.ndarray) -> None:
    self.run.log({tag: self._wandb.Image(picture)}, step=step)

  def text(self, step: int, tag: str, text: str) -> None:
    self.run.log({tag: self._wandb.Html(f"<pre>{text}</pre>")}, step=step)

  def close(self) -> None:
    self.run.finish()


def _wandb_mode() -> tuple[str, str]:
  """("online", "") when W&B can be reached and a key is set, else ("offline", why)."""
  if os.environ.get("WANDB_MODE"):
    return os.environ["WANDB_MODE"], f"WANDB_MODE={os.environ['WANDB_MODE']}"
  try:
    socket.create_connection(("api.wandb.ai", 443), timeout=3).close()
  except OSError:
    return "offline", "no network to api.wandb.ai"
  import wandb
  if not (os.environ.get("WANDB_API_KEY") or wandb.api.api_key):
    return "offline", "not logged in (wandb login)"
  return "online", ""


class Writers:
  """Every writer of the run, fed by the train loop in its own terms (records, phases)."""

  def __init__(self, writers: list):
    self._writers = writers

  def train(self, record: dict, learning_rate: float) -> None:
    """One training record of metrics.jsonl (its `images_per_s` when it has one)."""
    values = {f"train/{k}": record[k] for k in TRAIN_KEYS if k in record}
    values["train/learning_rate"] = learning_rate
    for w in self._writers:
      w.scalars(record["images_seen"], values)

  def eval(self, record: dict) -> None:
    """One held-out evaluation record of metrics.jsonl."""
    for w in self._writers:
      w.scalars(record["images_seen"], {f"eval/{k}": record[k] for k in EVAL_KEYS if k in record})

  def phase_end(self, phase, next_phase, picture_path: str | None) -> None:
    """At a phase's end, before its checkpoint: a marker saying what ends and what follows
    (a growth, or the end of a fade), and the phase's reconstruction grid."""
    if next_phase is None:
      marker = f"{phase.name} ended at {phase.end:,} images: the run is complete"
    elif next_phase.resolution > phase.resolution:
      marker = f"{phase.name} ended at {phase.end:,} images: grown to {next_phase.name}"
    else:
      marker = f"{phase.name} ended at {phase.end:,} images: the fade is over, {next_phase.name}"
    picture = None
    if picture_path is not None:
      from PIL import Image
      with Image.open(picture_path) as im:
        picture = np.asarray(im.convert("RGB"))
    for w in self._writers:
      w.text(phase.end, "phases", marker)
      if picture is not None:
        name = os.path.splitext(os.path.basename(picture_path))[0].removeprefix("recon_")
        w.image(phase.end, f"reconstructions/{name}", picture)

  def close(self) -> None:
    for w in self._writers:
      w.close()


def open_writers(workdir: str, config, *, resume_at: int, tensorboard: bool = True,
                 wandb: bool = False, main_process: bool = True) -> Writers:
  """The run's writers: TensorBoard (unless turned off) and W&B (on request), on process 0."""
  if not main_process:
    return Writers([])
  config_dict = config.to_dict()
  out = []
  if tensorboard:
    out.append(TensorBoardWriter(workdir, config_dict, resume_at))
  if wandb:
    out.append(WandbWriter(workdir, config_dict, resume_at))
  return Writers(out)


def tensorboard_hint(workdir: str) -> str:
  """The line that says how to watch the run (its parent folder: the run beside the others)."""
  parent = os.path.dirname(os.path.normpath(workdir)) or "."
  return f"watch it with: tensorboard --logdir {parent}"
