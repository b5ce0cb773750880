"""Progressive training: the loop through every phase of the schedule.

    stable 4x4 -> grow -> fade 8x8 -> finish_fade -> stable 8x8 -> grow -> ... -> final stage

The run's position is one host integer, the images seen; the phase, alpha and learning rate
all follow from it (schedule.py), and it is saved in every checkpoint's metadata. The state
itself, and how it grows, is train_state.py; the jitted steps, compiled ahead in background
threads, are steps.py. `train_and_evaluate` is these steps:

    _set_up            check the config against the devices and the data; open the checkpoints
    _resume_or_start   the checkpoint's state and position, or a fresh 4x4 state; every
                       program the phases left need starts compiling (steps.Programs)
    _start_watching    WORKDIR/config.json, the TensorBoard/W&B writers, the profiler
    for each phase left:
      _train_phase     grow to the phase's stage (move_to_phase), then one step per batch at
                       the schedule's alpha (profiled on request); after each step `_due`
                       says what is due:
        _log_window      the window before this one to the host, checked finite, to
                         metrics.jsonl and the writers (one window behind: the host never
                         waits for the step it just launched)
        _evaluate_now    held-out metrics, every eval_every_images
        _save            a checkpoint, every checkpoint_every_images (and where a stop falls)
      _end_phase       evaluate at alpha 1, a checkpoint ranked by PSNR; the phase's pictures
                       and marker drawn in a background thread
    _finish            the curves and the summary table (or `_stopped`, mid-phase)

The host keeps the devices busy: `_DeviceBatches` puts each batch on the devices two steps
ahead, at most MAX_STEPS_IN_FLIGHT steps are launched and not done, and `Timings` says where
the wall time went (`RunResult.timings`; benchmarks/bench_loop.py prints it).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import math
import os
import queue
import threading
import time
from typing import Any

import jax
import numpy as np

from progae_jax import checkpoint as ckpt_lib
from progae_jax import compilation, config_files, parallel, pinning, preemption, steps, writers
from progae_jax import workdir as workdir_lib
from progae_jax.config import MIN_RESOLUTION
from progae_jax.metrics_log import MetricsLog
from progae_jax.model import Stage, stage_of
from progae_jax.ops import to_resolution
from progae_jax.optim import optimizer_for
from progae_jax.profiling import StepProfiler
from progae_jax.schedule import (
  Phase,
  TrainConfig,
  alpha_at,
  annealing_note,
  learning_rate_at,
  phase_at,
  phases,
)
from progae_jax.train_state import (
  State,
  abstract_state,
  checkpoint_meta,
  init_state,
  move_to_phase,
  set_learning_rate,
)


class NonFiniteLossError(RuntimeError):
  """Training produced a NaN or infinite loss; the message names step, stage and alpha."""


# ---------------------------------------------------------------------------------------------
# The loop


class _TrainClock:
  """Seconds spent training: steps, compiles and growth, not evaluations or checkpoints.

  This is the time axis on which runs with different schedules (a progressive run and one
  trained at the final size only) are compared; it continues across a resume.
  """

  def __init__(self, seconds: float = 0.0):
    self._before, self._since = seconds, time.perf_counter()

  def seconds(self) -> float:
    return self._before + (0.0 if self._since is None else time.perf_counter() - self._since)

  @contextlib.contextmanager
  def paused(self, state: State):
    """Stops the clock once the queued steps on `state` are done, restarts it after."""
    jax.block_until_ready(state)
    self._before, self._since = self.seconds(), None
    try:
      yield
    finally:
      self._since = time.perf_counter()


def _check_finite(records: list[dict], stage: Stage) -> None:
  for r in records:
    if not math.isfinite(r["loss"]):
      raise NonFiniteLossError(
          f"non-finite loss {r['loss']} at step {r['step']} ({r['images_seen']} images seen), "
          f"stage {stage}, alpha {r['alpha']:.4f}; the last checkpoint before it is intact")


@dataclasses.dataclass
class RunResult:
  """What a finished (or stopped) run hands back."""
  images_seen: int
  final_eval: dict | None
  pictures: list[str]
  curves: str | None
  summary: list[dict]
  state: State
  stopped_by: str | None = None  # "SIGTERM" or "SIGINT" when a signal stopped the run.
  timings: Timings | None = None  # Wall seconds by what they were spent on.
  finished: bool = False  # The schedule's last image is seen (now or by an earlier run).


@dataclasses.dataclass
class _Run:
  """What the loop's steps share: the run's fixed parts, then its moving position."""
  config: TrainConfig
  workdir: str
  plan: list[Phase]
  mesh: Any
  data: Any  # The data module (a stand-in in some tests).
  optimizer: Any
  programs: steps.Programs  # The phases' train and eval steps, compiled ahead.
  ckpt: ckpt_lib.Checkpointer
  main: bool  # Process 0: prints, writes metrics and pictures.
  progress: bool
  stop_after_images: int | None
  watch: writers.Watch
  resume_from_step: int | None
  signals: preemption.StopSignals
  # From `_resume_or_start` on:
  state: State | None = None
  images_seen: int = 0
  resume_data: tuple[int, bytes] | None = None  # (phase index, data position) to resume at.
  held_out: np.ndarray | None = None  # At the final resolution.
  clock: _TrainClock | None = None
  log: MetricsLog | None = None
  bar: Any = None
  pictures: list[str] = dataclasses.field(default_factory=list)
  summary: list[dict] = dataclasses.field(default_factory=list)
  last_eval: dict | None = None
  writers: writers.Writers | None = None
  profiler: StepProfiler | None = None
  stopped_by: str | None = None  # The signal that stopped the run.
  steps_run: int = 0  # Steps taken by this process (JAX's preemption sync counts in steps).
  timings: Timings = dataclasses.field(default_factory=lambda: Timings())
  background: _Background = dataclasses.field(default_factory=lambda: _Background())
  eval_batch: jax.Array | None = None  # The held-out images on the devices.
  flushed_at: float = 0.0  # When the last window's metrics reached the host.
  continue_on_new_data: bool = False  # Resume on a changed folder (pinning.py).
  pin: tuple | None = None  # (identity, held-out images, changes) to write to the workdir.
  data_change: dict | None = None  # This resume's continuation on new contents.
  data_identity: dict | None = None  # The folder's prepared copy now (data.folder_identity).
  data_pinned: dict | None = None  # The one the run pinned (WORKDIR/data.json), on a resume.

  def stop_reached(self) -> bool:
    return (self.stopped_by is not None or self.stop_after_images is not None
            and self.images_seen >= self.stop_after_images)


@dataclasses.dataclass
class _Window:
  """The steps since the last flush, whose metrics are still on the devices."""
  pending: list = dataclasses.field(default_factory=list)  # (step, images before, alpha, metrics)
  images: int = 0

  def close(self) -> _Window:
    """Starts copying the window's metrics to the host; the loop goes on meanwhile."""
    for *_, metrics in self.pending:
      for value in metrics.values():
        value.copy_to_host_async()
    return self


