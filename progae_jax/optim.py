"""The optimizer of a network that grows: Adam whose every weight counts its own steps.

Adam divides its moments by (1 - b^t) to undo their start at zero. optax's Adam keeps one
step count `t` for all weights. When growth adds `block_16` after 2,000 steps, its moments
start at zero but `t` is already 2,000, so the correction is off:

    shared count:    count = 2000                       new leaves' first steps: several x the rate
    per-leaf count:  count = {block_4: 2000, ..., block_16: 0, to_image_16: 0}

With a count per leaf (a tree of int32 scalars shaped like the parameters), growth carries the
counts by path exactly as it carries mu and nu (growth.merge_by_path): kept weights keep their
age, new ones start at 0 and get Adam's usual first steps. The state's shapes change only when
the tree does, so a fade is still one compiled step.

`make_optimizer` builds the whole update from a config: optional clipping of the global
gradient norm, Adam (per-leaf or shared count), optionally a larger step for the leaves that
are fading in (`boost_fading_in`), and the learning rate, injected into the state so each
phase sets its own without recompiling (`set_learning_rate`).

While 16x16 fades in, the leaves that growth added lag the rest; a boost of k multiplies
their steps, and only theirs, by k until the fade ends:

    fading in 16:   block_16, from_image_16, to_image_16   k x lr
                    every other leaf (block_4, block_8, from_image_8, ...)   lr
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from progae_jax.model import block_name, from_image_name, stage_of, to_image_name
from progae_jax.schedule import BIAS_CORRECTIONS, TrainConfig, phases


class LeafwiseAdamState(NamedTuple):
  count: Any  # One int32 step count per parameter leaf, the same tree as the parameters.
  mu: Any
  nu: Any


def scale_by_leafwise_adam(b1: float = 0.9, b2: float = 0.999,
                           eps: float = 1e-8) -> optax.GradientTransformation:
  """`optax.scale_by_adam` with one step count per parameter leaf (see the module's picture).
  For a tree that never grows it is the same arithmetic as `optax.scale_by_adam` (jitted, the
  two agree to float32 rounding: XLA may fuse the per-leaf divisions differently)."""

  def init(params):
    return LeafwiseAdamState(
        count=jax.tree.map(lambda _: jnp.zeros([], jnp.int32), params),
        mu=optax.tree.zeros_like(params), nu=optax.tree.zeros_like(params))

  def update(grads, state, params=None):
    del params
    mu = optax.tree.update_moment(grads, state.mu, b1, 1)
    nu = optax.tree.update_moment_per_elem_norm(grads, state.nu, b2, 2)
    count = jax.tree.map(optax.safe_increment, state.count)
    mu_hat = jax.tree.map(lambda m, t: m / (1 - b1 ** t).astype(m.dtype), mu, count)
    nu_hat = jax.tree.map(lambda v, t: v / (1 - b2 ** t).astype(v.dtype), nu, count)
    updates = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu_hat, nu_hat)
    return updates, LeafwiseAdamState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init, update)


def fading_in_names(resolution: int) -> frozenset[str]:
  """The modules that growth to `resolution` adds: its block and its two adapters."""
  return frozenset((block_name(resolution), from_image_name(resolution),
                    to_image_name(resolution)))


def boost_fading_in(factor: float) -> optax.GradientTransformation:
  """Multiplies the updates of the leaves fading in (see the module's picture) by `factor`
  while the tree is fading; in a stable tree it changes nothing. Stateless: which leaves are
  new is read off the tree's names, which fix the compiled step anyway."""

  def update(updates, state, params=None):
    del params
    stage = stage_of(updates)
    if not stage.fading:
      return updates, state
    new = fading_in_names(stage.resolution)
    boosted = {part: {name: (jax.tree.map(lambda u: u * factor, leaves) if name in new
                             else leaves) for name, leaves in updates[part].items()}
               for part in updates}
    return boosted, state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(learning_rate: float = 1e-3, *, b2: float = 0.999,
                   bias_correction: str = "per_leaf", clip_grad_norm: float | None = None,
                   fade_lr_boost: float = 1.0) -> optax.GradientTransformation:
  """Adam (b1 = 0.9, `b2`) with `bias_correction` 'per_leaf' or 'shared' (optax's own), after
  clipping the global gradient norm to `clip_grad_norm` (None: no clipping); the leaves fading
  in step `fade_lr_boost` times as far (1: as far as the rest). Only the learning rate is
  injected into the state; the rest is fixed for a run."""
  if bias_correction not in BIAS_CORRECTIONS:
    raise ValueError(f"bias_correction must be one of {BIAS_CORRECTIONS}, "
                     f"got {bias_correction!r}")

  def adam(learning_rate):
    adam_scaling = (scale_by_leafwise_adam(b2=b2) if bias_correction == "per_leaf"
                    else optax.scale_by_adam(b2=b2))
    clip = [] if clip_grad_norm is None else [optax.clip_by_global_norm(clip_grad_norm)]
    boost = [] if fade_lr_boost == 1 else [boost_fading_in(fade_lr_boost)]
    return optax.chain(*clip, adam_scaling, *boost, optax.scale_by_learning_rate(learning_rate))

  return optax.inject_hyperparams(adam)(learning_rate=learning_rate)


def optimizer_fields(config: TrainConfig) -> dict:
  """What a TrainConfig's optimizer is made from besides its learning rate (which lives in the
  optimizer's state, so a jitted step serves every rate)."""
  return {"b2": config.adam_b2, "bias_correction": config.bias_correction,
          "clip_grad_norm": config.clip_grad_norm, "fade_lr_boost": config.fade_lr_boost}


def optimizer_for(config: TrainConfig) -> optax.GradientTransformation:
  """The optimizer a TrainConfig asks for, at its first phase's learning rate."""
  return make_optimizer(phases(config)[0].learning_rate, **optimizer_fields(config))


def set_learning_rate(opt_state: Any, learning_rate: float) -> Any:
  """`opt_state` with its injected learning rate replaced (same shape: no recompile)."""
  old = opt_state.hyperparams["learning_rate"]
  new = jax.device_put(jnp.asarray(learning_rate, old.dtype), old.sharding)
  return opt_state._replace(hyperparams=dict(opt_state.hyperparams, learning_rate=new))
