"""The autoencoder at every stage of its growth, built by pure functions.

The answer to "how do I keep my 4x4 weights when the network grows to 8x8?" is in how the
modules below are named and wired:

* Every resolution r owns its blocks (`block_r` in the encoder and in the decoder). A block's
  kernels have the same shape at every stage, so trained weights always fit.
* Images enter through `from_image_R` and leave through `to_image_R`, 1x1 convolutions that
  belong to the current resolution R only. They are the only parts that are replaced.
* While the stage R is fading in, the old stage's adapters (`from_image_{R/2}`,
  `to_image_{R/2}`) are still there, and the two paths are blended with `alpha`:

      encoder:  x --from_image_R--block_R------------------+ alpha
                 \\--downsample--from_image_{R/2}-----------+--(fade_in)--block_{R/2}-- ... --latent
      decoder:  latent-- ... --block_{R/2}--+--upsample--block_R--to_image_R--+ alpha
                                             \\--to_image_{R/2}--upsample------+--(fade_in)--> y

Parameters are named by resolution, never by Flax's automatic counters (`Conv_0`, ...), so the
same name means the same weights at every stage and growing is a merge by path (growth.py).
The stage and phase are never passed around separately: they are read off the parameter tree
(`stage_of`), so a caller cannot ask for a stage that contradicts its weights.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from progae_jax.config import MIN_RESOLUTION, ModelConfig, resolutions_up_to
from progae_jax.ops import downsample, fade_in, upsample

Params = dict[str, Any]


def from_image_name(r: int) -> str:
  return f"from_image_{r}"


def to_image_name(r: int) -> str:
  return f"to_image_{r}"


def block_name(r: int) -> str:
  return f"block_{r}"


# ---------------------------------------------------------------------------------------------
# Building blocks
#
# With `equalized` (ProGAN's equalized learning rate) a layer stores its weights at unit scale
# and applies its init's constant 1/sqrt(fan_in) at run time. The layer is linear, so the
# constant goes on its input, and the parameters keep their names and shapes. At init the
# function is the plain model's (same key, same function); in training, Adam's steps of
# about the learning rate are the same relative size in every layer, wide or narrow.


def _kernel_init(equalized: bool):
  """Flax's default (LeCun normal), or the same draws at unit scale."""
  lecun = nn.initializers.lecun_normal()
  if not equalized:
    return lecun
  return lambda key, shape, dtype=jnp.float32: lecun(key, shape, dtype) * np.sqrt(
      np.prod(shape[:-1]))


def _scaled_input(h, kernel_pixels: int, equalized: bool):
  """The input of an equalized layer times its constant 1/sqrt(fan_in)."""
  return h * (kernel_pixels * h.shape[-1]) ** -0.5 if equalized else h


def _conv(features: int, size: int, equalized: bool, dtype, name: str):
  conv = nn.Conv(features, (size, size), padding="SAME", dtype=dtype,
                 kernel_init=_kernel_init(equalized), name=name)
  return lambda h: conv(_scaled_input(h, size * size, equalized))


def _dense(features: int, equalized: bool, dtype, name: str):
  dense = nn.Dense(features, dtype=dtype, kernel_init=_kernel_init(equalized), name=name)
  return lambda h: dense(_scaled_input(h, 1, equalized))


class ConvStack(nn.Module):
  """3x3 'same' convolutions, each followed by a leaky ReLU; named conv1, conv2, ..."""

  features: tuple[int, ...]
  slope: float
  dtype: Any = jnp.float32
  equalized: bool = False

  @nn.compact
  def __call__(self, h):
    for i, f in enumerate(self.features):
      h = _conv(f, 3, self.equalized, self.dtype, f"conv{i + 1}")(h)
      h = nn.leaky_relu(h, self.slope)
    return h


class FromImage(nn.Module):
  """1x1 adapter: image channels -> the resolution's feature channels, leaky ReLU."""

  features: int
  slope: float
  dtype: Any = jnp.float32
  equalized: bool = False

  @nn.compact
  def __call__(self, images):
    h = _conv(self.features, 1, self.equalized, self.dtype, "conv")(images)
    return nn.leaky_relu(h, self.slope)