class Timings:
  """Wall seconds of a run by what they were spent on (`RunResult.timings`): where the time
  goes besides the training steps. `compile_wait` is the loop waiting for a program compiled
  in the background; `pictures` runs in its own thread, beside the loop. `events` holds
  (end, kind, seconds) of every timed span, with `time.perf_counter()` ends."""

  KINDS = ("start", "grow", "compile_wait", "log", "evaluate", "checkpoint", "pictures",
           "finish")

  def __init__(self):
    self.seconds = dict.fromkeys(self.KINDS, 0.0)
    self.events: list[tuple[float, str, float]] = []

  @contextlib.contextmanager
  def __call__(self, kind: str):
    t = time.perf_counter()
    try:
      yield
    finally:
      end = time.perf_counter()
      self.seconds[kind] += end - t
      self.events.append((end, kind, end - t))

  def mark(self, kind: str) -> None:
    """An instant worth finding in `events` (a phase's end)."""
    self.events.append((time.perf_counter(), kind, 0.0))


@dataclasses.dataclass(frozen=True)
class _Due:
  """What is due after a step: flush the window, evaluate, checkpoint, stop (mid-phase)."""
  log: bool
  sync: bool  # Every window written before going on (an evaluation, a checkpoint, the end).
  evaluate: bool
  checkpoint: bool
  stop: bool


