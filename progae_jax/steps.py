"""The jitted steps of a run, and their programs compiled ahead of need.

    train_step(state, batch, alpha) -> (state', metrics)    state donated; batch split on "data"
    eval_step(params, images, alpha) -> (per-image metrics, reconstructions)

A run needs one train and one eval program per phase (the stage is the shape of the state,
and alpha is traced, so a whole fade is one program), and one growth program per step along
the road of stages (train_state.py). A phase on an accelerator can train for
less time than its program takes to compile, so `Programs` compiles every phase's programs
ahead, in background threads, as soon as the run knows its plan:

    main thread:    compile 4x4 | train 4x4 stable | grow, train 8x8 fade | train 8x8 stable
    compile threads:            | grow to 8x8, 8x8 fade, 8x8 stable, 16x16 ... (ready in time)

`jit(f).lower(abstract arguments).compile()` builds the executable a first call would build
(the tests compare the trained bits); the loop calls that executable itself, since a plain
call of the jitted function would compile once more. `programs_for` keeps a process's
programs by everything they are traced from, so the next seed of an experiment, or a notebook
cell run again, compiles nothing.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import threading
from collections.abc import Callable

import dm_pix
import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from progae_jax import parallel
from progae_jax.config import ModelConfig
from progae_jax.model import Stage, apply, stage_of
from progae_jax.ops import fade_target, to_resolution
from progae_jax.optim import optimizer_fields
from progae_jax.schedule import Phase, TrainConfig
from progae_jax.train_state import (State, abstract_state, make_advance_state, stages_between)


def psnr_from_mse(mse):
  """Peak signal-to-noise ratio in dB of images in [0, 1]."""
  return -10.0 * jnp.log10(jnp.maximum(mse, 1e-10))


def _squared_error(params, images, alpha, *, model: ModelConfig, compute_dtype):
  """Sum over `images` of the squared error against the faded target (float32)."""
  recon, _ = apply(model, params, images, alpha, dtype=compute_dtype)
  return jnp.sum((recon.astype(jnp.float32) - fade_target(images, alpha)) ** 2)


def _gradients_of_my_rows(params, rows, alpha, *, microbatches: int, **model_kw):
  """Runs on each device with its rows of the batch (inside `shard_map`): the summed squared
  error and its gradient, then `psum` adds them over the devices.

  With `microbatches` > 1 the rows go through the model in that many chunks, one after the
  other, and their gradients are added: the same step (up to rounding) with a fraction of
  the activations in memory at once.
  """
  error, grads = 0.0, None
  for chunk in jnp.split(rows, microbatches):
    e, g = jax.value_and_grad(_squared_error)(params, chunk, alpha, **model_kw)
    error, grads = error + e, g if grads is None else jax.tree.map(jnp.add, grads, g)
  return jax.lax.psum((error, grads), parallel.DATA_AXIS)


def _train_step(state: State, batch: jax.Array, alpha: jax.Array, *, model: ModelConfig,
                optimizer, ema_decay: float | None, compute_dtype, mesh,
                microbatches: int = 1) -> tuple[State, dict]:
  """One optimisation step on the mean squared error against `fade_target(batch, alpha)`.

  Data parallelism is written out: every device differentiates the loss of its own rows and
  one `psum` adds the gradients; the update that follows is the same on every device.
  """
  grads_fn = functools.partial(_gradients_of_my_rows, microbatches=microbatches, model=model,
                               compute_dtype=compute_dtype)
  error, grads = jax.shard_map(
      grads_fn, mesh=mesh, in_specs=(P(), P(parallel.DATA_AXIS), P()), out_specs=(P(), P()),
      check_vma=False)(state["params"], batch, alpha)
  loss = error / batch.size
  grads = jax.tree.map(lambda g: g / batch.size, grads)
  updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  new = dict(state, params=params, opt_state=opt_state, step=state["step"] + 1)
  if ema_decay is not None:
    # Warm-up: early on the average follows the weights closely, so a short run's evaluation
    # is not dominated by the random initialisation.
    step = state["step"].astype(jnp.float32)
    decay = jnp.minimum(ema_decay, (1.0 + step) / (10.0 + step))
    new["ema"] = optax.incremental_update(params, state["ema"], 1.0 - decay)
  metrics = {"loss": loss, "psnr": psnr_from_mse(loss), "grad_norm": optax.tree.norm(grads)}
  return new, metrics


def make_train_step(config: TrainConfig, optimizer, mesh, microbatches: int = 1) -> Callable:
  """`train_step(state, batch, alpha) -> (state, metrics)`, jitted once, state donated.

  The shardings are pytree prefixes (state replicated, batch split over "data"), so the one
  jitted function serves every stage; it compiles once per (stage, phase), as the shapes of
  the state change only there. `alpha` is a traced float32: a whole fade is one executable.
  """
  step = functools.partial(_train_step, model=config.model, optimizer=optimizer,
                           ema_decay=config.ema_decay, mesh=mesh, microbatches=microbatches,
                           compute_dtype=jnp.dtype(config.compute_dtype))
  state_sh, rep = parallel.state_sharding(mesh), parallel.replicated(mesh)
  return jax.jit(step, in_shardings=(state_sh, parallel.data_sharding(mesh), rep),
                 out_shardings=(state_sh, rep), donate_argnums=0)


def ssim_filter_size(resolution: int) -> int:
  """dm-pix's Gaussian window, shrunk (odd, below the image size) for the small stages."""
  return min(11, resolution - 1 if resolution % 2 == 0 else resolution)


