"""A run's `metrics.jsonl`: one JSON object per line, written by process 0, read by anyone.

Each line is a record with a `kind` ("train": one step; "eval": a held-out evaluation) and
the run's position, `images_seen`. A resumed run keeps the records up to its checkpoint and
drops what the interrupted run logged after it, so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import os

from progae_jax import parallel

FILENAME = "metrics.jsonl"


def read_metrics(path: str) -> list[dict]:
  """Every record of a metrics file (a work directory's `metrics.jsonl`); [] if it is absent."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


class MetricsLog:
  """Appends records to `<workdir>/metrics.jsonl`; only the main process writes."""

  def __init__(self, workdir: str, resume_at: int | None = None):
    """A fresh file, or (with `resume_at`, the images seen at the checkpoint resumed from) the
    old one cut back to the records at or before that position."""
    self.path = os.path.join(workdir, FILENAME)
    self.enabled = parallel.is_main_process()
    if self.enabled:
      kept = [r for r in read_metrics(self.path)
              if resume_at is not None and r["images_seen"] <= resume_at]
      with open(self.path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)

  def write(self, record: dict) -> None:
    if self.enabled:
      with open(self.path, "a") as f:
        f.write(json.dumps(record) + "\n")

  def read(self) -> list[dict]:
    return read_metrics(self.path)
