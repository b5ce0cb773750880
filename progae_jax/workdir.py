"""A run's work directory: checked before use, locked while a run trains in it.

    runs/main/                 <- --workdir
      .lock                    <- held (flock) by the one `progae train` training here
      checkpoints/  metrics.jsonl  pictures/  curves.png

Two runs in one work directory would mix their checkpoints and interleave their metrics, so
`progae train` holds an exclusive `fcntl.flock` on `.lock` for its whole life. The lock
belongs to the open file, so the operating system releases it when the process ends in any
way, SIGKILL included: a lock is never left stale, and nothing ever has to delete it. The
file also records the holder's pid, for the one line that refuses a second run. In a
multi-process run only process 0 locks (the others share its directory); `inspect` and
`reconstruct` only read, and take no lock.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil

LOCK_FILE = ".lock"


class WorkdirError(RuntimeError):
  """The work directory cannot be used: not a folder, not writable, or in use by a run."""


def check(path: str) -> None:
  """Refuses, before anything is created, a path that cannot become a run's work directory."""
  if not path:
    raise WorkdirError("--workdir is empty; give the folder to train in")
  if os.path.exists(path) and not os.path.isdir(path):
    raise WorkdirError(f"work directory {path} is a file, not a folder")
  existing = path
  while not os.path.exists(existing):  # The nearest folder that exists must be writable.
    existing = os.path.dirname(os.path.abspath(existing))
  if not os.access(existing, os.W_OK | os.X_OK):
    what = "work directory" if existing == path else f"folder {existing} (for {path})"
    raise WorkdirError(f"cannot write to the {what}: permission denied")


class Lock:
  """An exclusive lock on a work directory for as long as this object is open."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._fd = None
    try:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise WorkdirError(f"cannot lock {workdir} ({os.strerror(e.errno)})") from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      holder = _read_pid(fd)
      os.close(fd)
      if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
        raise WorkdirError(f"cannot lock {workdir} ({os.strerror(e.errno)})") from None
      by = f"process {holder}" if holder else "another process"
      raise WorkdirError(f"{workdir} is in use by {by} training in it; wait for it to end, "
                         "or use another --workdir") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    self._fd = fd

  def release(self) -> None:
    if self._fd is not None:
      os.close(self._fd)  # Closing the file releases the lock.
      self._fd = None


def _read_pid(fd: int) -> str:
  try:
    return os.pread(fd, 32, 0).decode().strip()
  except (OSError, UnicodeDecodeError):
    return ""


def remove_if_unused(path: str) -> None:
  """Removes a work directory this run created, if it holds no checkpoint and no record: a
  run that failed before its first step leaves nothing behind."""
  checkpoints = os.path.join(path, "checkpoints")
  if os.path.isdir(checkpoints) and os.listdir(checkpoints):
    return
  metrics = os.path.join(path, "metrics.jsonl")
  if os.path.exists(metrics) and os.path.getsize(metrics) > 0:
    return
  shutil.rmtree(path, ignore_errors=True)
