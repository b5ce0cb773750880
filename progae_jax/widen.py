"""Widening a trained network without changing what it computes (Net2Net, Chen et al. 2016).

The channels of a resolution are units. To widen resolution r from n to m channels, new
channel j copies old channel g(j) = j mod n (every unit copied as evenly as m allows), and
every layer that reads those channels divides what it takes from each copy by the number
of copies of its original:

    before:   x --W_in-->  h   (n units) --W_out-------------------->  y = W_out h
    after:    x --W_in[:, g]--> h[g] (m units) --W_out[g] / count[g]-->  y = W_out h

Copies have the same incoming weights, so the same activations (the leaky ReLU, the 2x2
average and the fade's blend all act channel by channel), and their shares add up to what
the original gave. Producers (layers whose *output* channels are r's) have their columns
and biases copied; consumers (layers whose *input* channels are r's) have their rows copied
and divided. At resolution r there are four sets of such units, widened alike:

    encoder, r's input:     from_image_r, block_2r.conv2  ->  block_r.conv1
    encoder, inside r:      block_r.conv1                 ->  block_r.conv2  (4x4: to_latent)
    decoder, inside r:      block_r.conv1                 ->  block_r.conv2  (4x4: from_latent
                                                                              -> block_4.conv1)
    decoder, r's output:    block_r.conv2 (4x4: conv1)    ->  block_2r.conv1, to_image_r

Parameter names never change; only these kernels change shape. A layer that is missing
from the tree (no block_2r yet, no from_image_r after its fade) is simply not there to
widen, and a resolution not grown yet only changes in the returned config.

Where a layer depends on the channel count:

* The equalized learning rate (ModelConfig.equalized_lr) applies 1/sqrt(fan_in) at run
  time, and fan_in grows with the consumer's input channels by m/n. Consumers' stored rows
  are multiplied by sqrt(m/n) as well, so the effective weights are exactly the divided ones.
* Normalisation: the model has none (no layer reads statistics over channels). `widen`
  checks that the widened tree has exactly the shapes of the widened config's own tree, so
  a layer it does not know about (a normalisation added later) is an error, never a silent
  change of function.

Noise: copies of one unit with identical incoming *and* outgoing weights get identical
gradients forever. `noise` adds to each consumer's rows of a copied unit a random term that
sums to zero over that unit's copies (scaled by the layer's weight spread): the outgoing
weights of the copies differ, so their gradients do, yet the sum the next layer computes
is unchanged. The function changes only by float rounding, whatever the noise
(`function_change` measures it).

Optimizer state (`widen_opt_state`): "split" carries Adam's moments along with the weights,
each copied where its weight was copied and scaled as the gradient of that weight scales
(the gradient of a copy's incoming weights is the original's over the copy count; the
gradient of a consumer's stored rows scales by 1/sqrt(m/n) with the equalized learning
rate): mu by that factor, nu by its square, per-leaf step counts kept. "fresh" starts every
widened leaf afresh (moments zero, per-leaf count 0) and keeps the rest.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from progae_jax.config import MIN_RESOLUTION, ModelConfig, is_int
from progae_jax.model import (Params, apply, block_name, from_image_name, init_params,
                              stage_of, to_image_name, widths_of)

OPTIMIZER_POLICIES = ("split", "fresh")


@dataclasses.dataclass(frozen=True)
class Copies:
  """Which old channel each of `new` channels copies: j -> j mod `old`."""
  old: int
  new: int

  @property
  def source(self) -> np.ndarray:
    return np.arange(self.new) % self.old

  @property
  def count(self) -> np.ndarray:
    """For each new channel, how many copies its original has."""
    return np.bincount(self.source, minlength=self.old)[self.source].astype(np.float32)

  @property
  def fan_in_ratio(self) -> float:
    return self.new / self.old


@dataclasses.dataclass(frozen=True)
class _Layer:
  """A layer's place in the tree (the dict holding `kernel` and `bias`). `pixels`: a dense
  layer on a flattened 4x4 map sees its channels once per pixel."""
  path: tuple[str, ...]
  pixels: int = 1


@dataclasses.dataclass(frozen=True)
class _Edit:
  """One widening of one leaf: its output channels copied ("out"), or its input channels
  copied and divided ("in")."""
  role: Literal["in", "out"]
  copies: Copies
  pixels: int


def _unit_sets(r: int) -> dict[str, tuple[list[_Layer], list[_Layer]]]:
  """The four sets of r's units: (producers, consumers) of each (see the module's table)."""
  b, b2, flat = block_name(r), block_name(2 * r), MIN_RESOLUTION ** 2
  enc_in = ([_Layer(("encoder", from_image_name(r), "conv")), _Layer(("encoder", b2, "conv2"))],
            [_Layer(("encoder", b, "conv1"))])
  dec_out_consumers = [_Layer(("decoder", b2, "conv1")),
                       _Layer(("decoder", to_image_name(r), "conv"))]
  if r == MIN_RESOLUTION:
    return {"encoder_in": enc_in,
            "encoder_inside": ([_Layer(("encoder", b, "conv1"))],
                               [_Layer(("encoder", "to_latent"), flat)]),
            "decoder_inside": ([_Layer(("decoder", "from_latent"), flat)],
                               [_Layer(("decoder", b, "conv1"))]),
            "decoder_out": ([_Layer(("decoder", b, "conv1"))], dec_out_consumers)}
  return {"encoder_in": enc_in,
          "encoder_inside": ([_Layer(("encoder", b, "conv1"))], [_Layer(("encoder", b, "conv2"))]),
          "decoder_inside": ([_Layer(("decoder", b, "conv1"))], [_Layer(("decoder", b, "conv2"))]),
          "decoder_out": ([_Layer(("decoder", b, "conv2"))], dec_out_consumers)}


def _edits(changes: Mapping[int, Copies]) -> dict[tuple[str, ...], list[_Edit]]:
  """Every leaf path a widening touches, with its edits ("in" before "out": noise added to a
  layer's rows is then copied along with its columns)."""
  out: dict[tuple[str, ...], list[_Edit]] = {}
  for r, copies in changes.items():
    for producers, consumers in _unit_sets(r).values():
      for layer in consumers:
        out.setdefault(layer.path + ("kernel",), []).append(_Edit("in", copies, layer.pixels))
      for layer in producers:
        for leaf in ("kernel", "bias"):
          out.setdefault(layer.path + (leaf,), []).append(_Edit("out", copies, layer.pixels))
  return {path: sorted(e, key=lambda e: e.role != "in") for path, e in out.items()}


def _tile(x, copies: Copies, axis: int):
  """`x` with channel j <- j mod old along `axis`: whole copies, then the first few (slices
  and concatenation, which compile in no time, unlike a gather)."""
  whole, rest = divmod(copies.new, copies.old)
  parts = [x] * whole + ([jax.lax.slice_in_dim(x, 0, rest, axis=axis)] if rest else [])
  return jnp.concatenate(parts, axis=axis)


def _copy_channels(x, edit: _Edit, factor: np.ndarray):
  """`x` with the edit's channel axis copied (j <- g(j)) and multiplied by `factor[j]`.
  "out": the last axis; "in": the kernel's input axis (-2). A flattened axis is viewed as
  (pixels, channels) for the copy."""
  shape, pixels = x.shape, edit.pixels
  if edit.role == "out":
    x = x.reshape(*shape[:-1], pixels, shape[-1] // pixels)
    x = _tile(x, edit.copies, -1) * factor
    return x.reshape(*shape[:-1], -1)
  x = x.reshape(*shape[:-2], pixels, shape[-2] // pixels, shape[-1])
  x = _tile(x, edit.copies, -2) * factor[:, None]
  return x.reshape(*shape[:-2], -1, shape[-1])


def _noise_shape(shape, edits: list[_Edit]) -> tuple[int, ...] | None:
  """The shape of the noise on a kernel's widened rows (None: no unit of its input copied)."""
  for edit in edits:
    if edit.role == "in" and edit.copies.new > edit.copies.old:
      return (*shape[:-2], edit.pixels, edit.copies.new, shape[-1])
  return None


def _zero_sum(z, edit: _Edit):
  """`z` (..., pixels, new, out) minus its mean over each unit's copies, flattened back: it
  sums to zero over every group of copies (and is zero for a unit not copied)."""
  copies = edit.copies
  sums = 0.0
  for start in range(0, copies.new, copies.old):  # Copy group by copy group: slices only.
    part = jax.lax.slice_in_dim(z, start, min(start + copies.old, copies.new), axis=-2)
    pad = [(0, 0)] * (z.ndim - 2) + [(0, copies.old - part.shape[-2]), (0, 0)]
    sums = sums + jnp.pad(part, pad)
  counts = np.bincount(copies.source, minlength=copies.old).astype(np.float32)
  z = z - _tile(sums / counts[:, None], copies, -2)
  return z.reshape(*z.shape[:-3], -1, z.shape[-1])


def _noises(tree, edits: dict, rng) -> dict[tuple[str, ...], jax.Array]:
  """Standard normal draws for every kernel whose rows get noise, from one draw of `rng`
  (one random-number kernel to compile, however many layers widen)."""
  shapes = {}
  for path, x in _flat(tree):
    if path in edits and (shape := _noise_shape(x.shape, edits[path])) is not None:
      shapes[path] = shape
  sizes = [int(np.prod(s)) for s in shapes.values()]
  flat = jax.random.normal(rng, (sum(sizes),))
  offsets = np.cumsum([0] + sizes)
  return {path: flat[offsets[i]:offsets[i + 1]].reshape(shape)
          for i, (path, shape) in enumerate(shapes.items())}


def _weight_factor(edit: _Edit, equalized: bool) -> np.ndarray:
  """What a weight is multiplied by: producers' columns by 1, consumers' rows by
  1/count (and sqrt(m/n) for the equalized learning rate's smaller run-time constant)."""
  if edit.role == "out":
    return np.ones(edit.copies.new, np.float32)
  scale = np.sqrt(edit.copies.fan_in_ratio) if equalized else 1.0
  return (scale / edit.copies.count).astype(np.float32)


def _gradient_factor(edit: _Edit, equalized: bool) -> np.ndarray:
  """How the gradient of a widened weight compares with its original's (Adam's mu scales
  so, nu by the square): a copy's incoming weights get 1/count of it; a consumer's stored
  rows 1/sqrt(m/n) with the equalized learning rate, else the same."""
  if edit.role == "out":
    return (1.0 / edit.copies.count).astype(np.float32)
  scale = np.sqrt(edit.copies.fan_in_ratio) if equalized else 1.0
  return np.full(edit.copies.new, 1.0 / scale, np.float32)


def _widen_leaf(x, edits: list[_Edit], equalized: bool, noise: float, z=None):
  """One parameter widened; `z` (when noise is on and the leaf's rows are copied): its draw."""
  spread = jnp.std(x)
  for edit in edits:
    x = _copy_channels(x, edit, _weight_factor(edit, equalized))
    if z is not None and edit.role == "in":
      x = x + noise * spread * _zero_sum(z, edit)
  return x


def _changes(config: ModelConfig, params: Params,
             channels: Mapping[int, int]) -> tuple[ModelConfig, dict[int, Copies]]:
  """The widened config and, for each resolution the tree already has, its Copies."""
  have = widths_of(params)
  for r, c in channels.items():
    if r not in config.resolutions:
      raise ValueError(f"cannot widen resolution {r!r}: the model's resolutions are "
                       f"{config.resolutions}")
    old = have.get(r, config.channels_at(r))
    if not is_int(c, 1) or c < old:
      raise ValueError(f"cannot widen resolution {r} to {c!r} channels: it has {old}, and "
                       "widening needs an integer at least that")
  wanted = {r: int(c) for r, c in channels.items()}
  new_config = dataclasses.replace(config, channels={**dict(config.channels), **have, **wanted})
  return new_config, {r: Copies(have[r], int(c)) for r, c in channels.items()
                      if r in have and c > have[r]}


def _check_shapes(config: ModelConfig, params: Params) -> None:
  """The widened tree must have exactly the shapes of `config`'s own tree at its stage."""
  stage = stage_of(params)
  expected = jax.eval_shape(lambda: init_params(config, stage.resolution, jax.random.key(0),
                                                fading=stage.fading))
  want = {jax.tree_util.keystr(p): x.shape
          for p, x in jax.tree_util.tree_flatten_with_path(expected)[0]}
  for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
    key = jax.tree_util.keystr(path)
    if want.get(key) != x.shape:
      raise ValueError(f"widen left {key} with shape {x.shape}, but the widened model expects "
                       f"{want.get(key)}: a layer widen does not know how to widen")


def _names(path) -> tuple:
  """A pytree path as plain names: dict keys, attribute names, sequence indices."""
  return tuple(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path)


def _flat(tree) -> list[tuple[tuple, Any]]:
  return [(_names(p), x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _map_leaves(tree, fn):
  """`fn(path as a tuple of names, leaf)` on every leaf of a nested dict."""
  return jax.tree_util.tree_map_with_path(lambda p, x: fn(_names(p), x), tree)


def widen(config: ModelConfig, params: Params, channels: Mapping[int, int], *,
          noise: float = 0.0, rng: jax.Array | None = None) -> tuple[ModelConfig, Params]:
  """The widened config, and a tree for it that computes the same function as `params`
  (at every alpha, to float rounding). `channels`: the new channel count of each resolution
  to widen (at least its present one). `noise` > 0 (relative to each layer's weight spread,
  drawn from `rng`) breaks the copies' symmetry without changing the function."""
  if noise and rng is None:
    raise ValueError(f"widen with noise={noise} needs an rng to draw it from")
  if not (isinstance(noise, (int, float)) and noise >= 0):
    raise ValueError(f"noise must be a number >= 0, got {noise!r}")
  new_config, changes = _changes(config, params, channels)
  edits = _edits(changes)
  z = _noises(params, edits, rng) if noise else {}
  new = _map_leaves(params, lambda path, x: _widen_leaf(x, edits[path], config.equalized_lr,
                                                          noise, z.get(path))
                    if path in edits else x)
  _check_shapes(new_config, new)
  return new_config, new


def _param_path(path: tuple) -> tuple[tuple, tuple[str, ...]]:
  """Splits an optimizer-state leaf's path into (its slot's path, the parameter's path)."""
  for i, k in enumerate(path):
    if k in ("encoder", "decoder"):
      return path[:i], tuple(path[i:])
  return path, ()


def _widen_slot(slot_path: tuple, x, edits: list[_Edit], equalized: bool):
  """One optimizer slot of a widened parameter, split like the gradient of that parameter."""
  slot = slot_path[-1] if slot_path else None
  if slot == "count":  # A per-leaf step count: the moments are carried, so is their age.
    return x
  power = {"mu": 1, "nu": 2}.get(slot)
  if power is None:
    raise ValueError(f"cannot split the optimizer slot {slot!r} of a widened parameter: "
                     "only Adam's mu, nu and per-leaf counts are known (use policy='fresh')")
  for edit in edits:
    x = _copy_channels(x, edit, _gradient_factor(edit, equalized) ** power)
  return x


def widen_opt_state(opt_state: Any, optimizer: optax.GradientTransformation, config: ModelConfig,
                    params: Params, channels: Mapping[int, int], *,
                    policy: Literal["split", "fresh"] = "split") -> Any:
  """The optimizer state for `widen(config, params, channels)`'s tree (see the module's
  text for "split" and "fresh"); the state of every leaf a widening does not touch, and the
  scalar state (a shared step count, the injected learning rate), is kept."""
  if policy not in OPTIMIZER_POLICIES:
    raise ValueError(f"policy must be one of {OPTIMIZER_POLICIES}, got {policy!r}")
  edits = _edits(_changes(config, params, channels)[1])
  flat, treedef = jax.tree_util.tree_flatten_with_path(opt_state)
  if policy == "fresh":
    shapes = jax.eval_shape(lambda: widen(config, params, channels)[1])
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    fresh = treedef.flatten_up_to(optimizer.init(zeros))
  new = []
  for i, (path, x) in enumerate(flat):
    slot_path, param_path = _param_path(_names(path))
    if param_path not in edits:
      new.append(x)
    elif policy == "fresh":
      new.append(fresh[i])
    else:
      new.append(_widen_slot(slot_path, x, edits[param_path], config.equalized_lr))
  return jax.tree_util.tree_unflatten(treedef, new)


_jitted_apply = jax.jit(apply, static_argnums=0)


def function_change(config: ModelConfig, old: Params, new: Params, images,
                    alphas=(0.0, 0.5, 1.0)) -> float:
  """The largest absolute difference, over `alphas`, between the two trees' reconstructions
  and latents of `images` (each tree runs at its own widths; one compile per tree shape)."""
  worst = 0.0
  for alpha in alphas:
    alpha = jnp.float32(alpha)
    a, b = _jitted_apply(config, old, images, alpha), _jitted_apply(config, new, images, alpha)
    worst = max(worst, *(float(jnp.max(jnp.abs(x - y))) for x, y in zip(a, b)))
  return worst
