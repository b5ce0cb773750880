"""The train state of a progressive run: made at 4x4, grown phase by phase, described for Orbax.

The state is a plain dict of arrays (what Orbax saves and `NamedSharding` places):

    {"params": ..., "opt_state": ..., "ema": ... (optional), "step": int32[], "rng": uint32[2]}

The stage and phase are not stored beside it: they are the shape of `params` (`stage_of`).
Every change of stage goes one step along the same road,

    init_state (4x4 stable) -> advance_state -> 8x8 fade -> advance_state -> 8x8 stable -> ...

and `grow_to` walks it to a given stage: `move_to_phase` does so on the devices before each
phase, `abstract_state` under `jax.eval_shape` to describe a checkpoint's target without
computing anything. Growth to a resolution always draws from the same key, so a resumed run
grows exactly as the uninterrupted one did.

A widening (`TrainConfig.widen`, widen.py) is part of the step into a stable phase: the step
that finishes R's fade also widens, when the config widens at R. So a checkpoint's target,
rebuilt along the same road, has the widened shapes, and a resumed run widens as the
uninterrupted one did (from the same key).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from progae_jax import optim, parallel
from progae_jax.config import MIN_RESOLUTION
from progae_jax.growth import finish_fade, grow, grow_opt_state
from progae_jax.model import Stage, init_params, stage_of
from progae_jax.schedule import Phase, TrainConfig, model_at
from progae_jax.widen import widen, widen_opt_state

State = dict[str, Any]
WIDEN_KEY = 1  # Folded into a resolution's growth key: the key of a widening at its stable phase.


def set_learning_rate(state: State, learning_rate: float) -> State:
  """The same state with Adam's injected learning rate replaced (same shape: no recompile)."""
  return dict(state, opt_state=optim.set_learning_rate(state["opt_state"], learning_rate))


def _rng_for(state: State, resolution: int) -> jax.Array:
  """Growth to `resolution` always draws from the same key: a resumed run grows the same."""
  return jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), resolution)


def _init_state(config: TrainConfig, optimizer) -> State:
  key = jax.random.key(config.seed)
  params = init_params(config.model, MIN_RESOLUTION, jax.random.fold_in(key, MIN_RESOLUTION))
  state = {"params": params, "opt_state": optimizer.init(params),
           "step": jnp.zeros((), jnp.int32), "rng": jax.random.key_data(key)}
  if config.ema_decay is not None:
    state["ema"] = params
  return state


def init_state(config: TrainConfig, optimizer, mesh) -> State:
  """The 4x4 state, computed on the devices and placed by the mesh (no host round trip)."""
  sharding = parallel.state_sharding(mesh)
  return jax.jit(functools.partial(_init_state, config, optimizer), out_shardings=sharding)()


def _grow_state(state: State, *, config: TrainConfig, optimizer) -> State:
  stage, policy = stage_of(state["params"]), config.optimizer_on_growth
  if stage.fading:
    change = finish_fade
  else:
    rng = _rng_for(state, stage.resolution * 2)
    change = lambda p: grow(p, model_at(config, stage.resolution * 2, fading=True), rng)
  new = dict(state, params=change(state["params"]))
  # The optimizer state follows the parameters. `reset` empties Adam's moments at growth
  # only; `reset_twice` (ProGAN's choice) also when the fade ends and the adapters go.
  reset = policy == "reset_twice" or (policy == "reset" and not stage.fading)
  new["opt_state"] = grow_opt_state(state["opt_state"], optimizer, new["params"],
                                    policy="reset" if reset else "carry")
  if "ema" in state:
    new["ema"] = change(state["ema"])
  if stage.fading and stage.resolution in config.widen:
    new = _widen_state(new, config, optimizer)
  return new