def train_and_evaluate(config: TrainConfig, workdir: str, *, restart: bool = False,
                       mesh=None, progress: bool = True, stop_after_images: int | None = None,
                       data_module=None, resume_from_step: int | None = None,
                       watch: writers.Watch = writers.Watch(),
                       continue_on_new_data: bool = False) -> RunResult:
  """Trains through every phase of `config`, resuming from `workdir`'s latest checkpoint
  (or from `resume_from_step`, an earlier one, whose later checkpoints it then replaces).

  `stop_after_images` ends the run early (after a checkpoint), as a preempted job would;
  SIGTERM and SIGINT do the same after the current step (`RunResult.stopped_by`). The work
  directory is locked for the whole run (workdir.py); nothing in it changes before every
  check that can fail has passed. `watch`: TensorBoard (on by default), W&B and profiling
  (writers.py, profiling.py). A folder's contents are pinned to the run: a resume on a
  changed folder is refused unless `continue_on_new_data` (pinning.py).
  """
  if data_module is None:
    from progae_jax import data as data_module
  config = _folder_as_the_model_takes_it(config, data_module)
  plan = phases(config)
  mesh = mesh or parallel.make_mesh()
  _check_run(config, plan, mesh, data_module, restart, resume_from_step)
  if watch.wandb:
    writers.require_wandb()
  workdir_lib.check(workdir)
  created = not os.path.exists(workdir)
  if created and resume_from_step is not None:  # Said before Orbax starts on a new folder.
    raise ckpt_lib.CheckpointError(
        f"--resume-from-step {resume_from_step}: there is no checkpoint in "
        f"{os.path.join(os.path.abspath(workdir), 'checkpoints')}")
  os.makedirs(workdir, exist_ok=True)
  lock = workdir_lib.Lock(workdir) if parallel.is_main_process() else None
  run, failed, started = None, True, time.perf_counter()
  try:
    run = _set_up(config, workdir, plan, mesh, data_module, progress, stop_after_images,
                  resume_from_step, watch)
    run.continue_on_new_data = continue_on_new_data
    with run.signals:
      _resume_or_start(run, restart)
      if run.images_seen >= plan[-1].end:
        failed = False
        return _already_finished(run)
      _start_watching(run)
      run.timings.seconds["start"] = time.perf_counter() - started
      run.timings.mark("started")
      while (phase := phase_at(run.plan, run.images_seen)) is not None:
        ended = _train_phase(run, phase)
        if not ended or run.stopped_by and run.images_seen < plan[-1].end:
          run.background.wait()
          failed = False
          return _stopped(run)
        if run.stop_reached():
          break
      run.profiler.close(run.state)  # A trace still open ends once its steps are done.
      run.background.wait()
    failed = False
  finally:
    _close(run)
    # Orbax's threads are done with the folder by now: a run that failed with nothing saved
    # or logged leaves nothing behind.
    if failed and created and lock is not None:
      workdir_lib.remove_if_unused(workdir)
    if lock is not None:
      lock.release()
  return _finish(run)


def _folder_as_the_model_takes_it(config: TrainConfig, data_module) -> TrainConfig:
  """A folder of images is stored at the model's final resolution and image channels, as
  `progae train` stores it, unless the config's dataset options say otherwise (the data
  layer's own defaults, 32x32 RGB, would not fit a 64x64 or a grayscale model)."""
  is_folder = getattr(data_module, "is_folder", None)
  if is_folder is None or not is_folder(config.dataset):
    return config
  from progae_jax.data import folder_options_for
  options = {**folder_options_for(config.model), **config.dataset_options}
  return dataclasses.replace(config, dataset_options=options)


def _close(run: _Run | None) -> None:
  if run is None:
    return
  run.programs.close()  # Compiles not started yet are dropped; those under way finish.
  run.background.shutdown()  # The pictures are drawn before the writers close.
  if run.bar is not None:
    run.bar.close()
  if run.profiler is not None:
    run.profiler.close()
  if run.writers is not None:
    run.writers.close()
  run.ckpt.close()  # Waits for pending saves: nothing half-written is left by a clean exit.


def _check_run(config, plan, mesh, data_module, restart, resume_from_step) -> None:
  """Everything about the run that can be wrong, checked before the work directory is used."""
  if restart and resume_from_step is not None:
    raise ValueError("--restart starts afresh, --resume-from-step resumes: give one of them")
  if not isinstance(config.seed, int) or config.seed < 0:
    raise ValueError(f"seed must be a non-negative integer, got {config.seed!r}")
  compilation.check_deterministic(config.deterministic)
  for p in plan:
    parallel.check_batch_size(p.batch_size, mesh)
  _check_dataset(config, plan, data_module)


def _set_up(config, workdir, plan, mesh, data_module, progress, stop_after_images,
            resume_from_step, watch) -> _Run:
  """Opens the checkpoints (the work directory is checked and locked by now)."""
  main = parallel.is_main_process()
  if main:
    print(f"training on {mesh.devices.size} {jax.devices()[0].platform.upper()} device(s) "
          f"x {jax.process_count()} process(es); each batch is split over them")
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints)
  signals = preemption.StopSignals(multi_process=jax.process_count() > 1,
                                   reached_preemption=ckpt.reached_preemption,
                                   resumes_from=lambda: ckpt_lib.resume_point(ckpt.directory))
  optimizer = optimizer_for(config)
  return _Run(config, workdir, plan, mesh, data_module, optimizer,
              steps.programs_for(config, optimizer, mesh), ckpt, main, progress, stop_after_images, watch, resume_from_step, signals)


def _check_dataset(config: TrainConfig, plan: list[Phase], data_module) -> None:
  spec = data_module.dataset_info(config.dataset, data_dir=config.data_dir,
                                  **config.dataset_options)
  num_train = getattr(spec, "num_train", None)
  for p in plan:
    if num_train is not None and p.batch_size > num_train:
      raise ValueError(f"batch_size {p.batch_size} ({p.name}) is larger than the training "
                       f"split of {config.dataset!r} ({num_train:,} images)")
  if spec.channels != config.model.image_channels:
    raise ValueError(f"dataset {config.dataset!r} has {spec.channels} channel(s) but the model "
                     f"expects image_channels={config.model.image_channels}")
  if spec.native_resolution < config.model.max_resolution:
    raise ValueError(f"dataset {config.dataset!r} is {spec.native_resolution}x"
                     f"{spec.native_resolution}, below max_resolution="
                     f"{config.model.max_resolution}")


