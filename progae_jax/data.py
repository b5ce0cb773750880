"""Images for progressive training: the same pictures at 4x4, 8x8, 16x16, ..., offline.

Storage is tensorflow-datasets (array_record files, `tfds.features.Tensor` features, no
TensorFlow); loading is grain. Every image is brought to a stage's resolution by repeating
`progae_jax.ops.downsample`, the 2x2 box filter the model uses, so "this image at 8x8" is
the same array here, in the model's skip path and in the faded training target.

Public API:

  dataset_info(name, ...) -> DatasetSpec     what a dataset holds (native size, channels, ...)
  batches(name, ...) -> iterator             float32 NHWC batches in [0, 1], get/set_state
  eval_images(name, ...) -> np.ndarray       a fixed, deterministic held-out set
  prepare(name, ...) -> str                  build a built-in dataset now (else on first use)
  clear_cache()                              free the images cached pipelines keep in memory
  BUILTIN_DATASETS                           datasets made from files inside installed packages
  DataError (UnknownDatasetError, DatasetNotPreparedError)   every refusal

Datasets are either built in (`digits`, `image_patches`: real images that ship with
scikit-learn and scikit-image, prepared into `data_dir` on first use) or any tfds dataset by
name, read from a `data_dir` where `tfds build NAME --file_format=array_record` prepared it.
Nothing is ever downloaded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
from typing import Any, Iterator, Sequence

import grain
import numpy as np
import tensorflow_datasets as tfds

from progae_jax.ops import downsample

BUILTIN_DATASETS = ("digits", "image_patches")

_log = logging.getLogger(__name__)

# What a non-power-of-two image becomes (after a centre crop to a square):
#   "pad":    zero-padded symmetrically to the next power of two (mnist 28 -> 32). Default:
#             no pixel is resampled, the digits keep their exact values.
#   "resize": bilinearly resized up to the next power of two (celeb_a 178 -> 256).
#   "error":  refused, for users who want to know.
FIT_MODES = ("pad", "resize", "error")

_DEFAULT_IMAGE_KEY = "image"
_DEFAULT_TRAIN_SPLIT = "train"
_DEFAULT_TEST_SPLIT = "test"
# The keyword options every dataset function takes (TrainConfig.dataset_options).
DATASET_OPTIONS = ("fit", "image_key", "test_split", "train_split")


class DataError(ValueError):
  """Bad data or a bad request for data: what this module raises (TypeError aside, for an
  unknown keyword option)."""


class UnknownDatasetError(DataError):
  """The name is neither built in nor a tensorflow-datasets dataset."""


class DatasetNotPreparedError(DataError, FileNotFoundError):
  """A tfds dataset exists but was not prepared in `data_dir` (nothing is downloaded)."""


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


# ---------------------------------------------------------------------------------------------
# Built-in datasets: tfds builders that prepare themselves from files in installed packages.
# ---------------------------------------------------------------------------------------------

# scikit-learn's digits are UCI's optdigits test set in file order; 1,797 images, no two equal.
_DIGITS_NUM_TRAIN = 1500

# Colour photographs that ship inside the scikit-image and scikit-learn wheels (checked to load
# with no network and no pooch). Test crops come only from the test photos. Left out: `cat`
# (it is `chelsea`), `colorwheel` and `logo` (synthetic), `stereo_motorcycle` (no stated
# licence).
_PATCH_TRAIN_PHOTOS = ("astronaut", "chelsea", "rocket", "immunohistochemistry",
                       "hubble_deep_field", "retina", "flower")
_PATCH_TEST_PHOTOS = ("coffee", "china")
PATCH_PHOTOS = _PATCH_TRAIN_PHOTOS + _PATCH_TEST_PHOTOS  # A crop's "source" indexes this.
_PATCH_LICENCE = ("astronaut, rocket, hubble_deep_field: public domain (NASA, SpaceX); "
                  "chelsea, coffee, retina: CC0 1.0; immunohistochemistry: no known copyright "
                  "restrictions (CMMI); china, flower: CC BY 2.0 (Flickr users danielbuechele, "
                  "vultilion), as shipped in sklearn/datasets/images")
_PATCH_SIZE = 64
_PATCH_SCALES = (1, 2, 4)  # Crops of 64, 128 and 256 pixels, box-filtered down to 64.
_PATCH_MIN_STD = 6.0  # Crops flatter than this (uint8 units) are drawn again: black sky.
_PATCH_COUNTS = {"train": 20_000, "test": 2_000}
_PATCH_SEEDS = {"train": 1, "test": 2}  # Fixed per VERSION: the crops never change.


def _load_photo(name: str) -> np.ndarray:
  """One packaged photograph as uint8 (H, W, 3)."""
  if name in ("china", "flower"):
    from sklearn.datasets import load_sample_image  # Needs pillow.
    return load_sample_image(f"{name}.jpg")
  import skimage.data
  return getattr(skimage.data, name)()


def _pyramid(photo: np.ndarray) -> list[np.ndarray]:
  """The photo box-filtered 0, 1, 2, ... times, while a 64x64 crop still fits.

  A 64x64 crop of level j at (y, x) is exactly the 64*2**j crop at (y*2**j, x*2**j),
  box-filtered j times: cropping the pyramid costs a slice, not a filter per crop.
  """
  levels = [photo[None].astype(np.float32)]
  while len(levels) < len(_PATCH_SCALES):
    _, h, w, _ = levels[-1].shape
    if min(h, w) // 2 < _PATCH_SIZE:
      break
    levels.append(downsample(levels[-1][:, :h // 2 * 2, :w // 2 * 2]))
  return [level[0] for level in levels]


def _random_crops(photo: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
  """`count` 64x64 uint8 crops of one photo at random places, scales and mirror flips."""
  levels = _pyramid(photo)
  out = np.empty((count, _PATCH_SIZE, _PATCH_SIZE, 3), np.uint8)
  for i in range(count):
    for _ in range(20):  # Retry flat crops; the 20th is kept whatever it is.
      level = levels[rng.integers(len(levels))]
      h, w, _ = level.shape
      y, x = rng.integers(h - _PATCH_SIZE + 1), rng.integers(w - _PATCH_SIZE + 1)
      crop = level[y:y + _PATCH_SIZE, x:x + _PATCH_SIZE]
      if crop.std() >= _PATCH_MIN_STD:
        break
    if rng.integers(2):
      crop = crop[:, ::-1]
    out[i] = np.clip(np.rint(crop), 0, 255).astype(np.uint8)
  return out


def _patch_examples(split: str) -> Iterator[tuple[int, dict]]:
  """The crops of one split, the same ones every time (a fixed seed per split)."""
  photos = _PATCH_TRAIN_PHOTOS if split == "train" else _PATCH_TEST_PHOTOS
  rng = np.random.default_rng(_PATCH_SEEDS[split])
  total = _PATCH_COUNTS[split]
  key = 0
  for p, name in enumerate(photos):
    count = total // len(photos) + (p < total % len(photos))
    for crop in _random_crops(_load_photo(name), count, rng):
      yield key, {"image": crop, "source": PATCH_PHOTOS.index(name)}
      key += 1


def _digit_examples(split: str) -> Iterator[tuple[int, dict]]:
  """scikit-learn's digits: values 0..16 scaled to uint8 0..255; first 1,500 train."""
  from sklearn.datasets import load_digits
  digits = load_digits()
  images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  span = range(_DIGITS_NUM_TRAIN) if split == "train" else range(_DIGITS_NUM_TRAIN, len(images))
  for i in span:
    yield i, {"image": images[i], "label": int(digits.target[i])}


