"""One image file -> a uint8 (R, R, C) square, with Pillow: what a folder dataset stores.

    file ──> Pillow: first frame; a JPEG is decoded at 1/2, 1/4 or 1/8 scale while that still
      │      covers R x R (`draft`: most of the work of a large JPEG is never done)
      ├─> EXIF rotation (phone photographs)
      ├─> channels: 16-bit -> 8-bit (/ 257); alpha (RGBA, LA, transparent palette) composited
      │   on black; palette, CMYK, grey, ... -> "RGB" (C = 3) or "L" (C = 1, ITU-R 601 luma)
      └─> centre square ──> R x R, Lanczos (antialiased when shrinking) ──> uint8 (R, R, C)

A file that Pillow cannot read (truncated, not an image, empty) or that is smaller than R / 2
(it would need more than 2x upsampling) comes back with the reason, never an exception.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from PIL import Image, ImageOps

# What counts as an image file (lower-cased suffix); anything else in the folder is ignored.
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
CHANNELS = (1, 3)
# An image may be enlarged up to this factor to reach R; a smaller one is skipped.
MAX_UPSAMPLING = 2
# The colour under transparent pixels: black, the same black that fit="pad" pads with.
BACKGROUND = (0, 0, 0, 255)
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # "I": a 16-bit PNG in older Pillows.


@dataclasses.dataclass(frozen=True)
class Decoded:
  """A file's image at R x R, or why there is none."""

  image: np.ndarray | None  # uint8 (R, R, C)
  side: int  # The shorter side of the file's image (0 when unreadable).
  error: str | None = None  # Why the file is skipped.


class _Skip(Exception):
  """A file that is readable but cannot become a stored image."""


# What Pillow raises for a file it cannot decode (truncated, corrupt, too large).
_UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


@dataclasses.dataclass(frozen=True)
class Loader:
  """path -> `Decoded` at `resolution` with `channels`; picklable, for a pool of workers."""

  resolution: int
  channels: int

  def __call__(self, path: str) -> Decoded:
    try:
      if os.path.getsize(path) == 0:
        return Decoded(None, 0, "empty file")
      with Image.open(path) as im:
        return self.decode(im)
    except Image.UnidentifiedImageError:
      return Decoded(None, 0, "not an image Pillow can read")
    except _UNREADABLE as e:
      return Decoded(None, 0, f"{type(e).__name__}: {e}")

  def decode(self, im: Image.Image) -> Decoded:
    """An opened Pillow image (a file's, or an array's) -> `Decoded`, as for a file."""
    side = min(im.size)
    try:
      if side * MAX_UPSAMPLING < self.resolution:
        raise _Skip(f"{im.size[0]}x{im.size[1]} is smaller than {self.resolution} / "
                    f"{MAX_UPSAMPLING}: it would need more than {MAX_UPSAMPLING}x upsampling")
      im.draft("L" if self.channels == 1 else None, (self.resolution, self.resolution))
      return Decoded(self._square(to_channels(im, self.channels)), side)
    except _Skip as e:
      return Decoded(None, side, str(e))
    except _UNREADABLE as e:
      return Decoded(None, side, f"{type(e).__name__}: {e}")

  def _square(self, im: Image.Image) -> np.ndarray:
    """The centre square, resized to R x R; (R, R, C) uint8."""
    w, h = im.size
    s = min(w, h)
    # Cropped first: resizing a box of the whole image would blend in pixels beside it.
    square = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    r = self.resolution
    # reducing_gap: a large shrink starts with an integer box reduction (Pillow's docs: the
    # result is indistinguishable from plain Lanczos at a gap of 3), much cheaper.
    out = np.asarray(square.resize((r, r), Image.Resampling.LANCZOS, reducing_gap=3.0))
    return out.reshape(r, r, self.channels)


def to_channels(im: Image.Image, channels: int) -> Image.Image:
  """Any Pillow image -> mode "L" (channels 1) or "RGB" (channels 3), loaded and upright."""
  ImageOps.exif_transpose(im, in_place=True)
  if im.mode in _SIXTEEN_BIT:
    wide = np.asarray(im).astype(np.float32)
    im = Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8), "L")
  elif im.mode == "F":
    raise _Skip("32-bit float pixels (mode F) have no fixed range: save as 8 or 16 bit")
  if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
    im = Image.alpha_composite(Image.new("RGBA", im.size, BACKGROUND), im.convert("RGBA"))
  return im.convert("L" if channels == 1 else "RGB")