def _resume_or_start(run: _Run, restart: bool) -> None:
  """The checkpoint's state and position (its config must agree with this run's), or a fresh
  4x4 state at 0 images; then the held-out images, the clock, the metrics file. Old
  checkpoints and metrics are replaced only once all of it has succeeded."""
  config, ckpt, seconds = run.config, run.ckpt, 0.0
  if run.resume_from_step is not None and not ckpt.steps():
    raise ckpt_lib.CheckpointError(f"--resume-from-step {run.resume_from_step}: there is no "
                                   f"checkpoint in {ckpt.directory}")
  resuming = bool(ckpt.steps()) and not restart
  if resuming:  # The checkpoint is checked against the config before any data is read.
    step, meta = _resume_point(run)
  run.held_out = _pinned_held_out(run, resuming)
  run.eval_batch = _eval_batch(run.held_out, run.mesh)
  if resuming:
    stage = Stage(meta["resolution"], meta["phase"] == "fade")
    run.images_seen = meta["images_seen"]
    _compile_ahead(run, stage)  # Meanwhile the state is restored.
    restored = _restore_for_resume(run, step, stage)
    run.state = restored.state
    if restored.data_state is not None:
      run.resume_data = (restored.meta["phase_index"], restored.data_state)
    seconds = restored.meta.get("train_seconds", 0.0)
  else:
    _compile_ahead(run, Stage(MIN_RESOLUTION, False))  # Meanwhile the state is made.
    run.state = init_state(config, run.optimizer, run.mesh)
  _check_pinned_data(run)
  if resuming:
    replaced = ckpt.delete_after(run.images_seen)
    if run.main:
      stage = stage_of(run.state["params"])
      also = f"; the later checkpoints {replaced} are replaced" if replaced else ""
      print(f"resuming {run.workdir} at {run.images_seen:,} images ({stage}){also}")
  else:
    if ckpt.steps() and run.main:
      print(f"--restart: deleting the checkpoints {ckpt.steps()} (images seen) in "
            f"{ckpt.directory} and starting afresh from 0 images; metrics.jsonl starts anew "
            "and the pictures are overwritten as phases end")
    ckpt.delete_all()  # A fresh run must not resume from an old one's checkpoints.
  run.log = MetricsLog(run.workdir, run.images_seen or None)
  _write_pin(run)
  run.clock = _TrainClock(seconds)
  run.bar = _progress_bar(run.plan[-1].end, run.images_seen, enabled=run.main and run.progress)


def _compile_ahead(run: _Run, stage: Stage) -> None:
  """Starts compiling, in the background, every program the phases left will need."""
  left = [p for p in run.plan if p.end > run.images_seen]
  run.programs.compile_ahead(left, run.eval_batch.shape, start=stage)


def _pinned_held_out(run: _Run, resuming: bool) -> np.ndarray:
  """The held-out images. A folder's are pinned to the run with its prepared copy
  (pinning.py): a resume of a run that pinned them evaluates on its own (held_out.npy),
  whatever the folder holds now. `_check_pinned_data` then compares the copies."""
  config = run.config
  identity_of = getattr(run.data, "folder_identity", None)
  run.data_identity = identity_of and identity_of(config.dataset, data_dir=config.data_dir,
                                                  **config.dataset_options)
  run.data_pinned = pinning.pinned(run.workdir) if resuming and run.data_identity else None
  if run.data_pinned is not None:
    return pinning.held_out_images(run.workdir)
  return run.data.eval_images(
      config.dataset, resolution=config.model.max_resolution, count=config.eval_images,
      data_dir=config.data_dir, **config.dataset_options)


def _check_pinned_data(run: _Run) -> None:
  """A resume on a folder whose prepared copy changed since the run started is refused, or
  with `continue_on_new_data` drops the saved data position (the old held-out images stay).
  Sets what `_write_pin` writes; nothing is written here."""
  identity, before = run.data_identity, run.data_pinned
  if not identity:
    return
  if before is None:  # A fresh run, or a resume of one that pinned nothing.
    run.pin = (identity, run.held_out, [])
    return
  changes, what = before.get("changes", []), pinning.changed(before, identity)
  phase = phase_at(run.plan, run.images_seen)
  if what is not None and phase is not None:
    if not run.continue_on_new_data:
      raise pinning.refusal(identity["folder"], what, run.images_seen, phase.name, phase.start)
    run.data_change = pinning.change_record(what, run.images_seen, before, identity)
    changes = changes + [run.data_change]
    run.resume_data = None  # A position in the old contents' order means nothing in the new.
  run.pin = (dict(identity, held_out=before["held_out"]), run.held_out, changes)


