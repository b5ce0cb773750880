"""Stopping on a signal: SIGTERM (a scheduler's preemption) or SIGINT (Ctrl-C) ends a run
after its current step, with a checkpoint at that step.

    signal -> flag set -> the step ends -> checkpoint at that step -> one line -> exit 143/130
    a second signal    -> one line (nothing saved; the checkpoint a rerun resumes from), then
                          the process ends at once with status 3 (EXIT_NOT_SAVED); the last
                          complete checkpoint is intact (a save cut short is never one)

The exit status is the shell's for a death by that signal (128 + its number): a scheduler
or script sees the run ended because of the signal, and the run resumes with the same command.

In a multi-process run every process must save at the same step, or their collectives
would wait for each other forever. There JAX's preemption service (started by
`jax.distributed.initialize`) catches SIGTERM in each process and agrees on a step, and
Orbax's `CheckpointManager.reached_preemption(step)` reports it; SIGINT keeps Python's
default (KeyboardInterrupt), since one process cannot stop the others by itself.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Callable

EXIT_STATUS = {"SIGINT": 128 + signal.SIGINT, "SIGTERM": 128 + signal.SIGTERM}
# A second signal: stopped at once, nothing saved (not 130/143, which say a checkpoint was).
EXIT_NOT_SAVED = 3


def _say(line: str) -> None:
  """One line in one write: `print` writes the text and its newline apart, and a signal that
  lands between the two would run its handler's line on to this one."""
  sys.stderr.write(line + "\n")
  sys.stderr.flush()


class StopSignals:
  """While open, records SIGTERM and SIGINT instead of dying of them (the first one)."""

  def __init__(self, *, multi_process: bool = False,
               reached_preemption: Callable[[int], bool] | None = None,
               resumes_from: Callable[[], str] = lambda: "the last complete checkpoint"):
    self._multi = multi_process
    self._reached = reached_preemption
    self._resumes_from = resumes_from  # What a rerun resumes from, said by a second signal.
    self._received: str | None = None
    self._previous: dict[int, object] = {}

  def __enter__(self) -> "StopSignals":
    if threading.current_thread() is threading.main_thread() and not self._multi:
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}

  def _handle(self, signum, frame) -> None:
    if self._received is not None:
      self._stop_now(signal.Signals(signum).name)
    self._received = signal.Signals(signum).name
    _say(f"progae train: {self._received}: saving a checkpoint after this step, then "
         "stopping (a second signal stops at once, without saving)")

  def _stop_now(self, name: str) -> None:
    """A second signal: one line, then the process ends at once (Orbax's threads with it: a
    save cut short is never taken for a checkpoint)."""
    _say(f"progae train: {name} again: stopped at once, nothing saved since the last "
         f"checkpoint; the same command resumes from {self._resumes_from()} (exit status "
         f"{EXIT_NOT_SAVED})")
    os._exit(EXIT_NOT_SAVED)

  def requested(self, step: int) -> str | None:
    """The signal to stop for after `step` (the count of steps this process has taken: JAX's
    sync point is the step after the highest any process had reached), or None. Called once
    per step, on every process."""
    if self._multi and self._reached is not None and self._reached(step):
      return "SIGTERM"
    return self._received
