"""Where the step time goes: a `jax.profiler` trace of a few steps of the stages asked for.

    progae train --profile-steps 5 --profile-stages 16,32

    16x16: step 1 (compiles) | steps 2..6 traced | the rest of the stage untraced
    32x32: step 1 (compiles) | steps 2..6 traced | ...

The first step of a stage is skipped because it compiles the stage's step; the traced ones
show the steady state. Every step runs inside a `jax.profiler.StepTraceAnnotation`, so the
trace viewer marks step boundaries (and numbers steps as the train state does). Traces go to
WORKDIR/profile/ (TensorBoard's profile plugin layout: plugins/profile/RUN/HOST.xplane.pb, and
a Perfetto trace beside it). Only process 0 traces.
"""

from __future__ import annotations

import contextlib
import glob
import os

import jax

PROFILE_DIR = "profile"


class StepProfiler:
  """Starts a trace before the second step of each requested stage, stops it N steps later.

      with profiler.step(resolution, step_number, state):
        state, metrics = train_step(state, batch, alpha)
      ...
      profiler.close(state)  # at the end of the run
  """

  def __init__(self, workdir: str, steps: int, stages, enabled: bool = True):
    self.logdir = os.path.join(workdir, PROFILE_DIR)
    self.steps = steps if enabled else 0
    self._left = {int(r) for r in stages} if self.steps else set()
    self._seen_in_stage = {}  # steps run in this process at each resolution
    self._tracing = None  # the resolution being traced
    self._traced = 0
    self.written = []  # (resolution, trace folder) of every finished trace

  @contextlib.contextmanager
  def step(self, resolution: int, step_number: int, state):
    """Around one train step on `state` (its input): annotates the step, and stops or starts
    a trace before it. A trace stops once `state`, the last traced step's output, is ready:
    JAX dispatches asynchronously, and the traced steps' device work belongs in the trace."""
    if self._tracing is not None and self._traced >= self.steps:
      self.close(state)
    seen = self._seen_in_stage.get(resolution, 0)
    if self._tracing is None and resolution in self._left and seen == 1:
      self._start(resolution)
    with jax.profiler.StepTraceAnnotation("train", step_num=step_number):
      yield
    self._seen_in_stage[resolution] = seen + 1
    if self._tracing is not None:
      self._traced += 1

  def close(self, state=None) -> None:
    """Stops a trace still running (after its N steps, or at the end of a run or a stage
    shorter than N steps)."""
    if self._tracing is not None:
      if state is not None:
        jax.block_until_ready(state)
      self._stop()

  def _start(self, resolution: int) -> None:
    os.makedirs(self.logdir, exist_ok=True)
    self._before = set(glob.glob(os.path.join(self.logdir, "plugins", "profile", "*")))
    jax.profiler.start_trace(self.logdir, create_perfetto_trace=True)
    self._tracing, self._traced = resolution, 0
    self._left.discard(resolution)

  def _stop(self) -> None:
    jax.profiler.stop_trace()
    new = sorted(set(glob.glob(os.path.join(self.logdir, "plugins", "profile", "*")))
                 - self._before)
    folder = new[-1] if new else self.logdir
    self.written.append((self._tracing, folder))
    print(f"profile of {self._traced} steps at {self._tracing}x{self._tracing}: {folder}\n"
          f"  open it with: tensorboard --logdir {self.logdir}  (Profile tab; pip install "
          "tensorboard-plugin-profile), or load its perfetto_trace.json.gz at "
          "https://ui.perfetto.dev")
    self._tracing = None


def parse_stages(text: str, resolutions) -> tuple[int, ...]:
  """`--profile-stages 16,32` as resolutions of the model; one clear error otherwise."""
  try:
    stages = tuple(int(t) for t in text.split(",") if t.strip())
  except ValueError:
    raise ValueError(f"--profile-stages {text!r}: give resolutions such as 16,32") from None
  wrong = [r for r in stages if r not in resolutions]
  if wrong or not stages:
    raise ValueError(f"--profile-stages {text!r}: {wrong or 'nothing'} not among the model's "
                     f"stages {', '.join(map(str, resolutions))}")
  return stages