def _write_pin(run: _Run) -> None:
  """WORKDIR/data.json and held_out.npy; a continuation on new contents, said and logged."""
  if not run.pin or not run.main:
    return
  pinning.pin(run.workdir, *run.pin)
  if run.data_change is not None:
    change = run.data_change
    print(f"continuing at {change['images_seen']:,} images on the new contents of "
          f"{run.pin[0]['folder']} ({change['changes']}), as --continue-on-new-data asks: "
          "this phase's data order starts over; the held-out images are the run's own")
    run.log.write({"kind": "data", **change})


def _start_watching(run: _Run) -> None:
  """WORKDIR/config.json (the whole resolved config), the writers, the profiler."""
  watch = run.watch
  if run.main:
    config_files.save(run.workdir, run.config, data_changes=run.pin[2] if run.pin else None)
  run.writers = writers.open_writers(run.workdir, run.config, resume_at=run.images_seen,
                                     tensorboard=watch.tensorboard, wandb=watch.wandb,
                                     main_process=run.main)
  run.profiler = StepProfiler(run.workdir, watch.profile_steps,
                              watch.profile_stages or (run.config.model.max_resolution,),
                              enabled=run.main)
  if run.main and watch.tensorboard and run.progress:
    print(writers.tensorboard_hint(run.workdir))
  if run.main and annealing_note(run.config):
    print(annealing_note(run.config))


def _resume_point(run: _Run) -> tuple[int, dict]:
  """The latest checkpoint (or `resume_from_step`) and its metadata, checked against the
  run's config. A damaged one is refused with the intact earlier ones named."""
  ckpt, step = run.ckpt, run.resume_from_step
  step = ckpt.steps()[-1] if step is None else step
  try:
    meta = ckpt.read_meta(step)
  except ckpt_lib.CheckpointError as e:
    raise _with_intact(run, e, step) from None
  diffs = ckpt_lib.config_differences(meta["config"], run.config.to_dict())
  if diffs:
    raise ckpt_lib.CheckpointError(
        f"the checkpoint in {ckpt.directory} contradicts this run's config:\n  " +
        "\n  ".join(diffs) + "\n(use another --workdir, or --restart to start afresh)")
  return step, meta


def _restore_for_resume(run: _Run, step: int, stage: Stage) -> ckpt_lib.Restored:
  """The state of checkpoint `step`, at `stage`; a damaged one is refused with the intact
  earlier ones named, to resume from instead."""
  try:
    return run.ckpt.restore(step, abstract_state(run.config, stage, run.optimizer, run.mesh))
  except ckpt_lib.CheckpointError as e:
    raise _with_intact(run, e, step) from None


def _with_intact(run: _Run, error: ckpt_lib.CheckpointError, step: int):
  if step not in run.ckpt.steps():  # Not damaged: not there (a --resume-from-step typo).
    return error
  intact = run.ckpt.intact(run.mesh, below=step)
  if intact:
    return ckpt_lib.CheckpointError(
        f"{error}; the earlier checkpoints {intact} are intact: resume from one with "
        f"--resume-from-step N (the latest: --resume-from-step {intact[-1]}), or start "
        "afresh with --restart")
  return ckpt_lib.CheckpointError(f"{error}; no earlier checkpoint is intact: start afresh "
                                  "with --restart")


def _already_finished(run: _Run) -> RunResult:
  if run.main:
    print(f"{run.workdir} is already finished: {run.images_seen:,} images, the end of its "
          "schedule; nothing to train. To train it again use --restart; to train longer, "
          "another --workdir with a longer schedule")
  return RunResult(run.images_seen, None, [], None, [], run.state, finished=True)


def _phase_batches(run: _Run, phase: Phase) -> _DeviceBatches:
  """The phase's training batches (this process's rows), at the resumed position if any,
  placed on the devices a few steps ahead of the loop."""
  config = run.config
  iterator = run.data.batches(
      config.dataset, split="train", resolution=phase.resolution,
      batch_size=phase.batch_size, seed=config.seed * 1009 + phase.index,
      data_dir=config.data_dir, shard_index=jax.process_index(),
      shard_count=jax.process_count(), **config.dataset_options)
  if run.resume_data is not None:
    phase_index, position = run.resume_data
    if phase_index == phase.index and run.images_seen > phase.start:
      iterator.set_state(ckpt_lib.decode_iterator_state(position, iterator))
    run.resume_data = None
  left = (phase.end - run.images_seen) // phase.batch_size
  return _DeviceBatches(iterator, run.mesh, count=left)


