"""Opening a dataset's split: built in, a folder of images or a tfds dataset by name, checked
once, so that bad data fails here, clearly, and not midway through a run.

    name ──> built in?  builtin.prepare, then its builder ───────┐
         ├─> a folder?  folder.prepare, then the prepared copy ──┼─> Split: Read (indices ->
         └─> else       tfds.data_source from data_dir ──────────┘   the stored images) and
                                                                     its first image

`dataset_info` opens both splits and says what training needs to know (`DatasetSpec`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import numpy as np
import tensorflow_datasets as tfds

from progae_jax.config import ModelConfig
from progae_jax.data import builtin, folder, storage
from progae_jax.data.errors import DataError, DatasetNotPreparedError, UnknownDatasetError

# What a non-power-of-two image becomes (after a centre crop to a square):
#   "pad":    zero-padded symmetrically to the next power of two (mnist 28 -> 32). Default:
#             no pixel is resampled, the digits keep their exact values.
#   "resize": bilinearly resized up to the next power of two (celeb_a 178 -> 256).
#   "error":  refused, for users who want to know.
FIT_MODES = ("pad", "resize", "error")

_DEFAULT_IMAGE_KEY = "image"
_DEFAULT_TRAIN_SPLIT = "train"
_DEFAULT_TEST_SPLIT = "test"


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What training needs to know about a dataset before it reads a single batch.

  `native_resolution` is the side of the square images after the centre crop and `fit`,
  always a power of two: the largest resolution `batches` can deliver.
  """

  name: str
  native_resolution: int
  channels: int
  num_train: int
  num_test: int
  image_shape: tuple[int, ...]  # One stored image as read, (H, W, C) or (H, W).
  fit: str
  image_key: str
  train_split: str
  test_split: str
  data_dir: str

  @property
  def resolutions(self) -> tuple[int, ...]:
    """Every stage's resolution a model can train at on this data: 4, 8, ..., native."""
    return tuple(4 << i for i in range(max(0, self.native_resolution.bit_length() - 2)))


@dataclasses.dataclass(frozen=True)
class Read:
  """Record indices -> the stored images, stacked and checked (integers, as stored)."""

  source: Any
  image_key: str
  where: str
  remedy: str

  def __len__(self) -> int:
    return len(self.source)

  def __call__(self, indices) -> np.ndarray:
    try:
      records = [self.source[int(i)] for i in indices]
    except Exception as e:
      raise DataError(f"{self.where}: reading failed ({type(e).__name__}: {e}); "
                      f"{self.remedy}") from e
    try:
      images = np.stack([np.asarray(record[self.image_key]) for record in records])
    except ValueError as e:
      raise DataError(f"{self.where}: images of different shapes cannot be batched: {e}") from e
    check_images(images, self.where)
    return images


def _check_split(builder, name: str, split: str, where: str) -> None:
  """An unknown or empty split fails here, naming the splits there are."""
  if not storage.is_prepared(builder):  # tfds.testing.mock_data serves unprepared datasets.
    return
  splits = builder.info.splits
  try:
    size = splits[split].num_examples
  except (KeyError, ValueError) as e:
    raise DataError(f"{name!r} has no split {split!r}; its splits are {list(splits)}. Choose "
                    "with split=, train_split= or test_split= (tfds slices work: "
                    "'train[:90%]')") from e
  if size == 0:
    raise DataError(f"{where} is empty")


def _tfds_source(name: str, split: str, data_dir: str, where: str, image_key: str):
  """A tfds dataset's split as a random-access source; never downloads."""
  build_cmd = (f"`tfds build {name} --file_format=array_record --data_dir {data_dir}` on a "
               f"machine with internet (then copy {os.path.join(data_dir, name)} here)")
  if not os.path.isdir(data_dir):
    raise DatasetNotPreparedError(
        f"data_dir {data_dir} does not exist, so {name!r} is not prepared there (nothing is "
        f"downloaded). Prepare it with {build_cmd}")
  try:
    with storage.absl_errors_only():
      builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:
    raise UnknownDatasetError(
        f"unknown dataset {name!r}: the built-in datasets are "
        f"{', '.join(builtin.BUILTIN_DATASETS)}; any other name must be a folder of images "
        "(an existing path) or a tensorflow-datasets dataset (mnist, cifar10, ...)") from e
  _check_split(builder, name, split, where)
  features = builder.info.features
  feature = features[image_key] if features is not None and image_key in features else None
  if feature is not None and None in tuple(getattr(feature, "shape", ())):
    raise DataError(f"{name!r} images ({image_key!r}) vary in size, {feature.shape}; only "
                    "datasets of one image size are supported")
  remedy = f"delete {builder.data_dir} and run {build_cmd}"
  files = os.fspath(builder.data_dir) if storage.is_prepared(builder) else None  # None: a mock.
  try:
    with storage.absl_errors_only():
      source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    return source, remedy, files
  except Exception as e:
    if not storage.is_prepared(builder):
      raise DatasetNotPreparedError(
          f"{name!r} is not prepared in {data_dir} (nothing is downloaded). Prepare it with "
          f"{build_cmd}") from e
    raise DataError(f"{where} is unreadable ({type(e).__name__}: {e}); if its files are "
                    f"damaged, {remedy}") from e


