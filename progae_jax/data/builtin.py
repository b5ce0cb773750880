"""The built-in datasets: tfds builders that prepare themselves from images in installed packages.

    digits              scikit-learn's 1,797 handwritten digits, 8x8x1: first 1,500 train
    image_patches       64x64x3 crops of the photographs in scikit-image and scikit-learn
    image_patches_128   128x128x3 crops of the same photographs (the large preset's data)

Both are real `tfds.core.GeneratorBasedBuilder`s with uint8 `Tensor` features in array_record
files, prepared into `data_dir` on first use (nothing is downloaded) and read back like any
tfds dataset.
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds

from progae_jax.data import storage
from progae_jax.data.errors import DataError, UnknownDatasetError
from progae_jax.ops import downsample

BUILTIN_DATASETS = ("digits", "image_patches", "image_patches_128")


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
_PATCH_SCALES = (1, 2, 4)  # Crops of 1, 2 and 4 times the size, box-filtered down to it.
_PATCH_MIN_STD = 6.0  # Crops flatter than this (uint8 units) are drawn again: black sky.
_PATCH_COUNTS = {"train": 20_000, "test": 2_000}
_PATCH_SEEDS = {"train": 1, "test": 2}  # Fixed per VERSION: the crops never change.
# The large preset's crops: 128 pixels (of 128, 256 or 512), half as many (491 MB stored).
_LARGE_PATCH_SIZE = 128
_LARGE_PATCH_COUNTS = {"train": 10_000, "test": 1_000}


def _load_photo(name: str) -> np.ndarray:
  """One packaged photograph as uint8 (H, W, 3)."""
  if name in ("china", "flower"):
    from sklearn.datasets import load_sample_image  # Needs pillow.
    return load_sample_image(f"{name}.jpg")
  import skimage.data
  return getattr(skimage.data, name)()


def _pyramid(photo: np.ndarray, size: int = _PATCH_SIZE) -> list[np.ndarray]:
  """The photo box-filtered 0, 1, 2, ... times, while a size x size crop still fits.

  A 64x64 crop of level j at (y, x) is exactly the 64*2**j crop at (y*2**j, x*2**j),
  box-filtered j times: cropping the pyramid costs a slice, not a filter per crop.
  """
  levels = [photo[None].astype(np.float32)]
  while len(levels) < len(_PATCH_SCALES):
    _, h, w, _ = levels[-1].shape
    if min(h, w) // 2 < size:
      break
    levels.append(downsample(levels[-1][:, :h // 2 * 2, :w // 2 * 2]))
  return [level[0] for level in levels]


def _random_crops(photo: np.ndarray, count: int, rng: np.random.Generator,
                  size: int = _PATCH_SIZE) -> np.ndarray:
  """`count` size x size uint8 crops of one photo at random places, scales and mirror flips."""
  levels = _pyramid(photo, size)
  out = np.empty((count, size, size, 3), np.uint8)
  for i in range(count):
    for _ in range(20):  # Retry flat crops; the 20th is kept whatever it is.
      level = levels[rng.integers(len(levels))]
      h, w, _ = level.shape
      y, x = rng.integers(h - size + 1), rng.integers(w - size + 1)
      crop = level[y:y + size, x:x + size]
      if crop.std() >= _PATCH_MIN_STD:
        break
    if rng.integers(2):
      crop = crop[:, ::-1]
    out[i] = np.clip(np.rint(crop), 0, 255).astype(np.uint8)
  return out


def _patch_examples(split: str, size: int = _PATCH_SIZE,
                    counts=_PATCH_COUNTS) -> Iterator[tuple[int, dict]]:
  """The crops of one split, the same ones every time (a fixed seed per split)."""
  photos = _PATCH_TRAIN_PHOTOS if split == "train" else _PATCH_TEST_PHOTOS
  rng = np.random.default_rng(_PATCH_SEEDS[split])
  total = counts[split]
  key = 0
  for p, name in enumerate(photos):
    count = total // len(photos) + (p < total % len(photos))
    for crop in _random_crops(_load_photo(name), count, rng, size):
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




class _PackagedBuilder(storage.LocalBuilder, skip_registration=True):
  """A builder whose data ships in installed packages: both splits, from `_generate_examples`."""

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
            "image": storage.image_feature((8, 8, 1)),
            "label": tfds.features.Tensor(shape=(), dtype=np.int64)}),
        homepage="https://archive.ics.uci.edu/dataset/80",
        license="CC BY 4.0 (UCI); shipped in scikit-learn (BSD-3-Clause)")

  def _generate_examples(self, split):
    yield from _digit_examples(split)


def _patch_info(builder, size: int) -> tfds.core.DatasetInfo:
  """What a dataset of size x size crops of the packaged photographs says of itself."""
  return tfds.core.DatasetInfo(
      builder=builder,
      description=(f"Random {size}x{size} crops ({size}, {2 * size} or {4 * size} pixels "
                   f"box-filtered to {size}, mirrored at random) of "
                   f"{', '.join(_PATCH_TRAIN_PHOTOS)} (train) and "
                   f"{', '.join(_PATCH_TEST_PHOTOS)} (test). 'source' indexes {PATCH_PHOTOS}."),
      features=tfds.features.FeaturesDict({
          "image": storage.image_feature((size, size, 3)),
          "source": tfds.features.Tensor(shape=(), dtype=np.int64)}),
      homepage="https://scikit-image.org/docs/stable/api/skimage.data.html",
      license=_PATCH_LICENCE)


class ImagePatches(_PackagedBuilder, skip_registration=True):
  """64x64 RGB crops of the colour photographs packaged with scikit-image and scikit-learn."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "20,000 train crops of 7 photos, 2,000 test crops of 2 others."}

  def _info(self):
    return _patch_info(self, _PATCH_SIZE)

  def _generate_examples(self, split):
    yield from _patch_examples(split)


class ImagePatches128(_PackagedBuilder, skip_registration=True):
  """128x128 RGB crops of the same photographs: the large preset's data (4x4 -> 128x128)."""

  name = "image_patches_128"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "10,000 train crops of 7 photos, 1,000 test crops of 2 others."}

  def _info(self):
    return _patch_info(self, _LARGE_PATCH_SIZE)

  def _generate_examples(self, split):
    yield from _patch_examples(split, _LARGE_PATCH_SIZE, _LARGE_PATCH_COUNTS)


_BUILDERS = {"digits": Digits, "image_patches": ImagePatches,
             "image_patches_128": ImagePatches128}


def builder(name: str, data_dir: str):
  """The builder of a built-in dataset in `data_dir` (prepared or not)."""
  try:
    return _BUILDERS[name](data_dir=data_dir, file_format="array_record")
  except Exception as e:
    path = os.path.join(data_dir, name)
    raise DataError(f"the prepared {name!r} in {path} is unreadable ({type(e).__name__}: "
                    f"{e}); delete {path} and it will be prepared again") from e


def prepare(name: str, data_dir: str) -> str:
  """Prepares a built-in dataset in `data_dir` (a resolved path) unless it is there; returns
  its directory."""
  if name not in _BUILDERS:
    raise UnknownDatasetError(
        f"prepare() builds the built-in datasets {BUILTIN_DATASETS} and folders of images, "
        f"not {name!r}; prepare a tfds dataset with `tfds build {name} "
        "--file_format=array_record`")
  os.makedirs(data_dir, exist_ok=True)
  built, _ = storage.prepare_once(lambda: builder(name, data_dir),
                                  os.path.join(data_dir, f".{name}.lock"))
  return os.fspath(built.data_path)