class _DeviceBatches:
  """`count` batches of a data iterator, read by a thread that puts them on the devices
  `ahead` steps before the loop takes them: the next batch is on its way while the device
  trains.

  `get_state()` is the position after the last batch handed out (what a checkpoint saves),
  not the reader's, which is ahead of it.
  """

  def __init__(self, iterator, mesh, count: int, ahead: int = 2):
    self._iterator, self._mesh, self._count = iterator, mesh, count
    self._position = iterator.get_state()
    self._queue: queue.Queue = queue.Queue(maxsize=ahead)
    self._closed = threading.Event()
    self._reader = threading.Thread(target=self._read, name="progae-batches", daemon=True)
    self._reader.start()

  def _read(self) -> None:
    for _ in range(self._count):
      if self._closed.is_set():
        return
      try:
        item = (parallel.global_batch(next(self._iterator), self._mesh),
                self._iterator.get_state())
      except Exception as e:  # Handed to the loop, which raises it.
        item = (e, None)
      while not self._closed.is_set():
        try:
          self._queue.put(item, timeout=0.05)
          break
        except queue.Full:
          pass
      if isinstance(item[0], BaseException):
        return

  def __next__(self) -> jax.Array:
    batch, self._position = self._queue.get()
    if isinstance(batch, BaseException):
      raise batch
    return batch

  def get_state(self):
    return self._position

  def close(self) -> None:
    self._closed.set()
    self._reader.join()


def _train_phase(run: _Run, phase: Phase) -> bool:
  """Grows the state to the phase's stage and trains to the phase's end (then `_end_phase`).

  Returns False when the run stopped inside the phase (after checkpointing there).
  """
  config, t0, last_train, timed = run.config, time.perf_counter(), None, run.timings
  run.state = move_to_phase(run.state, phase, config, run.optimizer, run.mesh,
                            advance=lambda state: _advance(run, state))
  with timed("compile_wait"):
    train_step = run.programs.train_step(phase)
  batches, window, flushing = _phase_batches(run, phase), _Window(), None
  in_flight = collections.deque()  # The losses of the steps launched and maybe not done.
  step = sum(p.steps for p in run.plan[:phase.index])  # The train state's step count.
  step += (run.images_seen - phase.start) // phase.batch_size
  run.flushed_at = time.perf_counter()
  try:
    while run.images_seen < phase.end:
      before = run.images_seen
      alpha = alpha_at(phase, before, config.alpha_ramp)
      learning_rate = learning_rate_at(config, phase, before)  # Like alpha: resumes agree.
      if learning_rate != phase.learning_rate:  # Inside the annealing (move_to_phase set it).
        run.state = set_learning_rate(run.state, learning_rate)
      batch, step = next(batches), step + 1
      with run.profiler.step(phase.resolution, step - 1, run.state):
        run.state, metrics = train_step(run.state, batch, np.float32(alpha))
      _bound_in_flight(in_flight, metrics["loss"])
      window.pending.append((step, before, alpha, metrics))
      window.images += phase.batch_size
      run.images_seen += phase.batch_size
      run.steps_run += 1
      run.bar.update(phase.batch_size)
      due = _due(run, phase, before, len(window.pending))
      if due.log:  # The window before this one is written while this one's metrics travel.
        if flushing is not None:
          last_train = _log_window(run, phase, flushing)
        flushing, window = window.close(), _Window()
        if due.sync:
          last_train, flushing = _log_window(run, phase, flushing), None
      if due.evaluate:
        run.last_eval, _ = _evaluate_now(run, phase, alpha)
      if due.checkpoint:
        _save(run, phase, batches)
      if due.stop:
        return False
    _end_phase(run, phase, batches, last_train, t0)
  finally:
    batches.close()
  return True


# Steps launched ahead of the ones done: enough that the device never waits for the host, few
# enough that XLA:CPU's collectives across host devices (which can stall when many programs
# wait in its thread pool at once) and the device's memory are not overrun.
MAX_STEPS_IN_FLIGHT = 3


def _bound_in_flight(in_flight: collections.deque, loss: jax.Array) -> None:
  """Waits (without reading anything back) until at most MAX_STEPS_IN_FLIGHT steps are
  launched and not done; on a fast device the host is rarely that far ahead."""
  in_flight.append(loss)
  if len(in_flight) > MAX_STEPS_IN_FLIGHT:
    in_flight.popleft().block_until_ready()


def _advance(run: _Run, state: State) -> State:
  """One step along the road of stages, by its program compiled ahead."""
  with run.timings("compile_wait"):
    advance = run.programs.advance_step(stage_of(state["params"]))
  with run.timings("grow"):
    return advance(state)


def _due(run: _Run, phase: Phase, before: int, window_steps: int) -> _Due:
  """After the step from `before` to `run.images_seen` images: what is due now. Evaluations
  and checkpoints fall where their period is crossed; `_end_phase` does both at a phase's end."""
  config, after = run.config, run.images_seen
  run.stopped_by = run.stopped_by or run.signals.requested(run.steps_run)
  crossed = lambda every: after // every > before // every
  at_end = after >= phase.end
  evaluate = crossed(config.eval_every_images)
  checkpoint = crossed(config.checkpoint_every_images) or run.stop_reached()
  sync = at_end or evaluate or checkpoint
  return _Due(log=window_steps >= config.log_every_steps or sync, sync=sync,
              evaluate=evaluate and not at_end, checkpoint=checkpoint and not at_end,
              stop=run.stop_reached() and not at_end)