def _eval_step(params, full, alpha, *, model: ModelConfig, compute_dtype):
  """Per-image metrics of the reconstructions of `full`, images at the final resolution.

  The model sees `full` shrunk to its stage. MSE, PSNR and SSIM are measured at the stage,
  against the faded target (what the stage is trained to output). `psnr_full` and
  `ssim_full` enlarge the reconstruction back to the final resolution (nearest neighbour)
  and compare it with `full` itself: how well the model reconstructs final-size images right
  now, which is comparable across stages and with a model trained at the final size only.
  """
  images = to_resolution(full, stage_of(params).resolution)
  target = fade_target(images, alpha)
  recon = jnp.clip(apply(model, params, images, alpha, dtype=compute_dtype)[0], 0.0, 1.0)
  mse = jnp.mean((recon - target) ** 2, axis=(1, 2, 3))
  ssim = dm_pix.ssim(recon, target, filter_size=ssim_filter_size(images.shape[1]))
  enlarged = to_resolution(recon, full.shape[1])
  mse_full = jnp.mean((enlarged - full) ** 2, axis=(1, 2, 3))
  ssim_full = dm_pix.ssim(enlarged, full, filter_size=ssim_filter_size(full.shape[1]))
  return {"mse": mse, "psnr": psnr_from_mse(mse), "ssim": ssim,
          "psnr_full": psnr_from_mse(mse_full), "ssim_full": ssim_full}, recon


def make_eval_step(config: TrainConfig, mesh) -> Callable:
  """`eval_step(params, images, alpha) -> (per-image metrics, reconstructions)`, jitted;
  `images` at the final resolution (or at the stage's own, where `*_full` equals the rest).
  The images are split over the devices; the outputs are whole on every device (and so on
  every process's host)."""
  step = functools.partial(_eval_step, model=config.model,
                           compute_dtype=jnp.dtype(config.compute_dtype))
  rep, data = parallel.replicated(mesh), parallel.data_sharding(mesh)
  return jax.jit(step, in_shardings=(rep, data, rep), out_shardings=(rep, rep))




# ---------------------------------------------------------------------------------------------
# Programs compiled ahead


