"""Images for progressive training: the same pictures at 4x4, 8x8, 16x16, ..., offline.

Storage is tensorflow-datasets (array_record files, `tfds.features.Tensor` features, no
TensorFlow); loading is grain. Every image is brought to a stage's resolution by repeating
`progae_jax.ops.downsample`, the 2x2 box filter the model uses, so "this image at 8x8" is
the same array here, in the model's skip path and in the faded training target.

Public API:

  dataset_info(name, ...) -> DatasetSpec     what a dataset holds (native size, channels, ...)
  batches(name, ...) -> iterator             float32 NHWC batches in [0, 1], get/set_state
  eval_images(name, ...) -> np.ndarray       a fixed, deterministic held-out set
  prepare(name, ...) -> str                  prepare a built-in dataset or a folder now (else on
                                             first use)
  is_folder(name) -> bool                    whether a name means a folder of images
  folder_options_for(model) -> dict          the options that store a folder as a model takes it
  folder_identity(name, ...) -> dict | None  a folder's prepared copy, its files, its held-out
                                             paths: what a run pins (progae_jax/pinning.py)
  clear_cache()                              free the images cached pipelines keep in memory
  BUILTIN_DATASETS                           datasets made from files inside installed packages
  DataError (UnknownDatasetError, DatasetNotPreparedError)   every refusal

Datasets are built in (`digits`, `image_patches`: real images that ship with scikit-learn
and scikit-image, prepared into `data_dir` on first use), a folder of the user's images
(prepared into `data_dir` on first use, and again when its files change), or any tfds
dataset by name, read from a `data_dir` where `tfds build NAME --file_format=array_record`
prepared it. Nothing is ever downloaded.

One module per concern, in the order a batch is made:

  errors     DataError and its kinds
  storage    data_dir, writing a dataset once (lock, tfds's incomplete-then-rename)
  builtin    the built-in datasets' tfds builders
  images     one image file -> a uint8 square at a resolution (Pillow)
  folder     a folder of images -> a tfds dataset: scan, split, decode, report, changes
  sources    opening a split (built in, folder, tfds by name), DatasetSpec, dataset_info
  convert    stored records -> float32 at a resolution; the in-memory caches
  pipeline   grain: seeded global batches, sharding, resumable iterators
"""

from progae_jax.data.builtin import BUILTIN_DATASETS, PATCH_PHOTOS, Digits, ImagePatches
from progae_jax.data.convert import CACHE_LIMIT_BYTES, clear_cache
from progae_jax.data.errors import DataError, DatasetNotPreparedError, UnknownDatasetError
from progae_jax.data.folder import is_folder
from progae_jax.data.pipeline import batches, eval_images
from progae_jax.data.sources import (DATASET_OPTIONS, FIT_MODES, DatasetSpec, dataset_info,
                                     folder_identity, folder_options_for, prepare)

__all__ = [
    "BUILTIN_DATASETS", "CACHE_LIMIT_BYTES", "DATASET_OPTIONS", "FIT_MODES", "PATCH_PHOTOS", "DataError",
    "DatasetNotPreparedError", "DatasetSpec", "Digits", "ImagePatches",
    "UnknownDatasetError", "batches", "clear_cache", "dataset_info", "eval_images",
    "folder_identity", "folder_options_for", "is_folder",
    "prepare",
]