def _log_window(run: _Run, phase: Phase, window: _Window) -> dict:
  """Brings the window's step metrics to the host, checks them, writes them; the last record
  also carries the training time and the window's speed. Returns that last record."""
  with run.timings("log"):
    records = _records(window, phase)  # Waits for the window's steps.
    _check_finite(records, stage_of(run.state["params"]))
    now = time.perf_counter()
    rate, run.flushed_at = window.images / max(now - run.flushed_at, 1e-9), now
    records[-1] = dict(records[-1], train_seconds=run.clock.seconds(), images_per_s=rate)
    for r in records:
      run.log.write(r)
      run.writers.train(r, learning_rate_at(run.config, phase,
                                            r["images_seen"] - phase.batch_size))
    last = records[-1]
    run.bar.set_postfix_str(f"{phase.name} a={last['alpha']:.2f} loss={last['loss']:.4f} "
                            f"psnr={last['psnr']:.1f}dB")
  return last


def _evaluate_now(run: _Run, phase: Phase, alpha: float) -> tuple[dict, np.ndarray]:
  """Held-out metrics at `alpha`, logged; the clock is paused meanwhile."""
  with run.clock.paused(run.state), run.timings("evaluate"):
    result, recon = _evaluate(run, Stage(phase.resolution, phase.fading), alpha)
  result.update(kind="eval", images_seen=run.images_seen, resolution=phase.resolution,
                phase="fade" if phase.fading else "stable", alpha=alpha,
                train_seconds=run.clock.seconds())
  run.log.write(result)
  run.writers.eval(result)
  return result, recon


def _save(run: _Run, phase: Phase, iterator, psnr: float | None = None) -> None:
  with run.clock.paused(run.state), run.timings("checkpoint"):
    run.writers.flush()  # What precedes a checkpoint is on disk before it: a resume keeps it.
    meta = checkpoint_meta(run.config, run.state, phase, run.clock.seconds())
    run.ckpt.save(run.images_seen, run.state, meta, iterator, psnr=psnr)


def _end_phase(run: _Run, phase: Phase, iterator, last_train: dict | None, t0: float) -> None:
  """Evaluates at the phase's final alpha, checkpoints (ranked by PSNR), and has the phase's
  pictures drawn and its marker written in the background."""
  run.timings.mark("phase_end")
  run.last_eval, recon = _evaluate_now(run, phase, 1.0)
  following = run.plan[phase.index + 1] if phase.index + 1 < len(run.plan) else None
  if run.main:
    held_out = to_resolution(run.held_out, phase.resolution)
    run.pictures.append(_grid_path(run.workdir, phase))
    run.background.submit(_draw_phase_end, run, phase, following, held_out, recon)
  else:
    run.writers.phase_end(phase, following, None)
  _save(run, phase, iterator, psnr=run.last_eval["psnr"])
  run.summary.append({"phase": phase.name, "images": phase.end - phase.start,
                      "train_loss": last_train["loss"] if last_train else float("nan"),
                      "eval_psnr": run.last_eval["psnr"], "eval_ssim": run.last_eval["ssim"],
                      "seconds": time.perf_counter() - t0})


def _draw_phase_end(run: _Run, phase: Phase, following, held_out, recon) -> None:
  """The phase's reconstruction grid (matplotlib, in the background thread) and its marker."""
  from progae_jax import plots
  with run.timings("pictures"):
    count = min(16, len(recon))
    plots.save_reconstructions(_grid_path(run.workdir, phase), held_out[:count], recon[:count],
                               title=f"{phase.name}, held-out images")
    run.writers.phase_end(phase, following, _grid_path(run.workdir, phase))


class _Background:
  """One thread for what the loop need not wait for (the pictures, the writers' phase ends);
  `wait` waits for all of it and raises the first error it met."""

  def __init__(self):
    self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="progae-pictures")
    self._futures: list[concurrent.futures.Future] = []

  def submit(self, fn, *args) -> None:
    self._futures.append(self._pool.submit(fn, *args))

  def wait(self) -> None:
    futures, self._futures = self._futures, []
    for f in futures:
      f.result()

  def shutdown(self) -> None:
    self._pool.shutdown(wait=True)


def _stopped(run: _Run) -> RunResult:
  """A run stopped (by --stop-after-images or a signal), its last checkpoint written."""
  run.bar.close()
  run.ckpt.close()
  if run.main:
    why = f"stopped by {run.stopped_by}" if run.stopped_by else "stopped"
    print(f"{why} at {run.images_seen:,} images, checkpoint saved in {run.ckpt.directory}; "
          "run the same command again to resume", flush=True)
  return RunResult(run.images_seen, run.last_eval, run.pictures, None, run.summary, run.state,
                   run.stopped_by, run.timings)


