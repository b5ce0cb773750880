"""The resampling operators every part of progae_jax shares.

There is exactly one way to go down a resolution (a 2x2 box filter) and one way to go up
(nearest-neighbour doubling). The model's skip paths, the faded training target and the data
pipeline all call these, so "the same image at 4x4" means the same numbers everywhere.

The functions only use array methods (`reshape`, `mean`, `repeat`), so they work on NumPy
arrays (in data-loading workers, no device involved) and on JAX arrays and tracers alike.
"""

from __future__ import annotations


def _check_nhwc(images, name: str) -> None:
  if getattr(images, "ndim", None) != 4:
    raise ValueError(
        f"{name} expects NHWC images of rank 4, got shape {getattr(images, 'shape', None)}")


def downsample(images):
  """Halves height and width with a 2x2 box filter (average pooling, stride 2)."""
  _check_nhwc(images, "downsample")
  n, h, w, c = images.shape
  if h % 2 or w % 2:
    raise ValueError(f"downsample needs even height and width, got {h}x{w}")
  return images.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def upsample(images):
  """Doubles height and width by nearest-neighbour repetition."""
  _check_nhwc(images, "upsample")
  return images.repeat(2, axis=1).repeat(2, axis=2)


def to_resolution(images, resolution: int):
  """The same images at `resolution`, a power-of-two factor away: `downsample` to go down,
  `upsample` to go up (so a stage's output can be compared with final-size images)."""
  _check_nhwc(images, "to_resolution")
  size = images.shape[1]
  big, small = max(size, resolution), min(size, resolution)
  factor = big // small if small > 0 and big % small == 0 else 0
  if factor < 1 or factor & (factor - 1):
    raise ValueError(f"to_resolution: {size} -> {resolution} is not a power-of-two factor")
  while images.shape[1] > resolution:
    images = downsample(images)
  while images.shape[1] < resolution:
    images = upsample(images)
  return images


def fade_in(old, new, alpha):
  """The ProGAN blend: `alpha` = 0 gives the old path exactly, `alpha` = 1 the new one."""
  return alpha * new + (1.0 - alpha) * old


def fade_target(images, alpha):
  """What a fading model should reconstruct: the images blurred to half resolution, fading in.

  At alpha = 0 the target is `upsample(downsample(images))`, exactly what the model grown
  from the half-resolution stage outputs, so the loss has no jump at growth.
  """
  return fade_in(upsample(downsample(images)), images, alpha)