def _image_feature(shape):
  # Raw bytes: 1.5x smaller and 6x faster to decode than the default int64 list.
  return tfds.features.Tensor(shape=shape, dtype=np.uint8, encoding=tfds.features.Encoding.BYTES)


class _PackagedBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A builder whose data ships in installed packages: both splits, nothing to download.

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

  def _split_generators(self, dl_manager):
    del dl_manager  # Unused: the data is already on disk.
    return {split: self._generate_examples(split) for split in ("train", "test")}


class Digits(_PackagedBuilder, skip_registration=True):
  """scikit-learn's 1,797 handwritten digits, 8x8 grayscale: the 4x4 -> 8x8 seed case."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First 1,500 of sklearn's order train, last 297 test."}

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description="scikit-learn load_digits: UCI optdigits test set, 8x8, 17 grey levels.",
        features=tfds.features.FeaturesDict({
            "image": _image_feature((8, 8, 1)),
            "label": tfds.features.Tensor(shape=(), dtype=np.int64)}),
        homepage="https://archive.ics.uci.edu/dataset/80",
        license="CC BY 4.0 (UCI); shipped in scikit-learn (BSD-3-Clause)")

  def _generate_examples(self, split):
    yield from _digit_examples(split)


class ImagePatches(_PackagedBuilder, skip_registration=True):
  """64x64 RGB crops of the colour photographs packaged with scikit-image and scikit-learn."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "20,000 train crops of 7 photos, 2,000 test crops of 2 others."}

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=("Random 64x64 crops (64, 128 or 256 pixels box-filtered to 64, mirrored "
                     f"at random) of {', '.join(_PATCH_TRAIN_PHOTOS)} (train) and "
                     f"{', '.join(_PATCH_TEST_PHOTOS)} (test). 'source' indexes {PATCH_PHOTOS}."),
        features=tfds.features.FeaturesDict({
            "image": _image_feature((_PATCH_SIZE, _PATCH_SIZE, 3)),
            "source": tfds.features.Tensor(shape=(), dtype=np.int64)}),
        homepage="https://scikit-image.org/docs/stable/api/skimage.data.html",
        license=_PATCH_LICENCE)

  def _generate_examples(self, split):
    yield from _patch_examples(split)