def _finish(run: _Run) -> RunResult:
  """The curves of the whole run and, with progress on, its summary table."""
  curves = None
  with run.timings("finish"):
    if run.main:
      from progae_jax import plots
      records = run.log.read()
      boundaries = [(p.start, p.name) for p in run.plan if p.start > 0]
      curves = plots.save_curves(os.path.join(run.workdir, "curves.png"),
                                 [r for r in records if r["kind"] == "train"],
                                 [r for r in records if r["kind"] == "eval"], boundaries)
      if run.progress:
        _print_summary(run.summary, run.last_eval, run.pictures, curves)
  return RunResult(run.images_seen, run.last_eval, run.pictures, curves, run.summary, run.state,
                   timings=run.timings, finished=True)


def _progress_bar(total: int, initial: int, enabled: bool):
  from tqdm.auto import tqdm
  return tqdm(total=total, initial=initial, unit="img", unit_scale=True, disable=not enabled,
              dynamic_ncols=True, smoothing=0.05,
              mininterval=1.0)


def _records(window: _Window, phase: Phase) -> list[dict]:
  """A window of step metrics on the host (one wait per window, not per step)."""
  host = jax.device_get([m for *_, m in window.pending])
  return [{"kind": "train", "step": step, "images_seen": seen + phase.batch_size,
           "resolution": phase.resolution, "phase": "fade" if phase.fading else "stable",
           "alpha": alpha, **{k: float(v) for k, v in m.items()}}
          for (step, seen, alpha, _), m in zip(window.pending, host)]


def _eval_params(state: State):
  return state["ema"] if "ema" in state else state["params"]


def _local_rows(images: np.ndarray) -> np.ndarray:
  """This process's share of a batch that every process holds whole."""
  n, i = jax.process_count(), jax.process_index()
  per = len(images) // n
  return images[i * per:(i + 1) * per]


def _padded(images: np.ndarray, multiple: int) -> np.ndarray:
  """`images` with copies of the last one appended, up to a multiple of `multiple` rows."""
  return np.pad(images, [(0, -len(images) % multiple)] + [(0, 0)] * (images.ndim - 1),
                mode="edge")


def _eval_batch(images: np.ndarray, mesh) -> jax.Array:
  """The held-out images on the devices, once per run, split over them: padded (with copies
  of the last image) to a multiple of the devices, so that every image is evaluated at any
  device count; `_held_out_metrics` masks the padding out."""
  padded = _padded(images, mesh.devices.size * jax.process_count())
  return parallel.global_batch(_local_rows(padded), mesh)


def _held_out_metrics(eval_step, params, batch: jax.Array, count: int, alpha: float):
  """Means over the first `count` images of `batch` (the padding's rows masked out) and
  their reconstructions: each held-out image counts exactly once."""
  per_image, recon = jax.device_get(eval_step(params, batch, np.float32(alpha)))
  return {k: float(np.mean(v[:count])) for k, v in per_image.items()}, recon[:count]


def _evaluate(run: _Run, stage: Stage, alpha: float):
  """Held-out metrics (means over the images) and the reconstructions of those images."""
  with run.timings("compile_wait"):
    eval_step = run.programs.eval_step(stage, run.eval_batch.shape)
  return _held_out_metrics(eval_step, _eval_params(run.state), run.eval_batch,
                           len(run.held_out), alpha)


def _grid_path(workdir: str, phase: Phase) -> str:
  name = f"recon_{phase.index:02d}_{phase.resolution}x{phase.resolution}_" \
         f"{'fade' if phase.fading else 'stable'}.png"
  return os.path.join(workdir, "pictures", name)


def _print_summary(summary, last_eval, pictures, curves) -> None:
  from rich.console import Console
  from rich.table import Table
  table = Table(title="progae_jax run")
  for col in ("phase", "images", "train loss", "held-out PSNR", "held-out SSIM", "seconds"):
    table.add_column(col, justify="right")
  for s in summary:
    table.add_row(s["phase"], f"{s['images']:,}", f"{s['train_loss']:.5f}",
                  f"{s['eval_psnr']:.2f} dB", f"{s['eval_ssim']:.3f}", f"{s['seconds']:.1f}")
  console = Console()
  console.print(table)
  if last_eval:
    console.print(f"held-out PSNR {last_eval['psnr']:.2f} dB, SSIM {last_eval['ssim']:.3f} "
                  f"at {last_eval['resolution']}x{last_eval['resolution']}")
  if pictures:
    console.print(f"pictures: {os.path.dirname(pictures[-1])}/ (last: {pictures[-1]})")
  if curves:
    console.print(f"curves: {curves}")
