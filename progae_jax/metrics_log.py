"""A run's `metrics.jsonl`: one JSON object per line, written by process 0, read by anyone.

Each line is a record with a `kind` ("train": one step; "eval": a held-out evaluation) and
the run's position, `images_seen`. A resumed run keeps the records up to its checkpoint and
drops what the interrupted run logged after it, so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import os
import sys

from progae_jax import parallel

FILENAME = "metrics.jsonl"


class MetricsError(ValueError):
  """A metrics file with a bad line before its last: the message names the file and line."""


def read_metrics(path: str, warn=None) -> list[dict]:
  """Every record of a metrics file (a work directory's `metrics.jsonl`); [] if it is absent.

  A last line that is not a complete record is what a process killed mid-write (or a full
  disk) leaves: it is dropped, with a warning through `warn` (a function taking one line;
  stderr by default). A bad line anywhere else is a `MetricsError` naming the file and line.
  """
  if not os.path.exists(path):
    return []
  with open(path, "rb") as f:
    lines = f.read().split(b"\n")
  records = []
  numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
  for n, (number, line) in enumerate(numbered):
    try:
      record = json.loads(line)
      if not isinstance(record, dict):
        raise ValueError(f"a JSON {type(record).__name__}, not an object")
    except ValueError as e:
      if n == len(numbered) - 1:
        (warn or _warn)(f"{path}:{number}: dropping its last line, which is incomplete "
                        f"({len(line)} bytes; a run stopped while writing it)")
        break
      raise MetricsError(f"{path}:{number}: not a metrics record ({e})") from None
    records.append(record)
  return records


def _warn(line: str) -> None:
  print(f"progae: warning: {line}", file=sys.stderr)


class MetricsLog:
  """Appends records to `<workdir>/metrics.jsonl`; only the main process writes."""

  def __init__(self, workdir: str, resume_at: int | None = None):
    """A fresh file, or (with `resume_at`, the images seen at the checkpoint resumed from) the
    old one cut back to the records at or before that position."""
    self.path = os.path.join(workdir, FILENAME)
    self.enabled = parallel.is_main_process()
    if self.enabled:
      kept = [r for r in read_metrics(self.path)
              if resume_at is not None and r.get("images_seen", 0) <= resume_at]
      # A new file replaces the old one whole: a crash now leaves one or the other.
      tmp = f"{self.path}.tmp"
      with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)
      os.replace(tmp, self.path)

  def write(self, record: dict) -> None:
    if self.enabled:
      try:
        with open(self.path, "a") as f:
          f.write(json.dumps(record) + "\n")
      except OSError as e:  # A write's error names no file (a full disk): this one.
        raise OSError(e.errno, e.strerror, e.filename or self.path) from None

  def read(self) -> list[dict]:
    return read_metrics(self.path)
