"""The grain pipeline: seeded epochs of global batches, each process keeping its own rows.

    _GlobalBatches: batch k -> record indices   (a new permutation per epoch, batches run on
        │                                        across epoch ends)
        ├─ _ShardRows: this process's rows        [i*b, (i+1)*b) of each global batch
        └─ convert.pipeline_map: rows -> images   read, convert, cached
            └─ grain threads (+ processes), prefetch -> a resumable `DatasetIterator`

Every process walks the same seeded order of the whole split cut into global batches of
`batch_size`, and keeps rows [shard_index * b, (shard_index + 1) * b) of each,
b = batch_size // shard_count, reading only those records. So the sequence of global batches
does not depend on the number of processes, the shards of one epoch are disjoint and
together cover it, and one process (the default when jax runs one) sees plain batches.
"""

from __future__ import annotations

import dataclasses
import sys

import grain
import numpy as np

from progae_jax.data import convert as convert_lib
from progae_jax.data import sources
from progae_jax.data.errors import DataError


class _GlobalBatches(grain.MapDataset):
  """Global batch k -> the record indices in it.

  The records run in a seeded permutation per epoch, one epoch after the other, cut into
  batches of `batch_size` that run on across epoch ends: so every record is seen once per
  epoch and nothing is dropped but the last partial batch of a finite run. (numpy's
  permutation of a SeedSequence: one call per epoch, where grain's per-index shuffle
  costs ~20us an index, a millisecond a batch.)
  """

  def __init__(self, size: int, batch_size: int, seed: int | None,
               num_epochs: int | None):
    super().__init__()
    self._size, self._batch_size = size, batch_size
    self._seed, self._num_epochs = seed, num_epochs
    self._orders: dict[int, np.ndarray] = {}

  def __len__(self) -> int:
    if self._num_epochs is None:
      return sys.maxsize
    return self._size * self._num_epochs // self._batch_size

  def __str__(self) -> str:
    return f"_GlobalBatches(size={self._size}, batch_size={self._batch_size})"

  def _order(self, epoch: int) -> np.ndarray:
    if self._seed is None:
      return np.arange(self._size)
    order = self._orders.get(epoch)
    if order is None:
      rng = np.random.default_rng(np.random.SeedSequence([self._seed, epoch]))
      order = rng.permutation(self._size)
      self._orders = {epoch: order, **{e: o for e, o in self._orders.items() if e > epoch - 2}}
    return order

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    if not 0 <= index < len(self):
      raise IndexError(f"batch {index} is out of range [0, {len(self)})")
    start = index * self._batch_size
    epochs, offsets = np.divmod(np.arange(start, start + self._batch_size), self._size)
    out = np.empty(self._batch_size, np.int64)
    for epoch in np.unique(epochs):
      here = epochs == epoch
      out[here] = self._order(int(epoch))[offsets[here]]
    return out


@dataclasses.dataclass(frozen=True)
class _ShardRows:
  """This process's rows of a global batch of indices."""

  start: int
  stop: int

  def __call__(self, indices: np.ndarray) -> np.ndarray:
    return indices[self.start:self.stop]


def _shuffle_seed(seed: int) -> int:
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise DataError(f"seed must be a non-negative integer, got {seed!r}")
  return int(seed)


def _shards(shard_index, shard_count) -> tuple[int, int]:
  if shard_index is None and shard_count is None:
    import jax
    return jax.process_index(), jax.process_count()
  if shard_index is None or shard_count is None:
    raise DataError("give both shard_index and shard_count, or neither (then the jax process "
                    f"index and count are used); got {shard_index=}, {shard_count=}")
  if not 0 <= shard_index < shard_count:
    raise DataError(f"shard_index {shard_index} is not in [0, shard_count={shard_count})")
  return int(shard_index), int(shard_count)


def _global_batch(batch_size, shard_index, shard_count) -> tuple[int, int, int]:
  """(batch_size, shard_index, shard_count), checked: the batch splits evenly over shards."""
  batch_size = _positive(batch_size, "batch_size")
  shard_index, shard_count = _shards(shard_index, shard_count)
  if batch_size % shard_count:
    raise DataError(f"global batch_size {batch_size} is not divisible by shard_count "
                    f"{shard_count}")
  return batch_size, shard_index, shard_count


