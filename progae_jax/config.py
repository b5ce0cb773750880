"""Model configuration: one frozen, hashable dataclass, validated when it is made.

Also the checks every config and every layer of the library share: what counts as an integer
(`is_int`: never a bool) or a number (`is_number`), the one error for a bad field
(`check_field`), the stages a model grows through (`resolutions_up_to`), and the strict
reading of configs from dicts (`check_keys`: no key that is not a field).
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Iterable, Mapping

MIN_RESOLUTION = 4  # Every model starts at 4x4: the latent is a dense layer on a 4x4 map.


def is_int(value: Any, at_least: int | None = None) -> bool:
  """An integer, Python's or NumPy's, and at least `at_least` if given. Never a bool: True is
  an int to Python, but never a count or a size here."""
  return (isinstance(value, numbers.Integral) and not isinstance(value, bool)
          and (at_least is None or value >= at_least))


def is_number(value: Any) -> bool:
  """A real number (int or float, Python's or NumPy's), never a bool."""
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_power_of_two(n: Any) -> bool:
  return is_int(n, 1) and n & (n - 1) == 0


def resolutions_up_to(max_resolution: int) -> tuple[int, ...]:
  """4, 8, 16, ... up to `max_resolution`: every stage a model of that size grows through."""
  out, r = [], MIN_RESOLUTION
  while r <= max_resolution:
    out.append(r)
    r *= 2
  return tuple(out)


def check_field(config: Any, field: str, ok: bool, allowed: str) -> None:
  """Unless `ok`, raises every config's one error: `ModelConfig.latent_dim=-1 is invalid:
  must be ...`."""
  if not ok:
    raise ValueError(f"{type(config).__name__}.{field}={getattr(config, field)!r} is invalid: "
                     f"{allowed}")


def check_ints(config: Any, fields: Iterable[str], at_least: int) -> None:
  """Each of `fields` of the frozen dataclass `config` must be an integer >= `at_least`; it is
  stored as a Python int (configs are written to JSON)."""
  for field in fields:
    value = getattr(config, field)
    check_field(config, field, is_int(value, at_least), f"must be an integer >= {at_least}")
    object.__setattr__(config, field, int(value))


def default_channels(max_resolution: int) -> dict[int, int]:
  """Feature channels per resolution: 128 up to 8x8, then halving (64 at 16, 32 at 32, ...)."""
  return {r: max(1, min(128, 1024 // r)) for r in resolutions_up_to(max_resolution)}


class ConfigError(ValueError):
  """A config (a file, a dict, an override) that does not have the shape of the dataclasses:
  a key that is not a field, or a mapping that is not a mapping."""


def check_keys(d: Any, allowed, where: str) -> Mapping:
  """`d` itself if it is a mapping whose keys are all in `allowed` (None: any key); else one
  `ConfigError` naming the first stray key, where it sat ('' for the top level) and what is
  allowed there."""
  place = f"'{where}'" if where else "the config"
  if not isinstance(d, Mapping):
    got = "null" if d is None else f"{type(d).__name__} {str(d)[:60]}"
    raise ConfigError(f"{place} must be a mapping of keys to values (a JSON object), got {got}")
  for key in d:
    if allowed is not None and key not in allowed:
      there = f"in '{where}'" if where else "at the top level"
      raise ConfigError(f"unknown key {key!r} {there}; allowed there: "
                        f"{', '.join(sorted(allowed))}")
  return d


def resolution_key(key: Any, where: str) -> int:
  """A resolution given as a mapping key: 16 or "16" (JSON keys are strings)."""
  try:
    if isinstance(key, bool) or float(key) != int(key):
      raise ValueError
    return int(key)
  except (TypeError, ValueError):
    raise ConfigError(f"key {key!r} in '{where}' is not a resolution (4, 8, 16, ...)") from None


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
  # ProGAN's equalized learning rate: weights stored at unit scale, each layer's constant
  # 1/sqrt(fan_in) applied at run time (model.py). Changes what the stored weights mean.
  equalized_lr: bool = False

  def __post_init__(self):
    check_field(self, "image_channels", is_int(self.image_channels, 1),
                "must be a positive integer (1 grey, 3 RGB)")
    check_field(self, "max_resolution", is_power_of_two(self.max_resolution)
                and self.max_resolution >= 8, "must be a power of two, at least 8")
    object.__setattr__(self, "channels", self._channel_pairs())
    check_field(self, "latent_dim", is_int(self.latent_dim, 1), "must be a positive integer")
    for field in ("image_channels", "max_resolution", "latent_dim"):  # NumPy's as Python's.
      object.__setattr__(self, field, int(getattr(self, field)))
    slope = self.leaky_slope
    check_field(self, "leaky_slope", is_number(slope) and 0 <= slope < 1,
                "must be a number in [0, 1)")
    object.__setattr__(self, "leaky_slope", float(slope))
    check_field(self, "equalized_lr", isinstance(self.equalized_lr, bool),
                "must be true or false")

  def _channel_pairs(self) -> tuple[tuple[int, int], ...]:
    """`channels` as (resolution, channels) pairs for exactly this model's resolutions."""
    channels = self.channels
    if channels is None:
      channels = default_channels(self.max_resolution)
    if isinstance(channels, Mapping):
      channels = tuple(channels.items())
    try:
      pairs = tuple(sorted((k, v) for k, v in channels))
    except (TypeError, ValueError):
      pairs = None
    check_field(self, "channels", pairs is not None,
                "must map resolutions to channel counts, e.g. {4: 128}")
    for r, c in pairs:
      check_field(self, "channels", is_power_of_two(r) and r >= MIN_RESOLUTION,
                  f"key {r!r} is not a power of two >= {MIN_RESOLUTION}")
      check_field(self, "channels", is_int(c, 1),
                  f"channels at {r} must be a positive integer, got {c!r}")
    have = dict(pairs)
    missing = [r for r in self.resolutions if r not in have]
    check_field(self, "channels", not missing, f"needs an entry for every resolution "
                f"{self.resolutions}; missing {missing}")
    return tuple((r, int(have[r])) for r in self.resolutions)

  @property
  def resolutions(self) -> tuple[int, ...]:
    """Every stage's resolution, 4, 8, ..., max_resolution."""
    return resolutions_up_to(self.max_resolution)

  def channels_at(self, resolution: int) -> int:
    """Feature channels of the blocks that run at `resolution`."""
    return dict(self.channels)[resolution]

  def to_dict(self) -> dict:
    """A JSON-ready dict (channel keys become strings); `from_dict` inverts it."""
    d = dataclasses.asdict(self)
    d["channels"] = {str(r): c for r, c in self.channels}
    return d

  @classmethod
  def from_dict(cls, d: Any, where: str = "model") -> "ModelConfig":
    """Inverts `to_dict`; a key that is not a field is a `ConfigError` naming it and the
    fields (`where` says where the dict sat in a bigger config)."""
    d = dict(check_keys(d, [f.name for f in dataclasses.fields(cls)], where))
    if isinstance(d.get("channels"), Mapping):
      d["channels"] = {resolution_key(r, f"{where}.channels"): c
                       for r, c in d["channels"].items()}
    return cls(**d)

