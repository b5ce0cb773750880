"""A trained run as a model: load it, put any images through it, get latents and pictures.

    load(workdir) ─> Model: the run's config, stage and weights (the EMA's if it kept one),
      │               at the alpha it had reached; only the checkpoint's metadata and
      │               weights are read (`checkpoint.restore_weights`)
      │
    images: files, or arrays of any size, uint8 / uint16 / float in [0, 1], 1-4 channels
      │ Model.images: the data layer's own steps, as a folder of images is trained on
      │   data.images.Loader    channels (grey <-> RGB, alpha on black, 16 -> 8 bit), centre
      │                         square, Lanczos to the side the run's images were stored at
      │   data.convert.Convert  / 255, then the 2x2 box filter down to the stage
      │   (images already (R, R, C) at the stage are taken as they are: float in [0, 1])
      ▼
    Model.encode ─> latents (n, latent_dim) ─> Model.decode ─> images (n, R, R, C), linear
    Model.reconstruct: both in one step (the training path, `model.apply`)

A run stopped during a fade is used as it was at that moment: the new resolution's path
blended with the old at the checkpoint's alpha. `Model.note` says so, and an export fixes
that alpha (export.py).
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from progae_jax import checkpoint, data, model as model_lib
from progae_jax.data import convert, images as image_files
from progae_jax.model import Stage, stage_of
from progae_jax.schedule import TrainConfig

# Images go through the model this many at a time; a last, smaller batch is padded to a power
# of two (at least MIN_BATCH), so a model compiles a handful of shapes whatever it is given.
BATCH_SIZE, MIN_BATCH = 256, 8


@functools.partial(jax.jit, static_argnums=0)
def _encode(config, params, images, alpha):
  return model_lib.encode(config, params, images, alpha)


@functools.partial(jax.jit, static_argnums=0)
def _decode(config, params, latents, alpha):
  return model_lib.decode(config, params, latents, alpha)


@functools.partial(jax.jit, static_argnums=0)
def _reconstruct(config, params, images, alpha):
  return model_lib.apply(config, params, images, alpha)[0]


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
  """One checkpoint of a run, ready to use. Build it with `load`."""

  config: TrainConfig
  params: dict  # {"encoder": ..., "decoder": ...}, on the default device.
  alpha: float  # 1.0 unless the checkpoint was saved during a fade.
  images_seen: int  # The checkpoint's step.
  checkpoint: str  # The checkpoint's folder.
  weights: str  # "ema" (the average the run evaluated) or "params" (the raw weights).

  @property
  def stage(self) -> Stage:
    return stage_of(self.params)

  @property
  def resolution(self) -> int:
    return self.stage.resolution

  @property
  def image_channels(self) -> int:
    return self.config.model.image_channels

  @property
  def latent_dim(self) -> int:
    return self.config.model.latent_dim

  @property
  def input_side(self) -> int:
    """The side images are resized to before the box filter takes them to the stage: the
    side the run's folder of images was stored at (the model's final resolution)."""
    stored = dict(self.config.dataset_options).get("data_resolution")
    return stored or data.folder_options_for(self.config.model)["data_resolution"]

  @property
  def note(self) -> str | None:
    """What to know before using it: set when the checkpoint was saved during a fade."""
    if not self.stage.fading:
      return None
    r = self.resolution
    return (f"this checkpoint was saved during the {r}x{r} fade: the model is used as it was "
            f"then, at alpha {self.alpha:.3f} (the {r // 2}x{r // 2} path still makes "
            f"{1 - self.alpha:.0%} of every output)")

  def __str__(self) -> str:
    text = (f"{self.stage} autoencoder, {self.image_channels} channel(s), latent "
            f"{self.latent_dim}, {self.weights} weights of checkpoint {self.images_seen:,} "
            f"({self.checkpoint})")
    return text + (f"; {self.note}" if self.note else "")

  # -------------------------------------------------------------------------------------------

  def images(self, images) -> np.ndarray:
    """Any images -> float32 `(n, R, R, C)` in [0, 1], the stage's input, as the data layer
    makes it (module docstring). `images`: an NHWC array, an NHW array (grey), or a list of
    arrays (H, W[, C]) of any sizes and file paths. Raises ValueError naming the image that
    cannot be used."""
    r, c = self.resolution, self.image_channels
    if isinstance(images, (np.ndarray, jax.Array)):
      images = np.asarray(images)
      if images.ndim == 3:
        images = images[..., None]
      if images.ndim != 4:
        raise ValueError(f"images must be an array (batch, height, width[, channels]) or a "
                         f"list of images; got an array of shape {images.shape}")
      if images.shape[1:] == (r, r, c):
        return _as_float(images)
    if len(images) == 0:
      raise ValueError("no images given")
    ready = {(r, r, c)} | ({(r, r)} if c == 1 else set())  # Shapes of the stage's input.
    stored = []
    for i, image in enumerate(images):
      if not isinstance(image, (str, os.PathLike)) and np.shape(image) in ready:
        stored.append(None)  # Already the stage's input.
        continue
      decoded = self._decode_one(image)
      if decoded.image is None:
        what = os.fspath(image) if isinstance(image, (str, os.PathLike)) else f"image {i}"
        raise ValueError(f"{what} cannot be used: {decoded.error}")
      stored.append(decoded.image)
    return self._at_stage(stored, images)

  def _decode_one(self, image) -> image_files.Decoded:
    loader = image_files.Loader(self.input_side, self.image_channels)
    if isinstance(image, (str, os.PathLike)):
      return loader(os.fspath(image))
    return loader.decode(_pillow(np.asarray(image)))

  def _at_stage(self, stored, images=None) -> np.ndarray:
    """The decoded images (uint8 at input_side) through the data layer's conversion; where
    `stored` holds None, `images[i]` is already the stage's input and is taken as it is."""
    d, r = self.input_side, self.resolution
    to_stage = convert.Convert("pad", d, convert.halvings(d, r, "the model's input"))
    out = np.empty((len(stored), r, r, self.image_channels), np.float32)
    todo = [i for i, s in enumerate(stored) if s is not None]
    if todo:
      out[todo] = to_stage(np.stack([stored[i] for i in todo]))
    for i, s in enumerate(stored):
      if s is None:
        out[i] = _as_float(np.asarray(images[i]).reshape(out.shape[1:]))
    return out

  def load_files(self, paths) -> tuple[np.ndarray, list[int], dict[str, str]]:
    """Image files -> (the stage's input of those that could be read, their indices in
    `paths`, {path: why} for those that could not: truncated, not an image, too small)."""
    loader = image_files.Loader(self.input_side, self.image_channels)
    kept, stored, skipped = [], [], {}
    for i, path in enumerate(paths):
      decoded = loader(os.fspath(path))
      if decoded.image is None:
        skipped[os.fspath(path)] = decoded.error
      else:
        kept.append(i)
        stored.append(decoded.image)
    if not stored:
      r, c = self.resolution, self.image_channels
      return np.zeros((0, r, r, c), np.float32), kept, skipped
    return self._at_stage(stored), kept, skipped

  # -------------------------------------------------------------------------------------------

  def encode(self, images, *, numpy: bool = True):
    """Latents `(n, latent_dim)` of any images (see `images`)."""
    return self._batched(_encode, self.images(images), numpy)

  def decode(self, latents, *, numpy: bool = True):
    """Images `(n, R, R, C)` from latents `(n, latent_dim)`: the model's linear output (clip
    to [0, 1] to show it)."""
    latents = np.asarray(latents, np.float32)
    if latents.ndim != 2 or latents.shape[1] != self.latent_dim:
      raise ValueError(f"latents must have shape (n, {self.latent_dim}); got {latents.shape}")
    return self._batched(_decode, latents, numpy)

  def reconstruct(self, images, *, numpy: bool = True):
    """`decode(encode(images))`, in one step."""
    return self._batched(_reconstruct, self.images(images), numpy)

  def _batched(self, fn, x: np.ndarray, numpy: bool):
    out = []
    for start in range(0, len(x), BATCH_SIZE):
      chunk = x[start:start + BATCH_SIZE]
      padded = min(BATCH_SIZE, max(MIN_BATCH, 1 << (len(chunk) - 1).bit_length()))
      chunk = np.concatenate([chunk, np.zeros((padded - len(chunk), *chunk.shape[1:]),
                                              chunk.dtype)])
      y = fn(self.config.model, self.params, chunk, np.float32(self.alpha))
      out.append(y[:len(x) - start])
    y = jnp.concatenate(out) if out else jnp.zeros((0,), jnp.float32)
    return np.asarray(y) if numpy else y

  # -------------------------------------------------------------------------------------------

  def encoder_function(self):
    """`images (n, R, R, C) float32 -> latents`, the weights and alpha fixed: what is exported."""
    return functools.partial(model_lib.encode, self.config.model, self.params,
                             alpha=np.float32(self.alpha))

  def decoder_function(self):
    """`latents (n, latent_dim) float32 -> images`, the weights and alpha fixed."""
    return functools.partial(model_lib.decode, self.config.model, self.params,
                             alpha=np.float32(self.alpha))