_BUILDERS = {"digits": Digits, "image_patches": ImagePatches}


def _resolve_data_dir(data_dir) -> str:
  """`data_dir`, else $TFDS_DATA_DIR, else tfds's usual ~/tensorflow_datasets."""
  if data_dir is None:
    data_dir = os.environ.get("TFDS_DATA_DIR") or os.path.join("~", "tensorflow_datasets")
  data_dir = os.path.abspath(os.path.expanduser(os.fspath(data_dir)))
  if os.path.exists(data_dir) and not os.path.isdir(data_dir):
    raise DataError(f"data_dir {data_dir} exists but is not a directory")
  return data_dir


def _quiet_prepare(builder) -> None:
  """`download_and_prepare` without progress bars (it downloads nothing here)."""
  from tensorflow_datasets.core.utils import tqdm_utils
  was_active = getattr(tqdm_utils, "_active", True)
  tfds.display_progress_bar(False)
  try:
    builder.download_and_prepare()
  finally:
    tfds.display_progress_bar(was_active)


@contextlib.contextmanager
def _lock(path: str):
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


def prepare(name: str, *, data_dir=None) -> str:
  """Prepares a built-in dataset in `data_dir` if it is not there yet; returns its directory.

  tfds writes into a temporary `incomplete.*` directory and renames it when every split is
  written, so a crash midway leaves nothing that a later call would take for prepared data;
  a lock file makes processes that prepare at the same time (several local jax processes)
  wait for the first. Other datasets are prepared with tfds itself (see
  `DatasetNotPreparedError`'s message).
  """
  if name not in _BUILDERS:
    raise UnknownDatasetError(
        f"prepare() builds the built-in datasets {BUILTIN_DATASETS}, not {name!r}; prepare a "
        f"tfds dataset with `tfds build {name} --file_format=array_record`")
  data_dir = _resolve_data_dir(data_dir)
  os.makedirs(data_dir, exist_ok=True)
  builder = _builtin_builder(name, data_dir)
  if not _is_prepared(builder):
    with _lock(os.path.join(data_dir, f".{name}.lock")):
      builder = _builtin_builder(name, data_dir)  # Another process may have finished it.
      if not _is_prepared(builder):
        _quiet_prepare(builder)
  return os.fspath(builder.data_path)


@contextlib.contextmanager
def _absl_errors_only():
  """Mutes tfds's "Variant folder ... has no dataset_info.json": expected before preparing."""
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    absl_logger.setLevel(level)


def _is_prepared(builder) -> bool:
  with _absl_errors_only():
    return builder.is_prepared()


def _builtin_builder(name: str, data_dir: str):
  try:
    return _BUILDERS[name](data_dir=data_dir, file_format="array_record")
  except Exception as e:
    path = os.path.join(data_dir, name)
    raise DataError(f"the prepared {name!r} in {path} is unreadable ({type(e).__name__}: "
                    f"{e}); delete {path} and it will be prepared again") from e


# ---------------------------------------------------------------------------------------------
# Opening a split: built-in or by name, checked once so that bad data fails here, clearly.
# ---------------------------------------------------------------------------------------------


