"""Progressive training: the train state, the jitted steps, and the loop through every phase.

    stable 4x4 -> grow -> fade 8x8 -> finish_fade -> stable 8x8 -> grow -> ... -> final stage

The state is a plain dict of arrays (what Orbax saves and `NamedSharding` places):

    {"params": ..., "opt_state": ..., "ema": ... (optional), "step": int32[], "rng": uint32[2]}

The stage and phase are not stored beside it: they are the shape of `params` (`stage_of`).
The run's position is one host integer, the images seen; the phase, alpha and learning rate
all follow from it (schedule.py), and it is saved in every checkpoint's metadata.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import time
from typing import Any, Callable, Iterator

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from progae_jax import parallel
from progae_jax.config import MIN_RESOLUTION, ModelConfig
from progae_jax.growth import finish_fade, grow, grow_opt_state
from progae_jax.model import Stage, apply, init_params, stage_of
from progae_jax.ops import fade_target, to_resolution
from progae_jax.schedule import Phase, TrainConfig, alpha_at, phase_at, phases

State = dict[str, Any]


class NonFiniteLossError(RuntimeError):
  """Training produced a NaN or infinite loss; the message names step, stage and alpha."""


# ---------------------------------------------------------------------------------------------
# State


def make_optimizer(learning_rate: float = 1e-3) -> optax.GradientTransformation:
  """Adam with its learning rate injected into the state, so each stage can set its own
  without recompiling the train step."""
  return optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate)


def set_learning_rate(state: State, learning_rate: float) -> State:
  """The same state with Adam's injected learning rate replaced (same shape: no recompile)."""
  opt_state = state["opt_state"]
  old = opt_state.hyperparams["learning_rate"]
  new = jax.device_put(jnp.asarray(learning_rate, old.dtype), old.sharding)
  hyperparams = dict(opt_state.hyperparams, learning_rate=new)
  return dict(state, opt_state=opt_state._replace(hyperparams=hyperparams))


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


def _grow_state(state: State, *, model: ModelConfig, optimizer, policy: str) -> State:
  stage = stage_of(state["params"])
  if stage.fading:
    change = finish_fade
  else:
    rng = _rng_for(state, stage.resolution * 2)
    change = lambda p: grow(p, model, rng)
  new = dict(state, params=change(state["params"]))
  # The optimizer state follows the parameters. `reset` empties Adam's moments at growth
  # only; `reset_twice` (ProGAN's choice) also when the fade ends and the adapters go.
  reset = policy == "reset_twice" or (policy == "reset" and not stage.fading)
  new["opt_state"] = grow_opt_state(state["opt_state"], optimizer, new["params"],
                                    policy="reset" if reset else "carry")
  if "ema" in state:
    new["ema"] = change(state["ema"])
  return new


def advance_state(state: State, config: TrainConfig, optimizer, mesh) -> State:
  """Grows (stable -> next fade) or finishes the fade (fade -> stable), one step along.

  Runs under `jax.jit` with the mesh's shardings as output, so the grown tree is created on
  the devices, already placed, without a trip through the host.
  """
  fn = functools.partial(_grow_state, model=config.model, optimizer=optimizer,
                         policy=config.optimizer_on_growth)
  return jax.jit(fn, out_shardings=parallel.state_sharding(mesh), donate_argnums=0)(state)


def move_to_phase(state: State, phase: Phase, config: TrainConfig, optimizer, mesh) -> State:
  """Changes the tree until its stage is the phase's, then sets the phase's learning rate."""
  target = Stage(phase.resolution, phase.fading)
  for _ in range(2 * len(config.model.resolutions)):
    stage = stage_of(state["params"])
    if stage == target:
      return set_learning_rate(state, phase.learning_rate)
    if (stage.resolution, not stage.fading) > (target.resolution, not target.fading):
      raise ValueError(f"the state is at {stage}, past the phase {phase.name}")
    state = advance_state(state, config, optimizer, mesh)
  raise AssertionError("unreachable: growth did not reach the phase")


# ---------------------------------------------------------------------------------------------
# Steps


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
  `images` at the final resolution (or at the stage's own, where `*_full` equals the rest)."""
  step = functools.partial(_eval_step, model=config.model,
                           compute_dtype=jnp.dtype(config.compute_dtype))
  rep, data = parallel.replicated(mesh), parallel.data_sharding(mesh)
  return jax.jit(step, in_shardings=(rep, data, rep), out_shardings=(data, data))


def abstract_state(config: TrainConfig, stage: Stage, optimizer, mesh) -> State:
  """Shapes, dtypes and shardings of the state at `stage`, from `jax.eval_shape` (no FLOPs):
  the target a checkpoint of that stage is restored into."""

  def build():
    state = _init_state(config, optimizer)
    while stage_of(state["params"]) != stage:
      state = _grow_state(state, model=config.model, optimizer=optimizer,
                          policy=config.optimizer_on_growth)
    return state

  sharding = parallel.state_sharding(mesh)
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), jax.eval_shape(build))