def _as_float(images: np.ndarray) -> np.ndarray:
  """Integer images scaled by their type's maximum (as the data layer scales uint8); float
  images as they are."""
  if images.dtype == bool or not (np.issubdtype(images.dtype, np.integer)
                                  or np.issubdtype(images.dtype, np.floating)):
    raise ValueError(f"images must be integers or floats, got {images.dtype}")
  if np.issubdtype(images.dtype, np.integer):
    return images.astype(np.float32) / np.float32(np.iinfo(images.dtype).max)
  return images.astype(np.float32)


def _pillow(image: np.ndarray):
  """An array image (H, W[, C]) -> a Pillow image of 8 bits per channel (L, LA, RGB, RGBA), as
  a file of it would open; floats must be in [0, 1], integers are scaled by their maximum."""
  from PIL import Image
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (2, 3, 4)):
    raise ValueError(f"an image must have shape (height, width) or (height, width, channels) "
                     f"with 1-4 channels; got {image.shape}")
  if image.dtype != np.uint8:
    x = _as_float(image)
    if not np.all(np.isfinite(x)) or x.min() < 0 or x.max() > 1:
      raise ValueError(f"float images must hold values in [0, 1]; this one has "
                       f"[{np.nanmin(x):.3g}, {np.nanmax(x):.3g}]")
    image = np.rint(x * 255).astype(np.uint8)
  return Image.fromarray(image)


def load(workdir: str, step: int | None = None, best: bool = False, *,
         ema: bool = True) -> Model:
  """The model of a run's checkpoint: the latest, checkpoint `step` (images seen), or with
  `best` the one ranked best (highest resolution, then held-out PSNR). `workdir` is a work
  directory, its `checkpoints/` folder or one checkpoint's folder. The EMA's weights when
  the run kept one (unless `ema=False`). Raises `CheckpointError` with one line saying what
  is wrong with a checkpoint."""
  weights, meta = checkpoint.restore_weights(workdir, step, best=best)
  config = checkpoint.saved_config(meta)  # Read once already, to build the restore's target.
  which = "ema" if ema and "ema" in weights else "params"
  params = jax.device_put(weights[which], jax.devices()[0])
  stage = stage_of(params)
  alpha = float(meta.get("alpha", 1.0)) if stage.fading else 1.0
  directory, _ = checkpoint.locate(workdir)
  return Model(config, params, alpha, int(meta["images_seen"]),
               os.path.join(directory, str(meta["images_seen"])), which)