def _builtin_source(name: str, split: str, data_dir: str, where: str):
  path = builtin.prepare(name, data_dir)
  remedy = f"delete {path} and it will be prepared again"
  builder = builtin.builder(name, data_dir)
  _check_split(builder, name, split, where)
  try:
    return builder.as_data_source(split), remedy, path
  except Exception as e:
    raise DataError(f"{where} is unreadable ({type(e).__name__}: {e}); {remedy}") from e


def _folder_source(name: str, split: str, data_dir: str, where: str, opts: dict):
  prepared = _prepare_folder(name, data_dir, opts)
  if prepared.fresh:
    print(prepared.report, flush=True)
  remedy = f"delete {prepared.path} and it will be prepared again"
  try:
    builder = tfds.builder_from_directory(prepared.path)
    _check_split(builder, name, split, where)
    return builder.as_data_source(split), remedy, prepared.path
  except DataError:
    raise
  except Exception as e:
    raise DataError(f"{where} is unreadable ({type(e).__name__}: {e}); {remedy}") from e


def _prepare_folder(name: str, data_dir: str, opts: dict) -> folder.Prepared:
  """A folder's prepared copy; the resolution defaults to a default model's largest."""
  resolution = opts["data_resolution"] or ModelConfig.max_resolution
  return folder.prepare(name, data_dir, resolution, opts["channels"] or 3)


def _check_folder_options(name: str, opts: dict) -> None:
  given = [k for k in ("data_resolution", "channels") if opts[k] is not None]
  if given and (name in builtin.BUILTIN_DATASETS or not folder.is_folder(name)):
    raise DataError(f"the options {given} (--data-resolution, --image-channels) apply only to "
                    f"a folder of images, and {name!r} is not one")


def _split_name(split: str, opts: dict) -> str:
  """'train' and 'test' name roles (see `train_split`/`test_split`); others pass to tfds."""
  return {"train": opts["train_split"], "test": opts["test_split"]}.get(split, split)


def _probe(source, where: str, key: str, remedy: str) -> np.ndarray:
  """Reads a few records spread over the split and returns the first image, checked.

  Sixteen evenly spaced reads touch every shard file of the built-in datasets, so a
  missing or truncated file fails here, with the remedy, rather than midway through a run.
  """
  n = len(source)
  if n == 0:
    raise DataError(f"{where} is empty")
  try:
    first = source[0]
    for i in np.linspace(0, n - 1, min(n, 16)).astype(int)[1:]:
      source[int(i)]
  except Exception as e:
    raise DataError(f"{where} is unreadable ({type(e).__name__}: {e}); its files may be "
                    f"damaged or half-written: {remedy}") from e
  if not isinstance(first, dict) or key not in first:
    keys = sorted(first) if isinstance(first, dict) else type(first).__name__
    raise DataError(f"{where} has no image feature {key!r}; its features are {keys}: "
                    "pass image_key=...")
  image = np.asarray(first[key])
  check_images(image[None], where)
  return image


def check_images(batch: np.ndarray, where: str) -> None:
  """Refuses anything but a batch of (H, W) or (H, W, C) integer images."""
  if batch.ndim not in (3, 4):
    raise DataError(f"{where}: images must have rank 2 (H, W) or 3 (H, W, C), got shape "
                    f"{batch.shape[1:]}")
  if batch.dtype not in (np.uint8, np.uint16):
    raise DataError(f"{where}: images must be uint8 or uint16, got {batch.dtype}")


# The keyword options every dataset function takes (TrainConfig.dataset_options).
DATASET_OPTIONS = ("channels", "data_resolution", "fit", "image_key", "test_split",
                   "train_split")


def folder_options_for(model: ModelConfig) -> dict:
  """The options that store a folder of images as `model` takes it: at its final resolution,
  with its image channels (the data layer's defaults, 32x32 RGB, suit a default model only)."""
  return {"data_resolution": model.max_resolution, "channels": model.image_channels}


def folder_identity(name: str, *, data_dir=None, **opts) -> dict | None:
  """What pins a folder's prepared copy to a run (None for a dataset that is not a folder):
  the copy's name (NAME-OPTIONS-CONTENTS: it changes with the files), the files it was made
  from, and the relative paths of its held-out images, in the order `eval_images` reads them."""
  if name in builtin.BUILTIN_DATASETS or not folder.is_folder(name):
    return None
  opts = options(opts)
  prepared = _prepare_folder(name, storage.resolve_data_dir(data_dir), opts)
  test = open_split(name, "test", data_dir, opts)
  held_out = [test.read.source[i]["path"] for i in range(len(test))]
  return {"folder": os.path.abspath(os.path.expanduser(name)),
          "prepared": os.path.basename(os.path.dirname(prepared.path)),
          "files": folder.contents(prepared.path),
          "held_out": [p.decode("utf-8", "replace") if isinstance(p, bytes) else str(p)
                       for p in held_out]}