def _check_split(builder, name: str, split: str, where: str) -> None:
  """An unknown or empty split fails here, naming the splits there are."""
  if not _is_prepared(builder):  # tfds.testing.mock_data serves unprepared datasets.
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
    with _absl_errors_only():
      builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:
    raise UnknownDatasetError(
        f"unknown dataset {name!r}: the built-in datasets are {', '.join(BUILTIN_DATASETS)}; "
        f"any other name must be a tensorflow-datasets dataset (mnist, cifar10, ...)") from e
  _check_split(builder, name, split, where)
  features = builder.info.features
  feature = features[image_key] if features is not None and image_key in features else None
  if feature is not None and None in tuple(getattr(feature, "shape", ())):
    raise DataError(f"{name!r} images ({image_key!r}) vary in size, {feature.shape}; only "
                    "datasets of one image size are supported")
  remedy = f"delete {builder.data_dir} and run {build_cmd}"
  files = os.fspath(builder.data_dir) if _is_prepared(builder) else None  # None: a mock.
  try:
    with _absl_errors_only():
      source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    return source, remedy, files
  except Exception as e:
    if not _is_prepared(builder):
      raise DatasetNotPreparedError(
          f"{name!r} is not prepared in {data_dir} (nothing is downloaded). Prepare it with "
          f"{build_cmd}") from e
    raise DataError(f"{where} is unreadable ({type(e).__name__}: {e}); if its files are "
                    f"damaged, {remedy}") from e


def _builtin_source(name: str, split: str, data_dir: str, where: str):
  path = prepare(name, data_dir=data_dir)
  remedy = f"delete {path} and it will be prepared again"
  builder = _builtin_builder(name, data_dir)
  _check_split(builder, name, split, where)
  try:
    return builder.as_data_source(split), remedy, path
  except Exception as e:
    raise DataError(f"{where} is unreadable ({type(e).__name__}: {e}); {remedy}") from e


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
  _check_images(image[None], where)
  return image


def _check_images(batch: np.ndarray, where: str) -> None:
  """Refuses anything but a batch of (H, W) or (H, W, C) integer images."""
  if batch.ndim not in (3, 4):
    raise DataError(f"{where}: images must have rank 2 (H, W) or 3 (H, W, C), got shape "
                    f"{batch.shape[1:]}")
  if batch.dtype not in (np.uint8, np.uint16):
    raise DataError(f"{where}: images must be uint8 or uint16, got {batch.dtype}")


def _options(opts: dict) -> dict:
  known = {"image_key": _DEFAULT_IMAGE_KEY, "train_split": _DEFAULT_TRAIN_SPLIT,
           "test_split": _DEFAULT_TEST_SPLIT, "fit": "pad"}
  unknown = sorted(set(opts) - set(DATASET_OPTIONS))
  if unknown:
    raise TypeError(f"unknown dataset options {unknown}; known: {sorted(known)}")
  out = {**known, **{k: v for k, v in opts.items() if v is not None}}
  if out["fit"] not in FIT_MODES:
    raise DataError(f"fit={out['fit']!r} is not one of {FIT_MODES}")
  return out


@dataclasses.dataclass(frozen=True)
class _Split:
  """One opened and checked split."""

  read: "_Read"
  first: np.ndarray  # Its first image, as stored.
  name: str  # The tfds split name.
  data_dir: str
  memo_key: tuple | None  # Names the split's files on disk; None when there are none (mock).

  def __len__(self) -> int:
    return len(self.read)


def _open(name: str, split: str, data_dir, opts: dict) -> _Split:
  if not isinstance(name, str) or not name:
    raise UnknownDatasetError(f"dataset name must be a non-empty string, got {name!r}")
  data_dir = _resolve_data_dir(data_dir)
  split = _split_name(split, opts)
  where = f"split {split!r} of {name!r} in {data_dir}"
  if name in _BUILDERS:
    source, remedy, files = _builtin_source(name, split, data_dir, where)
  else:
    source, remedy, files = _tfds_source(name, split, data_dir, where, opts["image_key"])
  key = opts["image_key"]
  first = _probe(source, where, key, remedy)
  return _Split(_Read(source, key, where, remedy), first, split, data_dir,
                None if files is None else (files, split, key))


def _native(shape: Sequence[int], fit: str, name: str) -> int:
  """The power-of-two side an image of `shape` becomes: centre crop to square, then `fit`."""
  side = min(shape[0], shape[1])
  power = 1 << max(0, side - 1).bit_length()
  if power != side and fit == "error":
    raise DataError(f"{name!r} images are {side}x{side} (after a centre crop), not a power of "
                    "two: pass fit='pad' or fit='resize'")
  return power


def dataset_info(name: str, *, data_dir=None, **opts) -> DatasetSpec:
  """Native resolution, channels and split sizes of a dataset (prepares a built-in one).

  Options (also accepted by `batches` and `eval_images`): `image_key` ("image"),
  `train_split` ("train"), `test_split` ("test"): tfds split names, slices allowed, e.g.
  train_split="train[:90%]", test_split="train[90%:]" for a dataset with no test split;
  `fit` ("pad"): see FIT_MODES.
  """
  opts = _options(opts)
  train = _open(name, "train", data_dir, opts)
  test = _open(name, "test", data_dir, opts)
  first = train.first
  return DatasetSpec(
      name=name, native_resolution=_native(first.shape, opts["fit"], name),
      channels=first.shape[2] if first.ndim == 3 else 1, num_train=len(train),
      num_test=len(test), image_shape=tuple(first.shape), fit=opts["fit"],
      image_key=opts["image_key"], train_split=opts["train_split"],
      test_split=opts["test_split"], data_dir=train.data_dir)