# ---------------------------------------------------------------------------------------------
# The loop


class _Metrics:
  """JSON lines in the work directory; only process 0 writes."""

  def __init__(self, workdir: str, resume_at: int | None):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.enabled = parallel.is_main_process()
    if self.enabled:
      kept = [r for r in self.read(self.path) if resume_at is not None
              and r["images_seen"] <= resume_at]  # Drop what a crashed run logged past its save.
      with open(self.path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)

  @staticmethod
  def read(path: str) -> list[dict]:
    if not os.path.exists(path):
      return []
    with open(path) as f:
      return [json.loads(line) for line in f if line.strip()]

  def write(self, record: dict) -> None:
    if self.enabled:
      with open(self.path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _metadata(config: TrainConfig, state: State, phase: Phase, clock: "_TrainClock") -> dict:
  stage = stage_of(state["params"])
  return {"resolution": stage.resolution, "phase": stage.phase, "phase_index": phase.index,
          "train_seconds": clock.seconds(), "config": config.to_dict()}


class _TrainClock:
  """Seconds spent training: steps, compiles and growth, not evaluations or checkpoints.

  This is the time axis on which runs with different schedules (a progressive run and one
  trained at the final size only) are compared; it continues across a resume.
  """

  def __init__(self, seconds: float = 0.0):
    self._before, self._since = seconds, time.perf_counter()

  def seconds(self) -> float:
    return self._before + (0.0 if self._since is None else time.perf_counter() - self._since)

  @contextlib.contextmanager
  def paused(self, state: State):
    """Stops the clock once the queued steps on `state` are done, restarts it after."""
    jax.block_until_ready(state)
    self._before, self._since = self.seconds(), None
    try:
      yield
    finally:
      self._since = time.perf_counter()


def _check_finite(records: list[dict], stage: Stage) -> None:
  for r in records:
    if not math.isfinite(r["loss"]):
      raise NonFiniteLossError(
          f"non-finite loss {r['loss']} at step {r['step']} ({r['images_seen']} images seen), "
          f"stage {stage}, alpha {r['alpha']:.4f}; the last checkpoint before it is intact")


@dataclasses.dataclass
class RunResult:
  """What a finished (or stopped) run hands back."""
  images_seen: int
  final_eval: dict | None
  pictures: list[str]
  curves: str | None
  summary: list[dict]
  state: State


def train_and_evaluate(config: TrainConfig, workdir: str, *, restart: bool = False,
                       mesh=None, progress: bool = True, stop_after_images: int | None = None,
                       data_module=None) -> RunResult:
  """Trains through every phase of `config`, resuming from `workdir`'s latest checkpoint.

  `stop_after_images` ends the run early (after a checkpoint), as a preempted job would.
  """
  from progae_jax import checkpoint as ckpt_lib
  from progae_jax import data as data_lib
  from progae_jax import plots
  data_lib = data_module or data_lib

  plan = phases(config)
  mesh = mesh or parallel.make_mesh()
  for p in plan:
    parallel.check_batch_size(p.batch_size, mesh)
  spec = data_lib.dataset_info(config.dataset, data_dir=config.data_dir, **config.dataset_options)
  if spec.channels != config.model.image_channels:
    raise ValueError(f"dataset {config.dataset!r} has {spec.channels} channel(s) but the model "
                     f"expects image_channels={config.model.image_channels}")
  if spec.native_resolution < config.model.max_resolution:
    raise ValueError(f"dataset {config.dataset!r} is {spec.native_resolution}x"
                     f"{spec.native_resolution}, below max_resolution="
                     f"{config.model.max_resolution}")
  os.makedirs(workdir, exist_ok=True)
  main = parallel.is_main_process()
  if main:
    print(f"training on {mesh.devices.size} {jax.devices()[0].platform.upper()} device(s) "
          f"x {jax.process_count()} process(es); each batch is split over them")
  optimizer = make_optimizer(plan[0].learning_rate)
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints)
  if restart and ckpt.steps() and main:
    print(f"--restart: deleting the checkpoints {ckpt.steps()} (images seen) in "
          f"{ckpt.directory} and starting afresh from 0 images; metrics.jsonl starts anew "
          "and the pictures are overwritten as phases end")
  images_seen, data_state, data_phase, restored_seconds = 0, None, None, 0.0
  if ckpt.steps() and not restart:
    meta = ckpt.read_meta()
    diffs = ckpt_lib.config_differences(meta["config"], config.to_dict())
    if diffs:
      raise ckpt_lib.CheckpointError(
          f"the checkpoint in {ckpt.directory} contradicts this run's config:\n  " +
          "\n  ".join(diffs) + "\n(use another --workdir, or --restart to start afresh)")
    stage = Stage(meta["resolution"], meta["phase"] == "fade")
    restored = ckpt.restore(None, abstract_state(config, stage, optimizer, mesh))
    state, images_seen = restored.state, restored.meta["images_seen"]
    data_state, data_phase = restored.data_state, restored.meta["phase_index"]
    restored_seconds = restored.meta.get("train_seconds", 0.0)
    if main:
      print(f"resuming {workdir} at {images_seen:,} images ({stage})")
  else:
    if restart:
      for step in ckpt.steps():  # A fresh run must not resume from the old one's checkpoints.
        ckpt._manager.delete(step)
    state = init_state(config, optimizer, mesh)
  metrics_log = _Metrics(workdir, images_seen if images_seen else None)
  train_step = make_train_step(config, optimizer, mesh)
  eval_step = make_eval_step(config, mesh)
  held_out_full = data_lib.eval_images(config.dataset, resolution=config.model.max_resolution,
                                       count=config.eval_images, data_dir=config.data_dir,
                                       **config.dataset_options)
  clock = _TrainClock(restored_seconds)
  total = plan[-1].end
  bar = _progress_bar(total, images_seen, enabled=main and progress)
  pictures, summary, last_eval = [], [], None
  try:
    while (phase := phase_at(plan, images_seen)) is not None:
      state = move_to_phase(state, phase, config, optimizer, mesh)
      stage = stage_of(state["params"])
      iterator = data_lib.batches(
          config.dataset, split="train", resolution=phase.resolution,
          batch_size=phase.batch_size, seed=config.seed * 1009 + phase.index,
          data_dir=config.data_dir, shard_index=jax.process_index(),
          shard_count=jax.process_count(), **config.dataset_options)
      if data_state is not None and data_phase == phase.index and images_seen > phase.start:
        iterator.set_state(ckpt_lib.decode_iterator_state(data_state, iterator))
      data_state = None
      held_out = to_resolution(held_out_full, phase.resolution)  # for the pictures

      def evaluate(alpha: float) -> tuple[dict, np.ndarray]:
        with clock.paused(state):
          result, recon = _evaluate(eval_step, state, held_out_full, alpha, mesh)
        result.update(kind="eval", images_seen=images_seen, resolution=phase.resolution,
                      phase="fade" if phase.fading else "stable", alpha=alpha,
                      train_seconds=clock.seconds())
        metrics_log.write(result)
        return result, recon

      pending, phase_t0, window_t0, window_images = [], time.perf_counter(), time.perf_counter(), 0
      last_train = None
      while images_seen < phase.end:
        alpha = alpha_at(phase, images_seen, config.alpha_ramp)
        batch = parallel.global_batch(next(iterator), mesh)
        state, metrics = train_step(state, batch, np.float32(alpha))
        pending.append((images_seen, alpha, metrics))
        before, images_seen = images_seen, images_seen + phase.batch_size
        window_images += phase.batch_size
        bar.update(phase.batch_size)
        at_end = images_seen >= phase.end
        crossed = lambda every: images_seen // every > before // every
        stopping = stop_after_images is not None and images_seen >= stop_after_images
        if len(pending) >= config.log_every_steps or at_end or stopping or crossed(
            config.eval_every_images) or crossed(config.checkpoint_every_images):
          records = _flush(pending, state, phase)
          pending = []
          _check_finite(records, stage)
          rate = window_images / max(time.perf_counter() - window_t0, 1e-9)
          window_t0, window_images = time.perf_counter(), 0
          last_train = records[-1]
          for r in records[:-1]:
            metrics_log.write(r)
          records[-1]["train_seconds"] = clock.seconds()
          metrics_log.write(dict(records[-1], images_per_s=rate))
          bar.set_postfix_str(f"{phase.name} a={alpha:.2f} loss={last_train['loss']:.4f} "
                              f"psnr={last_train['psnr']:.1f}dB")
        if not at_end and crossed(config.eval_every_images):
          last_eval, _ = evaluate(alpha)
        if not at_end and (crossed(config.checkpoint_every_images) or stopping):
          with clock.paused(state):
            ckpt.save(images_seen, state, _metadata(config, state, phase, clock), iterator)
        if stopping and not at_end:
          bar.close()
          ckpt.close()
          if main:
            print(f"stopped at {images_seen:,} images, checkpoint saved in {ckpt.directory}; "
                  "run the same command again to resume")
          return RunResult(images_seen, last_eval, pictures, None, summary, state)

      # End of the phase: evaluate at its final alpha, save pictures, checkpoint.
      last_eval, recon = evaluate(1.0)
      if main:
        pictures.append(_save_grid(plots, workdir, held_out, recon, phase))
      with clock.paused(state):
        ckpt.save(images_seen, state, _metadata(config, state, phase, clock), iterator,
                  psnr=last_eval["psnr"])
      summary.append({"phase": phase.name, "images": phase.end - phase.start,
                      "train_loss": last_train["loss"] if last_train else float("nan"),
                      "eval_psnr": last_eval["psnr"], "eval_ssim": last_eval["ssim"],
                      "seconds": time.perf_counter() - phase_t0})
      if stop_after_images is not None and images_seen >= stop_after_images:
        break
  finally:
    bar.close()
    ckpt.close()  # Waits for pending saves: nothing half-written is left by a clean exit.

  curves = None
  if main:
    records = _Metrics.read(metrics_log.path)
    boundaries = [(p.start, p.name) for p in plan if p.start > 0]
    curves = plots.save_curves(os.path.join(workdir, "curves.png"),
                               [r for r in records if r["kind"] == "train"],
                               [r for r in records if r["kind"] == "eval"], boundaries)
    if progress:
      _print_summary(summary, last_eval, pictures, curves)
  return RunResult(images_seen, last_eval, pictures, curves, summary, state)