def compile_threads() -> int:
  """Threads that compile ahead: a quarter of the cores, at least 1 and at most 4 (each XLA
  compile is itself partly parallel; the training step needs cores too)."""
  return max(1, min(4, (os.cpu_count() or 1) // 4))


class Programs:
  """A run's train and eval programs, one per phase, compiled in background threads.

  `compile_ahead` queues every phase's programs in the plan's order; `train_step(phase)` and
  `eval_step(stage, shape)` hand out a program, waiting for its compile if it is not done
  (or compiling it now if it was never queued). One compile per program, whoever asks first.
  """

  def __init__(self, config: TrainConfig, optimizer, mesh, threads: int | None = None):
    self._config, self._optimizer, self._mesh = config, optimizer, mesh
    self.jitted_train = make_train_step(config, optimizer, mesh)
    self.jitted_eval = make_eval_step(config, mesh)
    self.jitted_advance = make_advance_state(config, optimizer, mesh)
    self._threads = threads or compile_threads()
    self._pool: concurrent.futures.ThreadPoolExecutor | None = None
    self._programs: dict[tuple, concurrent.futures.Future] = {}
    self._lock = threading.Lock()

  def compile_ahead(self, plan: list[Phase], eval_shape: tuple[int, ...] | None,
                    start: Stage | None = None) -> None:
    """Starts compiling the programs of every phase in `plan` in the order they are needed:
    the growth that leads to a phase (from `start`, the state's stage, for the first), its
    train step, its eval step."""
    stage = start
    for phase in plan:
      target = Stage(phase.resolution, phase.fading)
      for along in stages_between(stage, target) if stage is not None else ():
        self._program(*self._advance_args(along))
      self._program(*self._train_args(phase))
      if eval_shape is not None:
        self._program(*self._eval_args(target, eval_shape))
      stage = target

  def train_step(self, phase: Phase) -> Callable:
    """The phase's compiled `train_step(state, batch, alpha)`."""
    return self._program(*self._train_args(phase)).result()

  def eval_step(self, stage: Stage, shape: tuple[int, ...]) -> Callable:
    """The stage's compiled `eval_step(params, images, alpha)` for images of `shape`."""
    return self._program(*self._eval_args(stage, shape)).result()

  def advance_step(self, stage: Stage) -> Callable:
    """The compiled `advance(state)` of a state at `stage`: one step along the road."""
    return self._program(*self._advance_args(stage)).result()

  def close(self) -> None:
    """Drops the compiles not started yet (a stopped run); those under way finish."""
    if self._pool is not None:
      self._pool.shutdown(wait=False, cancel_futures=True)
      self._pool = None
      with self._lock:
        self._programs = {k: f for k, f in self._programs.items() if not f.cancelled()}

  def _train_args(self, phase: Phase):
    stage = Stage(phase.resolution, phase.fading)
    r, c = phase.resolution, self._config.model.image_channels

    def args():
      batch = jax.ShapeDtypeStruct((phase.batch_size, r, r, c), jnp.float32,
                                   sharding=parallel.data_sharding(self._mesh))
      return self._state(stage), batch
    return ("train", stage, phase.batch_size), self.jitted_train, args

  def _eval_args(self, stage: Stage, shape: tuple[int, ...]):
    def args():
      state = self._state(stage)
      images = jax.ShapeDtypeStruct(tuple(shape), jnp.float32,
                                    sharding=parallel.data_sharding(self._mesh))
      return state["ema"] if "ema" in state else state["params"], images
    return ("eval", stage, tuple(shape)), self.jitted_eval, args

  def _advance_args(self, stage: Stage):
    return ("advance", stage), self.jitted_advance, lambda: (self._state(stage),)

  def _state(self, stage: Stage) -> State:
    return abstract_state(self._config, stage, self._optimizer, self._mesh)

  def _program(self, key: tuple, jitted, args: Callable[[], tuple]
               ) -> concurrent.futures.Future:
    with self._lock:
      if key not in self._programs:
        if self._pool is None:
          self._pool = concurrent.futures.ThreadPoolExecutor(
              self._threads, thread_name_prefix="progae-compile")
        self._programs[key] = self._pool.submit(_compile, jitted, args)
      return self._programs[key]


def _compile(jitted, args: Callable[[], tuple]) -> Callable:
  """`jitted` compiled for the abstract arguments `args()` builds (in the compiling thread; a
  train or eval step also takes a float32 alpha); a stand-in without `lower` (a test's
  wrapper) is returned as it is."""
  if not hasattr(jitted, "lower"):
    return jitted
  args = args()
  if len(args) == 2:
    args = (*args, jax.ShapeDtypeStruct((), jnp.float32))
  return jitted.lower(*args).compile()


# This process's programs, by everything they are traced from.
_PROGRAMS: dict[tuple, Programs] = {}


def _growth_fields(config: TrainConfig) -> tuple:
  """What the growth and widening programs are traced from besides the model: two runs that
  differ here grow into different states."""
  widen = tuple((at, tuple(sorted(w.items()))) for at, w in config.widen.items())
  return (config.optimizer_on_growth, widen, config.widen_noise, config.optimizer_on_widening)


def programs_for(config: TrainConfig, optimizer, mesh) -> Programs:
  """The run's programs, made once per process for each model, kind of optimizer (its learning
  rate is in the state, not in the step), EMA, dtype, mesh and way of growing (the policy at
  growth, the widenings).

  A second run that shares these (the next seed or variant of an experiment, a notebook cell
  run again) reuses the first run's executables rather than compiling every stage again. The
  builders are part of the key, so a test that wraps one gets its own programs.
  """
  key = (make_train_step, make_eval_step, config.model, config.ema_decay,
         config.compute_dtype, tuple(sorted(optimizer_fields(config).items())), mesh,
         _growth_fields(config))
  if key not in _PROGRAMS:
    if len(_PROGRAMS) >= 8:  # A sweep over many models keeps only the latest programs alive.
      _PROGRAMS.pop(next(iter(_PROGRAMS))).close()
    _PROGRAMS[key] = Programs(config, optimizer, mesh)
  return _PROGRAMS[key]