class ToImage(nn.Module):
  """1x1 adapter: feature channels -> image channels, linear."""

  image_channels: int
  dtype: Any = jnp.float32
  equalized: bool = False

  @nn.compact
  def __call__(self, h):
    return _conv(self.image_channels, 1, self.equalized, self.dtype, "conv")(h)


# ---------------------------------------------------------------------------------------------
# Encoder, decoder and autoencoder of one stage


class Encoder(nn.Module):
  """Images at `resolution` -> latent vector."""

  config: ModelConfig
  resolution: int
  fading: bool = False
  dtype: Any = jnp.float32

  def block(self, r: int) -> ConvStack:
    # block_r runs at r and hands r/2 its channel count; downsampling follows it.
    c, eq = self.config.channels_at, self.config.equalized_lr
    return ConvStack((c(r), c(r // 2)), self.config.leaky_slope, self.dtype, eq,
                     name=block_name(r))

  def from_image(self, r: int) -> FromImage:
    return FromImage(self.config.channels_at(r), self.config.leaky_slope, self.dtype,
                     self.config.equalized_lr, name=from_image_name(r))

  @nn.compact
  def __call__(self, images, alpha):
    cfg, top = self.config, self.resolution
    h = self.from_image(top)(images)
    if top > MIN_RESOLUTION:
      h = downsample(self.block(top)(h))
      if self.fading:  # The old stage's entry, on the same images at half resolution.
        h = fade_in(self.from_image(top // 2)(downsample(images)), h, alpha)
    r = top // 2
    while r > MIN_RESOLUTION:
      h = downsample(self.block(r)(h))
      r //= 2
    h = ConvStack((cfg.channels_at(MIN_RESOLUTION),), cfg.leaky_slope, self.dtype,
                  cfg.equalized_lr, name=block_name(MIN_RESOLUTION))(h)
    h = h.reshape(h.shape[0], -1)
    return _dense(cfg.latent_dim, cfg.equalized_lr, self.dtype, "to_latent")(h)


class Decoder(nn.Module):
  """Latent vector -> images at `resolution` (linear output, no squashing)."""

  config: ModelConfig
  resolution: int
  fading: bool = False
  dtype: Any = jnp.float32

  def block(self, r: int) -> ConvStack:
    # block_r upsamples from r/2 and works at r.
    c = self.config.channels_at(r)
    return ConvStack((c, c), self.config.leaky_slope, self.dtype, self.config.equalized_lr,
                     name=block_name(r))

  def to_image(self, r: int) -> ToImage:
    return ToImage(self.config.image_channels, self.dtype, self.config.equalized_lr,
                   name=to_image_name(r))

  @nn.compact
  def __call__(self, latent):
    cfg, top = self.config, self.resolution
    c4 = cfg.channels_at(MIN_RESOLUTION)
    h = _dense(MIN_RESOLUTION * MIN_RESOLUTION * c4, cfg.equalized_lr, self.dtype,
               "from_latent")(latent)
    h = nn.leaky_relu(h, cfg.leaky_slope).reshape(-1, MIN_RESOLUTION, MIN_RESOLUTION, c4)
    h = ConvStack((c4,), cfg.leaky_slope, self.dtype, cfg.equalized_lr,
                  name=block_name(MIN_RESOLUTION))(h)
    last_shared = top // 2 if self.fading else top
    r = 2 * MIN_RESOLUTION
    while r <= last_shared:
      h = self.block(r)(upsample(h))
      r *= 2
    if not self.fading:
      return self.to_image(top)(h)
    old = upsample(self.to_image(top // 2)(h))  # The old stage's exit, seen at the new size.
    new = self.to_image(top)(self.block(top)(upsample(h)))
    return old, new


class Autoencoder(nn.Module):
  """One stage of the progressive autoencoder: `(reconstruction, latent)` from images."""

  config: ModelConfig
  resolution: int
  fading: bool = False
  dtype: Any = jnp.float32

  def setup(self):
    args = (self.config, self.resolution, self.fading, self.dtype)
    self.encoder = Encoder(*args)
    self.decoder = Decoder(*args)

  def __call__(self, images, alpha):
    latent = self.encoder(images, alpha)
    out = self.decoder(latent)
    if self.fading:
      out = fade_in(*out, alpha)
    return out, latent


# ---------------------------------------------------------------------------------------------
# Pure functions over plain parameter dicts


@dataclasses.dataclass(frozen=True)
class Stage:
  """Where a parameter tree is in its growth."""
  resolution: int
  fading: bool  # True while the resolution's new path is being faded in.

  @property
  def phase(self) -> str:
    return "fade" if self.fading else "stable"

  def __str__(self):
    return f"{self.resolution}x{self.resolution} {self.phase}"


def build(config: ModelConfig, resolution: int, *, fading: bool = False,
          dtype: Any = jnp.float32) -> Autoencoder:
  """The Flax module of one stage (a stage at 4x4 cannot be fading: there is nothing older)."""
  if resolution not in config.resolutions:
    raise ValueError(f"resolution {resolution} is not a stage of this config; stages are "
                     f"{config.resolutions}")
  if fading and resolution == MIN_RESOLUTION:
    raise ValueError(f"the {MIN_RESOLUTION}x{MIN_RESOLUTION} stage cannot be fading")
  return Autoencoder(config, resolution, fading, dtype)


def init_params(config: ModelConfig, resolution: int, rng: jax.Array, *,
                fading: bool = False) -> Params:
  """Freshly initialised parameters of one stage: `{"encoder": {...}, "decoder": {...}}`."""
  model = build(config, resolution, fading=fading)
  images = jnp.zeros((1, resolution, resolution, config.image_channels), jnp.float32)
  variables = model.init(rng, images, jnp.float32(1.0))
  return _plain(variables["params"])


def _plain(tree):
  """Nested dicts all the way down (Flax may hand back FrozenDicts)."""
  if hasattr(tree, "items"):
    return {k: _plain(v) for k, v in tree.items()}
  return tree


def _adapter_resolutions(subtree: Params, prefix: str) -> list[int]:
  return sorted(int(k[len(prefix):]) for k in subtree if k.startswith(prefix)
                and k[len(prefix):].isdigit())


def stage_of(params: Params) -> Stage:
  """Reads the stage and phase off a parameter tree, from the adapters it holds."""
  if not isinstance(params, dict) or set(params) != {"encoder", "decoder"}:
    keys = sorted(params) if isinstance(params, dict) else type(params).__name__
    raise ValueError("not a progae_jax parameter tree: expected a dict with exactly the keys "
                     f"'encoder' and 'decoder', got {keys}")
  enc = _adapter_resolutions(params["encoder"], "from_image_")
  dec = _adapter_resolutions(params["decoder"], "to_image_")
  if enc != dec or len(enc) not in (1, 2) or (len(enc) == 2 and enc[1] != 2 * enc[0]):
    raise ValueError("not a progae_jax parameter tree: the encoder's from_image adapters "
                     f"{enc} and the decoder's to_image adapters {dec} must be the same one "
                     "resolution (stable) or two consecutive ones (fading)")
  top = enc[-1]
  needed = [block_name(r) for r in resolutions_up_to(top)]
  for part in ("encoder", "decoder"):
    missing = [b for b in needed if b not in params[part]]
    if missing:
      raise ValueError(f"not a progae_jax parameter tree: {part} lacks {missing} for "
                       f"resolution {top}")
  return Stage(top, fading=len(enc) == 2)


def widths_of(params: Params) -> dict[int, int]:
  """The channel count of every resolution in the tree, read off its encoder blocks (the
  first convolution of `block_r` maps r's channels to r's channels)."""
  encoder = params["encoder"]
  return {r: int(encoder[block_name(r)]["conv1"]["kernel"].shape[-1])
          for r in resolutions_up_to(stage_of(params).resolution)}


def with_widths_of(config: ModelConfig, params: Params) -> ModelConfig:
  """`config` with the channel counts the tree has (the config's own where it has none yet)."""
  widths = widths_of(params)
  if all(config.channels_at(r) == c for r, c in widths.items()):
    return config
  return dataclasses.replace(config, channels={**dict(config.channels), **widths})


def check_images(config: ModelConfig, stage: Stage, images) -> None:
  """Images must be NHWC at the tree's resolution with the config's channel count."""
  r, c = stage.resolution, config.image_channels
  shape = tuple(getattr(images, "shape", ()))
  if len(shape) != 4 or shape[1:] != (r, r, c):
    raise ValueError(f"images must have shape (batch, {r}, {r}, {c}) for this {stage} tree "
                     f"and {c} image channel(s); got {shape}")


def check_alpha(alpha) -> None:
  """Checks alpha in [0, 1] when its value is known on the host; tracers pass through."""
  if isinstance(alpha, jax.core.Tracer):
    return
  value = np.asarray(alpha)
  if value.size == 1 and not 0.0 <= float(value) <= 1.0:
    raise ValueError(f"alpha must be in [0, 1], got {float(value)}")


def apply(config: ModelConfig, params: Params, images, alpha=1.0, *,
          dtype: Any = jnp.float32):
  """Runs the autoencoder: `(reconstruction, latent)` for NHWC `images`.

  The stage is read from `params`, and so are the channel counts (a widened tree runs at its
  own widths: widen.py); the rest of the architecture is `config`'s. `alpha` blends the
  fading path in (ignored by a stable tree); it is used as a traced value, so changing it
  never recompiles a jitted caller. `dtype` is the compute dtype (e.g. bfloat16); parameters
  stay as they are stored and the outputs come back as float32.
  """
  stage = stage_of(params)
  check_images(config, stage, images)
  check_alpha(alpha)
  model = build(with_widths_of(config, params), stage.resolution, fading=stage.fading,
                dtype=dtype)
  alpha = jnp.asarray(alpha, jnp.float32)
  if dtype != jnp.float32:
    images, alpha = images.astype(dtype), alpha.astype(dtype)
  recon, latent = model.apply({"params": params}, images, alpha)
  return recon.astype(jnp.float32), latent.astype(jnp.float32)


def _cast(dtype, *arrays):
  return tuple(jnp.asarray(a, jnp.float32).astype(dtype) for a in arrays)


def encode(config: ModelConfig, params: Params, images, alpha=1.0, *,
           dtype: Any = jnp.float32):
  """The encoder alone: the float32 latents `(batch, latent_dim)` of NHWC `images`, the same
  numbers as `apply(...)[1]` (a fading tree blends its two entries with `alpha`; widths are
  the tree's, as for `apply`)."""
  stage = stage_of(params)
  check_images(config, stage, images)
  check_alpha(alpha)
  model = build(with_widths_of(config, params), stage.resolution, fading=stage.fading,
                dtype=dtype)
  images, alpha = _cast(dtype, images, alpha)
  latent = model.apply({"params": params}, images, alpha, method=lambda m, x, a: m.encoder(x, a))
  return latent.astype(jnp.float32)


def decode(config: ModelConfig, params: Params, latents, alpha=1.0, *,
           dtype: Any = jnp.float32):
  """The decoder alone: float32 NHWC images at the tree's resolution from `(batch,
  latent_dim)` latents, the same numbers as `apply(...)[0]` on the images they encode."""
  stage = stage_of(params)
  shape = tuple(getattr(latents, "shape", ()))
  if len(shape) != 2 or shape[1] != config.latent_dim:
    raise ValueError(f"latents must have shape (batch, {config.latent_dim}); got {shape}")
  check_alpha(alpha)
  model = build(with_widths_of(config, params), stage.resolution, fading=stage.fading,
                dtype=dtype)
  latents, alpha = _cast(dtype, latents, alpha)
  out = model.apply({"params": params}, latents, method=lambda m, z: m.decoder(z))
  if stage.fading:
    out = fade_in(*out, alpha)
  return out.astype(jnp.float32)


def count_params(params: Params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))
