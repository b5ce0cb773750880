"""Orbax checkpoints of a progressive run: the one module that talks to Orbax.

A checkpoint is three items, saved together under the run's position (images seen):

* `state`: the train state (params, optimizer state, EMA, step, RNG), arrays only;
* `meta`: JSON: stage, phase, images seen, the whole TrainConfig, the library version;
* `data`: the data iterator's position (grain's own handler, one file per process).

A parameter tree's shape depends on its stage, so restoring reads `meta` first, then builds
the abstract target (shapes, dtypes, shardings) with `jax.eval_shape`. Nothing is unpickled:
arrays are tensorstore files and the rest is JSON. A save killed midway leaves a
`*.orbax-checkpoint-tmp*` folder that Orbax never treats as a checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

import progae_jax

ITEMS = ("state", "meta", "data")


class CheckpointError(RuntimeError):
  """A checkpoint is missing, empty, corrupt, or contradicts the run that wants it."""


def _rank(metrics: dict) -> float:
  """Best checkpoint: the highest resolution first, then the held-out PSNR there (a 4x4
  reconstruction is easier, so comparing PSNR across stages would keep the wrong one)."""
  return metrics["resolution"] * 1000.0 + metrics["psnr"]


class _IteratorState:
  """Lets grain's per-process checkpoint handler save and restore any iterator's position."""

  def __init__(self, iterator=None):
    self.iterator, self.state = iterator, None

  def get_state(self) -> bytes:
    state = self.iterator.get_state()
    return state if isinstance(state, bytes) else json.dumps(state).encode()

  def set_state(self, state: bytes):
    self.state = state

  def start_prefetch(self):  # Called by grain's handler after set_state.
    pass


def decode_iterator_state(raw: bytes, like):
  """The restored bytes, in the form the iterator `like.get_state()` returns."""
  return raw if isinstance(like.get_state(), bytes) else json.loads(raw)


@dataclasses.dataclass
class Restored:
  state: dict
  meta: dict
  data_state: bytes | None


class Checkpointer:
  """Asynchronous saves every so often and at phase ends; keeps the latest N and the best."""

  def __init__(self, directory: str, *, keep: int = 2, asynchronous: bool = True,
               read_only: bool = False):
    self.directory = os.path.abspath(directory)
    policy = policies.AnyPreservationPolicy([
        policies.LatestN(n=keep),
        policies.BestN(get_metric_fn=_rank, n=1, keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy, enable_async_checkpointing=asynchronous,
        create=not read_only, read_only=read_only)
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler(),
                "data": grain.checkpoint.CheckpointHandler()}
    self._manager = ocp.CheckpointManager(self.directory, item_names=ITEMS,
                                          item_handlers=handlers, options=options)

  def steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def latest(self) -> int | None:
    return self._manager.latest_step()

  def save(self, images_seen: int, state: dict, meta: dict, data_iterator,
           psnr: float | None = None) -> None:
    """Starts an asynchronous save; returns once the arrays are copied off the devices."""
    meta = dict(meta, images_seen=images_seen, version=progae_jax.__version__)
    metrics = None if psnr is None else {"psnr": float(psnr), "resolution": meta["resolution"]}
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta),
        data=grain.checkpoint.CheckpointSave(_IteratorState(data_iterator)))
    self._manager.save(images_seen, args=args, metrics=metrics, force=True)

  def read_meta(self, step: int | None = None) -> dict:
    step = self._resolve(step)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
      return dict(restored["meta"])
    except Exception as e:  # Orbax raises many kinds; the user needs one clear message.
      raise CheckpointError(f"checkpoint {step} in {self.directory} has no readable metadata "
                            f"({type(e).__name__}: {e})") from e

  def restore(self, step: int | None, abstract_state: Any) -> Restored:
    """Restores into `abstract_state` (a pytree of `jax.ShapeDtypeStruct` with shardings)."""
    step = self._resolve(step)
    meta = self.read_meta(step)
    data = _IteratorState()
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state),
          data=grain.checkpoint.CheckpointRestore(data)))
    except Exception as e:
      raise CheckpointError(f"checkpoint {step} in {self.directory} could not be restored "
                            f"({type(e).__name__}: {e})") from e
    return Restored(dict(restored["state"]), meta, data.state)

  def _resolve(self, step: int | None) -> int:
    steps = self.steps()
    if not steps:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    if step is None:
      return max(steps)
    if step not in steps:
      raise CheckpointError(f"no checkpoint {step} in {self.directory}; there are {steps}")
    return step

  def wait(self) -> None:
    """Blocks until every pending asynchronous save is complete."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def config_differences(saved: dict, current: dict) -> list[str]:
  """Fields where the checkpoint's config and the run's disagree on what the weights mean."""
  out = []
  for field in ("image_channels", "channels", "latent_dim", "leaky_slope"):
    a, b = saved["model"].get(field), current["model"].get(field)
    if field == "channels":  # Only resolutions both can reach must agree.
      common = set(a) & set(b)
      a, b = {r: a[r] for r in sorted(common)}, {r: b[r] for r in sorted(common)}
    if a != b:
      out.append(f"model.{field}: checkpoint {a!r}, this run {b!r}")
  if saved.get("dataset") != current.get("dataset"):
    out.append(f"dataset: checkpoint {saved.get('dataset')!r}, this run {current.get('dataset')!r}")
  return out


def locate(path: str, step: int | None = None) -> tuple[str, int | None]:
  """(checkpoint directory, step) for a work directory, its `checkpoints/` folder, or one
  checkpoint's own folder (`.../checkpoints/1920`)."""
  path = os.path.abspath(path)
  if not os.path.exists(path):
    raise CheckpointError(f"{path} does not exist")
  if os.path.isdir(os.path.join(path, "checkpoints")):
    return os.path.join(path, "checkpoints"), step
  base = os.path.basename(path.rstrip("/"))
  if base.isdigit() and os.path.exists(os.path.join(path, "_CHECKPOINT_METADATA")):
    if step is not None and step != int(base):
      raise CheckpointError(f"{path} is checkpoint {base}, not {step}")
    return os.path.dirname(path), int(base)
  return path, step


def restore(path: str, step: int | None = None, *, mesh=None) -> tuple[dict, dict]:
  """Restores a saved train state and its metadata, knowing nothing of its stage in advance.

  `path` is a work directory, its `checkpoints/` folder or one checkpoint's folder; `step`
  (images seen) picks a checkpoint, the latest by default. Returns `(state, meta)`;
  `meta["config"]` rebuilds the TrainConfig with `TrainConfig.from_dict`.
  """
  from progae_jax import parallel, train
  from progae_jax.model import Stage
  from progae_jax.schedule import TrainConfig

  directory, step = locate(path, step)
  manager = Checkpointer(directory, read_only=True, asynchronous=False)
  try:
    meta = manager.read_meta(step)
    try:
      config = TrainConfig.from_dict(meta["config"])
      stage = Stage(int(meta["resolution"]), meta["phase"] == "fade")
    except (KeyError, TypeError, ValueError) as e:
      raise CheckpointError(f"checkpoint metadata in {directory} is not a progae_jax "
                            f"run's ({type(e).__name__}: {e})") from e
    mesh = mesh or parallel.make_mesh()
    optimizer = train.make_optimizer(config.stage(stage.resolution).learning_rate)
    restored = manager.restore(step, train.abstract_state(config, stage, optimizer, mesh))
    return restored.state, restored.meta
  finally:
    manager.close()
