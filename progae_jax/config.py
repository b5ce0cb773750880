"""Model configuration: one frozen, hashable dataclass, validated when it is made."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

MIN_RESOLUTION = 4  # Every model starts at 4x4: the latent is a dense layer on a 4x4 map.


def is_power_of_two(n: Any) -> bool:
  return isinstance(n, int) and not isinstance(n, bool) and n > 0 and n & (n - 1) == 0


def default_channels(max_resolution: int) -> dict[int, int]:
  """Feature channels per resolution: 128 up to 8x8, then halving (64 at 16, 32 at 32, ...)."""
  out, r = {}, MIN_RESOLUTION
  while r <= max_resolution:
    out[r] = max(1, min(128, 1024 // r))
    r *= 2
  return out


def _fail(field: str, value: Any, allowed: str):
  raise ValueError(f"ModelConfig.{field}={value!r} is invalid: {allowed}")


def _is_positive_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool) and v > 0


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The architecture of a progressive autoencoder, for every stage it can grow to.

  Frozen and hashable, so it can be a static argument of a jitted function. `channels` may be
  given as a mapping; it is stored as a sorted tuple of (resolution, channels) pairs.
  """

  # Channels of the images: 1 for grayscale, 3 for RGB, any positive number.
  image_channels: int = 3
  # The last stage's resolution: a power of two, at least 8 (4x4 is where every run starts).
  max_resolution: int = 32
  # Feature channels of the blocks at each resolution, 4 .. max_resolution. None: the default
  # {4: 128, 8: 128, 16: 64, 32: 32, 64: 16, 128: 8, ...}. Extra resolutions are ignored.
  channels: Any = None
  # Width of the latent vector between encoder and decoder.
  latent_dim: int = 128
  # Negative slope of every leaky ReLU.
  leaky_slope: float = 0.2

  def __post_init__(self):
    if not _is_positive_int(self.image_channels):
      _fail("image_channels", self.image_channels, "must be a positive integer (1 grey, 3 RGB)")
    if not is_power_of_two(self.max_resolution) or self.max_resolution < 8:
      _fail("max_resolution", self.max_resolution, "must be a power of two, at least 8")
    channels = self.channels
    if channels is None:
      channels = default_channels(self.max_resolution)
    if isinstance(channels, Mapping):
      channels = tuple(channels.items())
    try:
      pairs = tuple(sorted((k, v) for k, v in channels))
    except (TypeError, ValueError):
      _fail("channels", self.channels, "must map resolutions to channel counts, e.g. {4: 128}")
    for r, c in pairs:
      if not is_power_of_two(r) or r < MIN_RESOLUTION:
        _fail("channels", self.channels, f"key {r!r} is not a power of two >= {MIN_RESOLUTION}")
      if not _is_positive_int(c):
        _fail("channels", self.channels, f"channels at {r} must be a positive integer, got {c!r}")
    have = dict(pairs)
    missing = [r for r in self.resolutions if r not in have]
    if missing:
      _fail("channels", self.channels, f"needs an entry for every resolution "
            f"{self.resolutions}; missing {missing}")
    object.__setattr__(self, "channels", tuple((r, have[r]) for r in self.resolutions))
    if not _is_positive_int(self.latent_dim):
      _fail("latent_dim", self.latent_dim, "must be a positive integer")
    slope = self.leaky_slope
    if isinstance(slope, bool) or not isinstance(slope, (int, float)) or not 0 <= slope < 1:
      _fail("leaky_slope", slope, "must be a number in [0, 1)")
    object.__setattr__(self, "leaky_slope", float(slope))

  @property
  def resolutions(self) -> tuple[int, ...]:
    """Every stage's resolution, 4, 8, ..., max_resolution."""
    out, r = [], MIN_RESOLUTION
    while r <= self.max_resolution:
      out.append(r)
      r *= 2
    return tuple(out)

  def channels_at(self, resolution: int) -> int:
    """Feature channels of the blocks that run at `resolution`."""
    return dict(self.channels)[resolution]

  def to_dict(self) -> dict:
    """A JSON-ready dict (channel keys become strings); `from_dict` inverts it."""
    d = dataclasses.asdict(self)
    d["channels"] = {str(r): c for r, c in self.channels}
    return d

  @classmethod
  def from_dict(cls, d: Mapping) -> "ModelConfig":
    d = dict(d)
    if isinstance(d.get("channels"), Mapping):
      d["channels"] = {int(r): c for r, c in d["channels"].items()}
    return cls(**d)
