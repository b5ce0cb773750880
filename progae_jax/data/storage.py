"""Where prepared datasets live and how they are written: once, whole, one process at a time.

    data_dir/                         $TFDS_DATA_DIR, else ~/tensorflow_datasets
      digits/1.0.0/...                a built-in dataset (array_record files + tfds metadata)
      image_folder/NAME-KEY/1.0.0/... a folder of images, prepared
      .digits.lock                    taken while a process prepares `digits`

tfds writes a dataset into a temporary `incomplete.*` directory and renames it when every
split is written, so a crash midway leaves nothing that reads as prepared; `prepare_once`
adds the lock that makes processes preparing the same dataset take turns, and removes the
`incomplete.*` folders that a killed preparation left before it prepares again.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Callable

import numpy as np
import tensorflow_datasets as tfds

from progae_jax.data.errors import DataError

_log = logging.getLogger("progae_jax.data")


def resolve_data_dir(data_dir) -> str:
  """`data_dir`, else $TFDS_DATA_DIR, else tfds's usual ~/tensorflow_datasets."""
  if data_dir is None:
    data_dir = os.environ.get("TFDS_DATA_DIR") or os.path.join("~", "tensorflow_datasets")
  data_dir = os.path.abspath(os.path.expanduser(os.fspath(data_dir)))
  if os.path.exists(data_dir) and not os.path.isdir(data_dir):
    raise DataError(f"data_dir {data_dir} exists but is not a directory")
  return data_dir


def image_feature(shape):
  # Raw bytes: 1.5x smaller and 6x faster to decode than the default int64 list.
  return tfds.features.Tensor(shape=shape, dtype=np.uint8, encoding=tfds.features.Encoding.BYTES)


class LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A builder whose data is already on this machine: nothing to download, no checksums.

  Not registered in tfds's global catalogue (no clash with a catalogue name or on reload).
  """

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    # tfds looks for a checksums file next to the builder's code; finding that path outside
    # the tfds package needs the `importlib_resources` backport. Nothing is downloaded here,
    # so there are no checksums to find.
    return None

  def _log_download_bytes(self):
    # tfds prints "Downloading and preparing dataset Unknown size ..." to stdout: wrong here.
    _log.info("preparing %s in %s (once)", self.name, self.data_dir)

  def _log_download_done(self):
    _log.info("prepared %s in %s", self.name, self.data_dir)


def quiet_prepare(builder) -> None:
  """`download_and_prepare` without tfds's progress bars (it downloads nothing here)."""
  from tensorflow_datasets.core.utils import tqdm_utils
  was_active = getattr(tqdm_utils, "_active", True)
  tfds.display_progress_bar(False)
  try:
    builder.download_and_prepare()
  finally:
    tfds.display_progress_bar(was_active)


@contextlib.contextmanager
def lock(path: str):
  """An exclusive lock file: processes preparing the same dataset at once take turns."""
  try:
    import fcntl
  except ImportError:  # Not POSIX: no lock; tfds's rename still keeps the data whole.
    yield
    return
  with open(path, "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def absl_errors_only():
  """Mutes tfds's "Variant folder ... has no dataset_info.json": expected before preparing."""
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    absl_logger.setLevel(level)


def is_prepared(builder) -> bool:
  with absl_errors_only():
    return builder.is_prepared()


def prepare_once(make_builder: Callable[[], object], lock_path: str,
                 build: Callable[[object], None] = quiet_prepare) -> tuple[object, bool]:
  """(the builder, whether this call prepared it): prepared by whoever gets the lock first.

  `make_builder` is called again under the lock: another process may have finished.
  """
  builder = make_builder()
  if is_prepared(builder):
    return builder, False
  os.makedirs(os.path.dirname(lock_path), exist_ok=True)
  with lock(lock_path):
    builder = make_builder()
    if is_prepared(builder):
      return builder, False
    remove_incomplete(os.path.dirname(os.fspath(builder.data_dir)))
    build(builder)
  return builder, True


def remove_incomplete(directory: str) -> list[str]:
  """Removes the `incomplete.*` folders in `directory`: what a preparation that was killed
  left behind (tfds removes its own when it fails in any other way). Called under the lock,
  where no other process is writing one."""
  import glob
  import shutil
  stale = glob.glob(os.path.join(glob.escape(directory), "incomplete.*"))
  for path in stale:
    shutil.rmtree(path, ignore_errors=True)
  if stale:
    _log.info("removed %d incomplete folder(s) of a stopped preparation: %s", len(stale), stale)
  return stale