def _widen_state(state: State, config: TrainConfig, optimizer) -> State:
  """The state as the stable phase of a resolution in `config.widen` begins: parameters and
  EMA widened (the function kept), Adam's state split or fresh (`optimizer_on_widening`)."""
  resolution = stage_of(state["params"]).resolution
  model, channels = model_at(config, resolution, fading=True), config.widen[resolution]
  rng = jax.random.fold_in(_rng_for(state, resolution), WIDEN_KEY)
  widened = lambda p: widen(model, p, channels, noise=config.widen_noise, rng=rng)[1]
  new = dict(state, params=widened(state["params"]))
  new["opt_state"] = widen_opt_state(state["opt_state"], optimizer, model, state["params"],
                                     channels, policy=config.optimizer_on_widening)
  if "ema" in state:
    new["ema"] = widened(state["ema"])
  return new


def make_advance_state(config: TrainConfig, optimizer, mesh) -> Callable[[State], State]:
  """`advance(state)`, jitted: grows (stable -> next fade) or finishes the fade (fade ->
  stable), one step along. The mesh's shardings are its output's, so the grown tree is
  created on the devices, already placed, without a trip through the host."""
  fn = functools.partial(_grow_state, config=config, optimizer=optimizer)
  return jax.jit(fn, out_shardings=parallel.state_sharding(mesh), donate_argnums=0)


def advance_state(state: State, config: TrainConfig, optimizer, mesh) -> State:
  """The state one step along the road (see `make_advance_state`)."""
  return make_advance_state(config, optimizer, mesh)(state)


def next_stage(stage: Stage) -> Stage:
  """The stage one step along the road: a fade's stable stage, or the next resolution's fade."""
  return Stage(stage.resolution, False) if stage.fading else Stage(stage.resolution * 2, True)


def stages_between(start: Stage, target: Stage) -> list[Stage]:
  """The stages the road passes from `start` (included) to `target` (excluded): where the
  state is advanced on its way."""
  out = []
  while _order(start) < _order(target):
    out.append(start)
    start = next_stage(start)
  return out


def _order(stage: Stage) -> tuple[int, bool]:
  """Stages in the order growth visits them: 8x8 fade before 8x8 stable before 16x16 fade."""
  return stage.resolution, not stage.fading


def _walk_to(state: State, target: Stage, step: Callable[[State], State]) -> State:
  """Applies `step` (one stage along) until the state is at `target`; never goes back."""
  while (stage := stage_of(state["params"])) != target:
    if _order(stage) > _order(target):
      raise ValueError(f"the state is at {stage}, past {target}")
    state = step(state)
  return state


def grow_to(state: State, target: Stage, config: TrainConfig, optimizer, mesh) -> State:
  """The state grown (on the devices, as training grows it) until its stage is `target`."""
  return _walk_to(state, target, lambda s: advance_state(s, config, optimizer, mesh))


def move_to_phase(state: State, phase: Phase, config: TrainConfig, optimizer, mesh, *,
                  advance: Callable[[State], State] | None = None) -> State:
  """Changes the tree until its stage is the phase's, then sets the phase's learning rate.
  `advance` (one step along the road) defaults to `advance_state`; the training loop passes
  its programs compiled ahead."""
  advance = advance or (lambda s: advance_state(s, config, optimizer, mesh))
  state = _walk_to(state, Stage(phase.resolution, phase.fading), advance)
  return set_learning_rate(state, phase.learning_rate)


def abstract_state(config: TrainConfig, stage: Stage, optimizer, mesh) -> State:
  """Shapes, dtypes and shardings of the state at `stage`, from `jax.eval_shape` (no FLOPs):
  the target a checkpoint of that stage is restored into."""
  grow_once = functools.partial(_grow_state, config=config, optimizer=optimizer)
  build = lambda: _walk_to(_init_state(config, optimizer), stage, grow_once)
  sharding = parallel.state_sharding(mesh)
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), jax.eval_shape(build))


def checkpoint_meta(config: TrainConfig, state: State, phase: Phase,
                    train_seconds: float = 0.0) -> dict:
  """What a checkpoint of `state` records beside its arrays: its stage, the phase it was saved
  in, the training time so far and the whole config (from which its target is rebuilt)."""
  stage = stage_of(state["params"])
  return {"resolution": stage.resolution, "phase": stage.phase, "phase_index": phase.index,
          "train_seconds": train_seconds, "config": config.to_dict()}
