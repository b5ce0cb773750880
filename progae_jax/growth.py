"""Growing a trained parameter tree to the next resolution, and its optimizer state with it.

Growth is a merge by path. Initialise the next stage's tree from scratch, then, wherever a
path already existed, put the trained leaf back (its shape must match: kernels never change
shape). What is left fresh is exactly what is new: `block_2R`, `from_image_2R`, `to_image_2R`.

    grow:         {from_image_R, block_R, ...}  ->  {from_image_2R, from_image_R, block_2R, block_R, ...}
    finish_fade:  {from_image_2R, from_image_R, block_2R, ...}  ->  {from_image_2R, block_2R, ...}

Optimizer state is a pytree whose per-parameter slots (Adam's mu and nu, ...) mirror the
parameter tree under the same names, so the same merge by path carries it over too.
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import optax

from progae_jax.config import ModelConfig
from progae_jax.model import (Params, Stage, from_image_name, init_params, stage_of,
                              to_image_name)


def _path_str(path) -> str:
  return jax.tree_util.keystr(path)


def merge_by_path(fresh: Any, old: Any, *, require_all_old: bool = False) -> Any:
  """`fresh` with every leaf replaced by `old`'s leaf at the same path, where there is one.

  A shared path whose shapes differ is an error: silently keeping either leaf would be wrong.
  With `require_all_old`, every leaf of `old` must find its place in `fresh`.
  """
  old_leaves = {_path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(old)[0]}
  fresh_with_paths, treedef = jax.tree_util.tree_flatten_with_path(fresh)
  merged, used = [], set()
  for path, new_leaf in fresh_with_paths:
    key = _path_str(path)
    if key not in old_leaves:
      merged.append(new_leaf)
      continue
    old_leaf = old_leaves[key]
    if getattr(old_leaf, "shape", ()) != getattr(new_leaf, "shape", ()):
      raise ValueError(f"cannot merge {key}: the kept leaf has shape "
                       f"{getattr(old_leaf, 'shape', ())} but the new tree expects "
                       f"{getattr(new_leaf, 'shape', ())}")
    merged.append(old_leaf)
    used.add(key)
  if require_all_old and len(used) != len(old_leaves):
    lost = sorted(set(old_leaves) - used)
    raise ValueError(f"merge would drop trained leaves: {lost}")
  return jax.tree_util.tree_unflatten(treedef, merged)


def next_stage(config: ModelConfig, params: Params) -> Stage:
  """The fading stage that `grow` turns `params` into."""
  stage = stage_of(params)
  if stage.fading:
    raise ValueError(f"this tree is still fading in {stage.resolution}x{stage.resolution}: "
                     "call finish_fade before growing again")
  if stage.resolution * 2 > config.max_resolution:
    raise ValueError(f"cannot grow past max_resolution={config.max_resolution}: the tree is "
                     f"already at {stage.resolution}x{stage.resolution}")
  return Stage(stage.resolution * 2, fading=True)


def grow(params: Params, config: ModelConfig, rng: jax.Array) -> Params:
  """The fading tree of the next resolution.

  Every leaf of `params` is kept unchanged; the new block and the new 1x1 adapters are
  freshly initialised from `rng`; the old adapters stay, for the fade. At alpha = 0 the grown
  model computes what the old one did, on images downsampled to the old resolution.
  """
  new = next_stage(config, params)
  fresh = init_params(config, new.resolution, rng, fading=True)
  return merge_by_path(fresh, params, require_all_old=True)


def finish_fade(params: Params) -> Params:
  """The stable tree once alpha has reached 1: the old resolution's adapters dropped."""
  stage = stage_of(params)
  if not stage.fading:
    raise ValueError(f"this {stage} tree is not fading: there is no fade to finish")
  old = stage.resolution // 2
  out = {part: dict(sub) for part, sub in params.items()}
  del out["encoder"][from_image_name(old)]
  del out["decoder"][to_image_name(old)]
  return out


def grow_opt_state(opt_state: Any, optimizer: optax.GradientTransformation, new_params: Params,
                   *, policy: Literal["carry", "reset"] = "carry") -> Any:
  """Optimizer state for `new_params` (after `grow` or `finish_fade`).

  "carry": every per-parameter slot (Adam's mu and nu, ...) of a kept leaf is carried over,
  new leaves start from `optimizer.init`, dropped leaves' slots are dropped, and scalar state
  (step counts, injected hyperparameters) is kept. "reset": a fresh `optimizer.init`.
  Works for any optax optimizer, chains and `inject_hyperparams` included, because their
  states are pytrees in which a slot's path names the parameter it belongs to.

  A pitfall of "carry" with optax's Adam: its step count is shared by all leaves and is
  kept, so Adam's bias correction is already close to off when the new leaves' moments start
  at zero, and their first updates are several times Adam's usual step. The library's
  optimizer (optim.py) keeps one count per leaf, which this merge carries by path like the
  moments: new leaves start at 0 and take Adam's usual first steps.
  """
  if policy not in ("carry", "reset"):
    raise ValueError(f"policy must be 'carry' or 'reset', got {policy!r}")
  fresh = optimizer.init(new_params)
  if policy == "reset":
    return fresh
  return merge_by_path(fresh, opt_state)
