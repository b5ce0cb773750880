"""The data a run trains on, pinned to its work directory, so that a resume is on the same data.

    a run starts on a folder    -> WORKDIR/data.json     its prepared copy's name, the files it
                                                         was made from, the held-out paths
                                   WORKDIR/held_out.npy  the held-out images, as evaluated
    a resume: the folder's prepared copy now, against data.json
      the same copy             -> the exact resume (data position and held-out images)
      another (files changed)   -> refused, one line: what changed and the two ways on
      another, with --continue-on-new-data
                                -> the saved data position is dropped: the current phase's data
                                   order starts over on the new contents; the weights, the
                                   position in the schedule and the held-out images (from
                                   held_out.npy) are kept. data.json pins the new copy and
                                   lists the change, which config.json and metrics.jsonl
                                   record too.

Built-in and tfds datasets do not change under a run and are not pinned.
"""

from __future__ import annotations

import json
import os

import numpy as np

from progae_jax.data.errors import DataError

DATA_JSON, HELD_OUT = "data.json", "held_out.npy"
CONTINUE_FLAG = "--continue-on-new-data"


class DataChangedError(DataError):
  """The folder a run trains on changed since the run started."""


def pinned(workdir: str) -> dict | None:
  """WORKDIR/data.json (None when the run pinned nothing: not a folder, or an older run)."""
  try:
    with open(os.path.join(workdir, DATA_JSON)) as f:
      return json.load(f)
  except FileNotFoundError:
    return None


def pin(workdir: str, identity: dict, held_out: np.ndarray, changes: list | None = None) -> None:
  """Records `identity` (data.folder_identity) and the held-out images in the work directory."""
  _write(os.path.join(workdir, HELD_OUT), lambda f: np.save(f, held_out), binary=True)
  record = dict(identity, changes=changes or [])
  _write(os.path.join(workdir, DATA_JSON), lambda f: json.dump(record, f))


def _write(path: str, write, binary: bool = False) -> None:
  tmp = path + ".tmp"
  with open(tmp, "wb" if binary else "w") as f:
    write(f)
  os.replace(tmp, path)


def held_out_images(workdir: str) -> np.ndarray:
  return np.load(os.path.join(workdir, HELD_OUT))


def changed(before: dict, now: dict) -> str | None:
  """What changed between two identities ('20 added, 0 removed, 0 modified'), or None."""
  if before["prepared"] == now["prepared"]:
    return None
  from progae_jax.data.folder import changes
  return changes(before["files"], now["files"])


def refusal(folder: str, what: str, images_seen: int, phase_name: str,
            phase_start: int) -> DataChangedError:
  """The one line that refuses a resume on a changed folder."""
  return DataChangedError(
      f"{folder} changed since this run started ({what}): resuming would train on other data "
      f"than its checkpoint's position refers to, and evaluate other held-out images. Start "
      f"afresh with --restart, or continue at {images_seen:,} images on the new contents with "
      f"{CONTINUE_FLAG} (the {phase_name} phase's data order starts over, as at "
      f"{phase_start:,} images; the old held-out images are kept for evaluation)")


def change_record(what: str, images_seen: int, before: dict, now: dict) -> dict:
  """How data.json, config.json and metrics.jsonl record a continuation on new contents."""
  return {"images_seen": images_seen, "changes": what, "from": before["prepared"],
          "to": now["prepared"], "held_out": "kept"}
