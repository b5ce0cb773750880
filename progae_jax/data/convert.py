"""From stored records to float32 batches at one resolution, and the caches that make it cheap.

    indices ─> Read (stored uint8, as on disk) ─> Convert: centre crop, fit to the native
               power of two, / 255, `downsample` k times ─> float32 (n, R, R, C) in [0, 1]

Runs in grain's worker threads, on whole batches (numpy). Cached pipelines keep what they
read: the stored images once per process (every later stage starts from them), the
converted ones once per pipeline (every later epoch is a gather).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from progae_jax.data.errors import DataError
from progae_jax.data.sources import Split
from progae_jax.ops import downsample


def halvings(native: int, resolution: Any, name: str) -> int:
  """How many 2x2 box filters take `native` to `resolution`; refuses the unreachable."""
  if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)):
    raise DataError(f"resolution must be an integer, got {resolution!r}")
  reachable = [native >> i for i in range(native.bit_length())]
  if resolution > native:
    raise DataError(f"resolution {resolution} is above {name!r}'s native resolution {native}")
  if resolution not in reachable:
    raise DataError(f"resolution {resolution} cannot be reached from {name!r}'s native "
                    f"resolution {native} by halving; reachable: {sorted(reachable)}")
  return reachable.index(resolution)


def _resize_matrix(size: int, out: int) -> np.ndarray:
  """(out, size) bilinear interpolation weights, half-pixel centres (like jax.image.resize)."""
  pos = np.clip((np.arange(out) + 0.5) * size / out - 0.5, 0, size - 1)
  lo = np.floor(pos).astype(int)
  hi = np.minimum(lo + 1, size - 1)
  m = np.zeros((out, size), np.float32)
  np.add.at(m, (np.arange(out), lo), 1 - (pos - lo))
  np.add.at(m, (np.arange(out), hi), pos - lo)
  return m


def _center_square(images: np.ndarray) -> np.ndarray:
  """Centre-crops NHWC images to squares (celeb_a's 218x178 -> 178x178)."""
  _, h, w, _ = images.shape
  s = min(h, w)
  y, x = (h - s) // 2, (w - s) // 2
  return images[:, y:y + s, x:x + s]


@dataclasses.dataclass(frozen=True)
class Convert:
  """Stored integer images (n, H, W[, C]) -> float32 (n, R, R, C) in [0, 1].

  Centre crop to a square, fit to the native power of two, scale to [0, 1], then
  `downsample` `halvings` times. The box filter treats every image and channel alike, so
  the batch goes through it laid out as one image with n*C channels: numpy then reduces
  long contiguous rows, about 4x faster than NHWC with C=3 innermost, same numbers.
  """

  fit: str
  native: int
  halvings: int

  def __call__(self, images: np.ndarray) -> np.ndarray:
    if images.ndim == 3:
      images = images[..., None]
    scale = np.float32(np.iinfo(images.dtype).max)  # x / 255: the correctly rounded value.
    images = _center_square(images)
    n, side, _, c = images.shape
    if side != self.native and self.fit == "pad":
      lo, hi = (self.native - side) // 2, self.native - side - (self.native - side) // 2
      images = np.pad(images, ((0, 0), (lo, hi), (lo, hi), (0, 0)))
      side = self.native
    if side == self.native and not self.halvings:  # Nothing to filter: just scale.
      x = images.astype(np.float32)
      x /= scale
      return x
    # (n, H, W, C) -> (1, H, W, n*C): one wide image, see the docstring.
    x = images.transpose(1, 2, 0, 3).reshape(1, side, side, n * c).astype(np.float32)
    x /= scale
    if side != self.native:  # fit == "resize"
      m = _resize_matrix(side, self.native)
      x = np.einsum("ph,ahwb,qw->apqb", m, x, m, optimize=True).clip(0, 1)
    for _ in range(self.halvings):
      x = downsample(x)
    r = x.shape[1]
    return np.ascontiguousarray(x.reshape(r, r, n, c).transpose(2, 0, 1, 3))




@dataclasses.dataclass(frozen=True)
class ReadBatch:
  """A batch of record indices -> float32 (n, R, R, C): read, stack, then convert at once.

  Converting the stacked batch, not each record, is what makes it fast. Picklable, so
  grain can run it in worker processes.
  """

  read: Any  # A `sources.Read`, or the `_Rows` that keep what it read.
  convert: Convert

  def __call__(self, indices) -> np.ndarray:
    return self.convert(self.read(indices))


class _Rows:
  """Record indices -> stored images, each read from disk once, then kept in memory.

  Made lazily: the first epoch reads as it goes, later ones gather rows from RAM. Rows are
  written before they are marked, and two threads can only write the same values.
  """

  def __init__(self, size: int, shape: tuple[int, ...], dtype, fill):
    self._fill = fill  # indices -> the rows' values
    self._rows = np.empty((size, *shape), dtype)  # The OS commits pages as rows land.
    self._have = np.zeros(size, bool)

  def __call__(self, indices) -> np.ndarray:
    indices = np.asarray(indices, np.int64)
    missing = np.unique(indices[~self._have[indices]])
    if missing.size:
      self._rows[missing] = self._fill(missing)
      self._have[missing] = True
    return self._rows[indices]


# The auto cache holds a split when each of its copies (stored, converted) fits in this.
CACHE_LIMIT_BYTES = 512 << 20

# Stored images of the splits cached so far, shared by every pipeline of this process: the
# next stage reads the same split, and so it skips the disk and the decoding (two thirds of
# a first epoch's cost). `clear_cache()` forgets them.
_STORED: dict[tuple, _Rows] = {}


def clear_cache() -> None:
  """Forgets the images that cached pipelines keep in memory (new pipelines read again)."""
  _STORED.clear()


def _stored_rows(split: Split) -> _Rows:
  rows = _STORED.get(split.memo_key) if split.memo_key else None
  if rows is None:
    rows = _Rows(len(split), split.first.shape, split.first.dtype, split.read)
    if split.memo_key:
      _STORED[split.memo_key] = rows
  return rows


def _keeps_stored(convert: Convert) -> bool:
  """At the native resolution, nothing is filtered: keep images as stored, convert per batch."""
  return convert.halvings == 0 and convert.fit != "resize"


def _converted_shape(convert: Convert, first: np.ndarray) -> tuple[int, int, int]:
  r = convert.native >> convert.halvings
  return (r, r, first.shape[2] if first.ndim == 3 else 1)


def pipeline_map(split: Split, convert: Convert, cache, worker_processes):
  """The grain map that turns index batches into image batches.

  Cached: stored images are kept once per process (shared by every stage), and below the
  native resolution also converted (float32 at R) once per pipeline; from the second epoch
  on a batch is a gather. Not cached: read and convert every batch. Same batches either way.
  """
  stored_bytes = len(split) * split.first.nbytes
  converted_bytes = 0 if _keeps_stored(convert) else (
      len(split) * int(np.prod(_converted_shape(convert, split.first))) * 4)
  if cache is None:
    cache = (max(stored_bytes, converted_bytes) <= CACHE_LIMIT_BYTES) and not worker_processes
  if cache and worker_processes:
    raise DataError("cache=True keeps the split in this process's memory; it cannot be used "
                    f"with worker_processes={worker_processes} (use threads, or cache=False)")
  if not cache:
    return ReadBatch(split.read, convert)
  stored = _stored_rows(split)
  if _keeps_stored(convert):
    return ReadBatch(stored, convert)
  return _Rows(len(split), _converted_shape(convert, split.first), np.float32,
               ReadBatch(stored, convert))