def _progress_bar(total: int, initial: int, enabled: bool):
  from tqdm.auto import tqdm
  return tqdm(total=total, initial=initial, unit="img", unit_scale=True, disable=not enabled,
              dynamic_ncols=True, smoothing=0.05,
              mininterval=1.0)


def _flush(pending, state, phase) -> list[dict]:
  """Brings a window of step metrics to the host (one sync per window, not per step)."""
  host = jax.device_get([m for _, _, m in pending])
  step = int(jax.device_get(state["step"]))
  first = step - len(pending) + 1
  return [{"kind": "train", "step": first + i, "images_seen": seen + phase.batch_size,
           "resolution": phase.resolution, "phase": "fade" if phase.fading else "stable",
           "alpha": alpha, **{k: float(v) for k, v in m.items()}}
          for i, ((seen, alpha, _), m) in enumerate(zip(pending, host))]


def _eval_params(state: State):
  return state["ema"] if "ema" in state else state["params"]


def _local_rows(images: np.ndarray) -> np.ndarray:
  """This process's share of a batch that every process holds whole."""
  n, i = jax.process_count(), jax.process_index()
  per = len(images) // n
  return images[i * per:(i + 1) * per]


def _gather(tree, mesh):
  """Sharded arrays, whole on every process's host (a collective: every process calls it)."""
  return jax.device_get(jax.jit(lambda t: t, out_shardings=parallel.replicated(mesh))(tree))


