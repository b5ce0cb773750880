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

Resuming: everything a run writes at or before a checkpoint is written (and flushed to disk)
before that checkpoint is saved, phase-end markers and pictures included, so a resumed run
writes only what follows it. Its event file starts with TensorBoard's purge marker (a
SessionLog.START one image past the checkpoint, as SummaryWriter's `purge_step` writes), so
the readers drop what a stopped run logged past its last checkpoint and each step is shown
once, as in metrics.jsonl.

Only process 0 writes; the others get writers that do nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import time
import uuid
from typing import Any

import numpy as np

TENSORBOARD_DIR = "tensorboard"
EVAL_KEYS = ("mse", "psnr", "ssim", "psnr_full", "ssim_full")
TRAIN_KEYS = ("loss", "psnr", "grad_norm", "alpha", "resolution", "images_per_s")


@dataclasses.dataclass(frozen=True)
class Watch:
  """How a run is watched: not part of TrainConfig, since it changes nothing the weights mean
  and may differ between a run and its resume."""
  # TensorBoard event files in WORKDIR/tensorboard/.
  tensorboard: bool = True
  # The same to Weights & Biases (needs the wandb package).
  wandb: bool = False
  # A jax.profiler trace of this many steps after the first of each of `profile_stages`.
  profile_steps: int = 0
  # Resolutions to profile; empty: the last stage.
  profile_stages: tuple[int, ...] = ()


def _hparams(config_dict: dict) -> dict[str, bool | int | float | str]:
  """The config's leaves by dotted key, as the hparams dashboard takes them (None left out)."""
  from progae_jax.config_files import flatten
  return {k: v if isinstance(v, (bool, int, float, str)) else str(v)
          for k, v in flatten(config_dict).items() if v is not None}


class TensorBoardWriter:
  """Event files of one run, in WORKDIR/tensorboard/, written by tensorboardX.

  Written synchronously, in the loop's thread: a step's scalars cost ~40 us this way (one
  event for all of them), less than handing them to SummaryWriter's writer thread, and
  `flush` can promise that everything written so far is on disk (done at every checkpoint).
  """

  def __init__(self, workdir: str, config_dict: dict, resume_at: int):
    from tensorboardX.event_file_writer import EventsWriter
    from tensorboardX.proto.event_pb2 import SessionLog
    self.logdir = os.path.join(workdir, TENSORBOARD_DIR)
    os.makedirs(self.logdir, exist_ok=True)
    # Files are read in name order and named by the second they were opened in; the suffix
    # keeps a resumed run's file apart from (and after) one opened in the same second.
    self._events = EventsWriter(os.path.join(self.logdir, "events"), f".from{resume_at:012d}")
    # TensorBoard's purge marker (SummaryWriter's purge_step): the readers drop what earlier
    # files hold at this step or later. A fresh run (--restart) hides the whole old run.
    self._write(resume_at + 1 if resume_at else 0,
                session_log=SessionLog(status=SessionLog.START))
    if not resume_at:
      self._write_config(config_dict)

  def _write(self, step: int, **event) -> None:
    from tensorboardX.proto.event_pb2 import Event
    self._events.write_event(Event(wall_time=time.time(), step=step, **event))

  def _write_config(self, config_dict: dict) -> None:
    from tensorboardX import summary
    text = json.dumps(config_dict, indent=2, sort_keys=True)
    self._write(0, summary=summary.text("config", "```\n" + text + "\n```"))
    # The hparams dashboard compares runs by their config and held-out metrics; the metrics
    # are the eval/ scalars this run writes (the dashboard shows their last values).
    experiment, session_start, _ = summary.hparams(_hparams(config_dict),
                                                   {f"eval/{k}": 0.0 for k in EVAL_KEYS})
    self._write(0, summary=experiment)
    self._write(0, summary=session_start)

  def scalars(self, step: int, values: dict[str, float]) -> None:
    from tensorboardX.proto.summary_pb2 import Summary
    self._write(step, summary=Summary(value=[
        Summary.Value(tag=tag, simple_value=float(value)) for tag, value in values.items()]))

  def image(self, step: int, tag: str, picture: np.ndarray) -> None:
    from tensorboardX import summary
    self._write(step, summary=summary.image(tag, picture, dataformats="HWC"))

  def text(self, step: int, tag: str, text: str) -> None:
    from tensorboardX import summary
    self._write(step, summary=summary.text(tag, text))

  def flush(self) -> None:
    with self._naming_the_file():
      self._events.flush()

  def close(self) -> None:
    with self._naming_the_file():
      self._events.close()

  @contextlib.contextmanager
  def _naming_the_file(self):
    """An error writing the events (a full disk) names their file, which a write's does not."""
    try:
      yield
    except OSError as e:
      where = getattr(self._events, "_file_name", self.logdir)  # tensorboardX names it so.
      raise OSError(e.errno, e.strerror, e.filename or where) from None


def require_wandb() -> None:
  """Checked before a run changes anything: --wandb without the package is one line."""
  try:
    import wandb  # noqa: F401
  except ImportError:
    raise ValueError("--wandb needs the wandb package: pip install wandb") from None


class WandbWriter:
  """The same scalars, pictures and config in a W&B run (online, or offline without network).

  The run's id is kept in WORKDIR/wandb_id, so a resumed run continues the same W&B run.
  """

  def __init__(self, workdir: str, config_dict: dict, resume_at: int):
    require_wandb()
    import wandb
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

  def flush(self) -> None:
    pass  # W&B's own process sends what was logged.

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

  def flush(self) -> None:
    """Everything written so far to disk (at a checkpoint: what precedes it is kept)."""
    for w in self._writers:
      w.flush()

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