def _positive(value, what: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise DataError(f"{what} must be a positive integer, got {value!r}")
  return int(value)


def _converter(opened: sources.Split, resolution, opts: dict, name: str) -> convert_lib.Convert:
  native = sources.native_side(opened.first.shape, opts["fit"], name)
  return convert_lib.Convert(opts["fit"], native, convert_lib.halvings(native, resolution, name))


def _parse_absl_flags() -> None:
  """grain's worker processes read absl flags, which only `absl.app.run` parses; outside it
  (pytest, notebooks, plain scripts) the flags' defaults are what we want."""
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def batches(name: str, *, split: str = "train", resolution: int, batch_size: int,
            seed: int = 0, data_dir=None, num_epochs: int | None = None, shuffle: bool = True,
            shard_index: int | None = None, shard_count: int | None = None,
            worker_threads: int = 2, prefetch: int = 8, worker_processes: int = 0,
            cache: bool | None = None, **opts) -> grain.DatasetIterator:
  """An iterator of float32 (batch_size // shard_count, R, R, C) batches in [0, 1].

  `batch_size` is the GLOBAL batch size, summed over all `shard_count` processes, each of
  which keeps its own rows of every global batch (see the module's docstring).

  Args:
    name: one of BUILTIN_DATASETS, a folder of images, or a tfds dataset prepared in
      `data_dir`.
    split: "train", "test" (the `train_split`/`test_split` options) or any tfds split.
    resolution: side of the delivered images, native / 2**k (see `dataset_info`).
    batch_size: global batch size; a multiple of `shard_count`, at most the split's size.
    seed: the shuffle; the same seed gives the same batches.
    data_dir: where datasets are prepared; default $TFDS_DATA_DIR or ~/tensorflow_datasets.
    num_epochs: None repeats forever; else stops after that many passes (the last partial
      global batch is dropped).
    shuffle: False reads in file order (still batched, sharded and repeated).
    shard_index, shard_count: this process's place; default jax.process_index()/count().
    worker_threads: threads that each assemble whole batches ahead of the consumer.
    prefetch: batches kept ready (per process).
    worker_processes: if > 0, grain worker processes (mp_prefetch) on top of the threads.
    cache: keep each image, once read (and converted), in memory: the stored images once per
      process, shared with later stages; below the native resolution also float32 at R, for
      later epochs. None: yes when each of the two fits in CACHE_LIMIT_BYTES and there are
      no worker processes. The batches are the same either way.
    **opts: image_key, train_split, test_split, fit, data_resolution, channels (see
      `dataset_info`).

  Returns a grain `DatasetIterator`: `next(it)`, `it.get_state()`, `it.set_state(state)`;
  a restored state continues at the same next batch.
  """
  opts = sources.options(opts)
  batch_size, shard_index, shard_count = _global_batch(batch_size, shard_index, shard_count)
  if num_epochs is not None:
    _positive(num_epochs, "num_epochs")
  opened = sources.open_split(name, split, data_dir, opts)
  if batch_size > len(opened):
    raise DataError(f"batch_size {batch_size} is larger than {opened.read.where} "
                    f"({len(opened)} images): use a batch size of at most {len(opened)}")
  to_images = convert_lib.pipeline_map(opened, _converter(opened, resolution, opts, name),
                                       cache, worker_processes)
  local = batch_size // shard_count
  order = _GlobalBatches(len(opened), batch_size, _shuffle_seed(seed) if shuffle else None,
                         num_epochs)
  ds = (order
        .map(_ShardRows(shard_index * local, (shard_index + 1) * local))
        .map(to_images)
        .to_iter_dataset(grain.ReadOptions(num_threads=worker_threads,
                                           prefetch_buffer_size=prefetch)))
  if worker_processes:
    _parse_absl_flags()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_processes))
  return iter(ds)


def eval_images(name: str, *, resolution: int, count: int | None = None, data_dir=None,
                **opts) -> np.ndarray:
  """The first `count` images of the test split (all if None), float32 NHWC in [0, 1].

  Always the same images in the same order: use them to compare stages and runs.
  """
  opts = sources.options(opts)
  opened = sources.open_split(name, "test", data_dir, opts)
  count = len(opened) if count is None else _positive(count, "count")
  if count > len(opened):
    raise DataError(f"count {count} is larger than {opened.read.where} ({len(opened)} images)")
  read = convert_lib.ReadBatch(opened.read, _converter(opened, resolution, opts, name))
  return np.concatenate([read(range(i, min(i + 256, count))) for i in range(0, count, 256)])