def _evaluate(eval_step, state, images: np.ndarray, alpha: float, mesh):
  """Held-out metrics (means over the images) and the reconstructions of those images."""
  usable = len(images) - len(images) % (mesh.devices.size * jax.process_count())
  batch = parallel.global_batch(_local_rows(images[:usable]), mesh)
  per_image, recon = _gather(eval_step(_eval_params(state), batch, np.float32(alpha)), mesh)
  return {k: float(np.mean(v)) for k, v in per_image.items()}, recon


def _save_grid(plots, workdir, images, recon, phase, count: int = 16) -> str:
  """The first held-out images above their reconstructions, from the phase's last evaluation."""
  count = min(count, len(recon))
  name = f"recon_{phase.index:02d}_{phase.resolution}x{phase.resolution}_" \
         f"{'fade' if phase.fading else 'stable'}.png"
  return plots.save_reconstructions(os.path.join(workdir, "pictures", name), images[:count],
                                    recon[:count], title=f"{phase.name}, held-out images")


def _print_summary(summary, last_eval, pictures, curves) -> None:
  from rich.console import Console
  from rich.table import Table
  table = Table(title="progae_jax run")
  for col in ("phase", "images", "train loss", "held-out PSNR", "held-out SSIM", "seconds"):
    table.add_column(col, justify="right")
  for s in summary:
    table.add_row(s["phase"], f"{s['images']:,}", f"{s['train_loss']:.5f}",
                  f"{s['eval_psnr']:.2f} dB", f"{s['eval_ssim']:.3f}", f"{s['seconds']:.1f}")
  console = Console()
  console.print(table)
  if last_eval:
    console.print(f"held-out PSNR {last_eval['psnr']:.2f} dB, SSIM {last_eval['ssim']:.3f} "
                  f"at {last_eval['resolution']}x{last_eval['resolution']}")
  if pictures:
    console.print(f"pictures: {os.path.dirname(pictures[-1])}/ (last: {pictures[-1]})")
  if curves:
    console.print(f"curves: {curves}")