def options(opts: dict) -> dict:
  known = {"image_key": _DEFAULT_IMAGE_KEY, "train_split": _DEFAULT_TRAIN_SPLIT,
           "test_split": _DEFAULT_TEST_SPLIT, "fit": "pad", "data_resolution": None,
           "channels": None}
  assert set(known) == set(DATASET_OPTIONS)
  unknown = sorted(set(opts) - set(DATASET_OPTIONS))
  if unknown:
    raise TypeError(f"unknown dataset options {unknown}; known: {sorted(known)}")
  out = {**known, **{k: v for k, v in opts.items() if v is not None}}
  if out["fit"] not in FIT_MODES:
    raise DataError(f"fit={out['fit']!r} is not one of {FIT_MODES}")
  return out


@dataclasses.dataclass(frozen=True)
class Split:
  """One opened and checked split."""

  read: Read
  first: np.ndarray  # Its first image, as stored.
  name: str  # The tfds split name.
  data_dir: str
  memo_key: tuple | None  # Names the split's files on disk; None when there are none (mock).

  def __len__(self) -> int:
    return len(self.read)


def open_split(name: str, split: str, data_dir, opts: dict) -> Split:
  if not isinstance(name, str) or not name:
    raise UnknownDatasetError(f"dataset name must be a non-empty string, got {name!r}")
  data_dir = storage.resolve_data_dir(data_dir)
  _check_folder_options(name, opts)
  split = _split_name(split, opts)
  where = f"split {split!r} of {name!r} in {data_dir}"
  if name in builtin.BUILTIN_DATASETS:
    source, remedy, files = _builtin_source(name, split, data_dir, where)
  elif folder.is_folder(name):
    source, remedy, files = _folder_source(name, split, data_dir, where, opts)
  else:
    source, remedy, files = _tfds_source(name, split, data_dir, where, opts["image_key"])
  key = opts["image_key"]
  first = _probe(source, where, key, remedy)
  return Split(Read(source, key, where, remedy), first, split, data_dir,
               None if files is None else (files, split, key))


def native_side(shape: Sequence[int], fit: str, name: str) -> int:
  """The power-of-two side an image of `shape` becomes: centre crop to square, then `fit`."""
  side = min(shape[0], shape[1])
  power = 1 << max(0, side - 1).bit_length()
  if power != side and fit == "error":
    raise DataError(f"{name!r} images are {side}x{side} (after a centre crop), not a power of "
                    "two: pass fit='pad' or fit='resize'")
  return power


def dataset_info(name: str, *, data_dir=None, **opts) -> DatasetSpec:
  """Native resolution, channels and split sizes of a dataset (prepares a built-in one, or a
  folder of images: `name` an existing directory).

  Options (also accepted by `batches` and `eval_images`): `image_key` ("image"),
  `train_split` ("train"), `test_split` ("test"): tfds split names, slices allowed, e.g.
  train_split="train[:90%]", test_split="train[90%:]" for a dataset with no test split;
  `fit` ("pad"): see FIT_MODES. A folder's only: `data_resolution`, the side its images are
  stored at (a power of two; default 32, a default model's max_resolution), and `channels`
  (3: RGB, 1: grayscale).
  """
  opts = options(opts)
  train = open_split(name, "train", data_dir, opts)
  test = open_split(name, "test", data_dir, opts)
  first = train.first
  return DatasetSpec(
      name=name, native_resolution=native_side(first.shape, opts["fit"], name),
      channels=first.shape[2] if first.ndim == 3 else 1, num_train=len(train),
      num_test=len(test), image_shape=tuple(first.shape), fit=opts["fit"],
      image_key=opts["image_key"], train_split=opts["train_split"],
      test_split=opts["test_split"], data_dir=train.data_dir)


def prepare(name: str, *, data_dir=None, **opts) -> str:
  """Prepares a built-in dataset or a folder of images in `data_dir` if it is not there yet;
  returns its directory. For a folder, prints the report of its preparation (see `folder`);
  options: `data_resolution` (default 32, a default model's max_resolution), `channels` (3).

  tfds writes into a temporary `incomplete.*` directory and renames it when every split is
  written, so a crash midway leaves nothing that a later call would take for prepared data;
  a lock file makes processes that prepare at the same time (several local jax processes)
  wait for the first. Other datasets are prepared with tfds itself (see
  `DatasetNotPreparedError`'s message).
  """
  data_dir = storage.resolve_data_dir(data_dir)
  if name in builtin.BUILTIN_DATASETS or not folder.is_folder(name):
    unknown = sorted(k for k, v in opts.items() if v is not None)
    if unknown:
      raise DataError(f"the options {unknown} apply only to a folder of images, and {name!r} is "
                      "not one")
    return builtin.prepare(name, data_dir)
  prepared = _prepare_folder(name, data_dir, options(opts))
  print(prepared.report if prepared.fresh else f"Already prepared: {prepared.report}",
        flush=True)
  return prepared.path