# ---------------------------------------------------------------------------------------------
# From records to a float32 batch at one resolution (numpy, in grain's worker threads).
# ---------------------------------------------------------------------------------------------


def _halvings(native: int, resolution: Any, name: str) -> int:
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
class _Convert:
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
class _Read:
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
    _check_images(images, self.where)
    return images


@dataclasses.dataclass(frozen=True)
class _ReadBatch:
  """A batch of record indices -> float32 (n, R, R, C): read, stack, then convert at once.

  Converting the stacked batch, not each record, is what makes it fast. Picklable, so
  grain can run it in worker processes.
  """

  read: Any  # A `_Read`, or the `_Rows` that keep what it read.
  convert: _Convert

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


def _stored_rows(split: _Split) -> _Rows:
  rows = _STORED.get(split.memo_key) if split.memo_key else None
  if rows is None:
    rows = _Rows(len(split), split.first.shape, split.first.dtype, split.read)
    if split.memo_key:
      _STORED[split.memo_key] = rows
  return rows


def _keeps_stored(convert: _Convert) -> bool:
  """At the native resolution, nothing is filtered: keep images as stored, convert per batch."""
  return convert.halvings == 0 and convert.fit != "resize"


def _converted_shape(convert: _Convert, first: np.ndarray) -> tuple[int, int, int]:
  r = convert.native >> convert.halvings
  return (r, r, first.shape[2] if first.ndim == 3 else 1)


def _pipeline_map(split: _Split, convert: _Convert, cache, worker_processes):
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
    return _ReadBatch(split.read, convert)
  stored = _stored_rows(split)
  if _keeps_stored(convert):
    return _ReadBatch(stored, convert)
  return _Rows(len(split), _converted_shape(convert, split.first), np.float32,
               _ReadBatch(stored, convert))


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


def _positive(value, what: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise DataError(f"{what} must be a positive integer, got {value!r}")
  return int(value)


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

  `batch_size` is the GLOBAL batch size, summed over all `shard_count` processes. Every
  process walks the same seeded order of the whole split (a fresh permutation each epoch;
  batches run on across epoch ends) cut into global batches of `batch_size`, and keeps rows
  [shard_index * b, (shard_index + 1) * b) of each, b = batch_size // shard_count, reading
  only those records. So the sequence of global batches does not depend on the number of
  processes, the shards of one epoch are disjoint and together cover it, and one process
  (the default when jax runs one) sees plain batches of `batch_size`.

  Args:
    name: one of BUILTIN_DATASETS or a tfds dataset prepared in `data_dir`.
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
    **opts: image_key, train_split, test_split, fit (see `dataset_info`).

  Returns:
    A grain `DatasetIterator`: `next(it)`, `it.get_state()`, `it.set_state(state)`; a
    restored state continues at the same next batch.
  """
  opts = _options(opts)
  batch_size = _positive(batch_size, "batch_size")
  shard_index, shard_count = _shards(shard_index, shard_count)
  if batch_size % shard_count:
    raise DataError(f"global batch_size {batch_size} is not divisible by shard_count "
                    f"{shard_count}")
  if num_epochs is not None:
    _positive(num_epochs, "num_epochs")
  opened = _open(name, split, data_dir, opts)
  if batch_size > len(opened):
    raise DataError(f"batch_size {batch_size} is larger than {opened.read.where} "
                    f"({len(opened)} images)")
  native = _native(opened.first.shape, opts["fit"], name)
  convert = _Convert(opts["fit"], native, _halvings(native, resolution, name))
  to_images = _pipeline_map(opened, convert, cache, worker_processes)
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
  opts = _options(opts)
  opened = _open(name, "test", data_dir, opts)
  count = len(opened) if count is None else _positive(count, "count")
  if count > len(opened):
    raise DataError(f"count {count} is larger than {opened.read.where} ({len(opened)} images)")
  native = _native(opened.first.shape, opts["fit"], name)
  read = _ReadBatch(opened.read,
                    _Convert(opts["fit"], native, _halvings(native, resolution, name)))
  return np.concatenate([read(range(i, min(i + 256, count))) for i in range(0, count, 256)])
