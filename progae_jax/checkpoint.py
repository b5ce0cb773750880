"""Orbax checkpoints of a progressive run: the one module that talks to Orbax.

A checkpoint is three items, saved together under the run's position (images seen):

* `state`: the train state (params, optimizer state, EMA, step, RNG), arrays only;
* `meta`: JSON: stage, phase, alpha, images seen, the whole TrainConfig, the library version;
* `data`: the data iterator's position (grain's own handler, one JSON file per process).

A parameter tree's shape depends on its stage, so restoring reads `meta` first, then builds
the abstract target (shapes, dtypes, shardings) with `jax.eval_shape`. Nothing is unpickled:
arrays are tensorstore files and the rest is JSON. A save killed midway leaves a
`<step>.orbax-checkpoint-tmp` folder that Orbax never treats as a checkpoint, so the last
complete checkpoint is the one a new run resumes from.

Every failure to read a checkpoint is a `CheckpointError` whose message says what is wrong
and where, never an exception from deep inside Orbax or tensorstore.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import glob
import json
import logging
import os
import zlib
from typing import Any

import grain
import jax
import numpy as np
from etils import epath
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from progae_jax import optim, parallel, train_state
from progae_jax.model import Stage
from progae_jax.schedule import TrainConfig, alpha_at, phases
from progae_jax.version import __version__

ITEMS = ("state", "meta", "data")
WEIGHTS = ("params", "ema")  # The parts of the train state that a trained model is.
_META_KEYS = ("images_seen", "resolution", "phase", "config")  # In every checkpoint's meta.
_TMP_SUFFIX = ".orbax-checkpoint-tmp"
# Config fields added since the first release (top level, and in `model`), with the value that
# a checkpoint whose config lacks them was trained with.
_BEFORE_ADDED_FIELDS = {"bias_correction": "shared"}
_BEFORE_ADDED_MODEL_FIELDS = {"equalized_lr": False}


class CheckpointError(RuntimeError):
  """A checkpoint is missing, empty, corrupt, or contradicts the run that wants it."""


def _cause(e: BaseException) -> str:
  """One line about an underlying error (its root cause: tensorstore names the file), for a
  message that replaces its traceback."""
  seen = {id(e)}
  while e.__cause__ is not None and id(e.__cause__) not in seen:
    e = e.__cause__
    seen.add(id(e))
  text = str(e).strip().splitlines()
  line = text[0].split(" See full TensorStore details")[0] if text else ""
  return f"{type(e).__name__}: {line[:300]}" if line else type(e).__name__


def _disk_full(e: BaseException) -> bool:
  """Whether an error from Orbax or tensorstore (or its causes) is ENOSPC."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if getattr(e, "errno", None) == errno.ENOSPC or "No space left on device" in str(e):
      return True
    e = e.__cause__ or e.__context__
  return False


class _DiskFullLogFilter(logging.Filter):
  """Drops Orbax's own logs of a save that failed because the disk is full: its save threads
  log the error with a traceback, several times over, before `wait()` raises it; the run
  reports it once, in one line."""

  def filter(self, record):
    if f"{os.sep}orbax{os.sep}" not in record.pathname or record.levelno < logging.ERROR:
      return True
    exc = record.exc_info[1] if record.exc_info else None
    return not (_disk_full(exc) if exc else "No space left on device" in record.getMessage())



class _AwaitingEventLoop(asyncio.SelectorEventLoop):
  """An event loop that, when closed, first lets every task still on it run to its end.

  Orbax runs a restore's reads as tasks on a fresh loop and closes that loop as soon as one
  read fails. The other reads are then still in flight (in tensorstore's threads): they
  finished after the error was raised, on a closed loop, and reported their own failures as
  "Future exception was never retrieved", "Event loop is closed" or "coroutine ... was never
  awaited", pages printed after the one-line error, or not, depending on timing. Here every
  pending read is awaited and its outcome collected before the loop goes away, so nothing is
  left running when the restore's error is raised.
  """

  def close(self):
    if not self.is_closed() and not self.is_running():
      while pending := asyncio.all_tasks(self):
        self.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
      self.run_until_complete(self.shutdown_default_executor())
    super().close()


class _AwaitingPolicy(asyncio.DefaultEventLoopPolicy):

  def new_event_loop(self):
    return _AwaitingEventLoop()


@contextlib.contextmanager
def errors_in_one_line():
  """For a program that owns its process (`progae`'s `cli.main`), for the block's duration:
  Orbax's logs of a save that failed on a full disk are dropped (the program reports it in
  one line), and Orbax's event loops await all their reads before closing, so a restore
  whose arrays fail to decode leaves nothing to print after its error.

  Both are process-wide (the `absl` logger's filters, asyncio's event-loop policy), so the
  library's own calls never do this: `restore` checks the files before Orbax reads them
  (`_check_array_files`), which covers missing, truncated and altered files and arrays of
  the wrong shape; only a chunk that is present but does not decompress reaches Orbax.
  """
  absl_logger, log_filter = logging.getLogger("absl"), _DiskFullLogFilter()
  previous = asyncio.get_event_loop_policy()
  absl_logger.addFilter(log_filter)
  asyncio.set_event_loop_policy(_AwaitingPolicy())
  try:
    yield
  finally:
    asyncio.set_event_loop_policy(previous)
    absl_logger.removeFilter(log_filter)


def _rank(metrics: dict) -> float:
  """Best checkpoint: the highest resolution first, then the held-out PSNR there (a 4x4
  reconstruction is easier, so comparing PSNR across stages would keep the wrong one)."""
  return metrics["resolution"] * 1000.0 + metrics["psnr"]


def _iterator_state_bytes(iterator) -> bytes:
  state = iterator.get_state()
  return state if isinstance(state, bytes) else json.dumps(state).encode()


class _IteratorState:
  """What grain's checkpoint handler saves and restores: an iterator's position as bytes.

  The position is read when `Checkpointer.save` is called, on the training thread, so the
  iterator may move on at once while the checkpoint is written in the background.
  """

  def __init__(self, state: bytes | None = None):
    self.state = state

  def get_state(self) -> bytes:
    return self.state

  def set_state(self, state: bytes):
    self.state = state

  def start_prefetch(self):  # Called by grain's handler after set_state.
    pass


def decode_iterator_state(raw: bytes, like):
  """The restored bytes, in the form the iterator `like.get_state()` returns."""
  return raw if isinstance(like.get_state(), bytes) else json.loads(raw)


def _position(meta: dict, images_seen: int) -> dict:
  """Alpha of the next step and the phase's span, from the run's config in `meta`."""
  if "config" not in meta or "phase_index" not in meta or "alpha" in meta:
    return {}
  config = TrainConfig.from_dict(meta["config"])
  phase = phases(config)[meta["phase_index"]]
  return {"alpha": alpha_at(phase, images_seen, config.alpha_ramp),
          "phase_start": phase.start, "phase_end": phase.end}


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
    self._saving: int | None = None  # The step of the latest save started.
    self._failed: str | None = None  # Why a save failed, once reported.
    if os.path.exists(self.directory) and not os.path.isdir(self.directory):
      raise CheckpointError(f"{self.directory} is a file, not a checkpoint directory")
    policy = policies.AnyPreservationPolicy([
        policies.LatestN(n=keep),
        policies.BestN(get_metric_fn=_rank, n=1, keep_checkpoints_without_metrics=False),
    ])
    # A reader opens Orbax's manager writable but never saves or deletes (`_writable`):
    # Orbax's own read_only logs a warning on every open, and silencing it would change the
    # process's logging.
    self._read_only = read_only
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy, enable_async_checkpointing=asynchronous,
        create=not read_only, save_interval_steps=0 if read_only else 1,
        # Saves that a killed process left half-written are removed when a run starts.
        cleanup_tmp_directories=not read_only)
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler(),
                "data": grain.checkpoint.CheckpointHandler()}
    try:
      self._manager = ocp.CheckpointManager(self.directory, item_names=ITEMS,
                                            item_handlers=handlers, options=options)
    except Exception as e:  # noqa: BLE001 - Orbax raises many kinds.
      raise CheckpointError(f"cannot open the checkpoints in {self.directory} "
                            f"({_cause(e)})") from None

  def steps(self) -> list[int]:
    """The complete checkpoints, by images seen (interrupted saves are never listed)."""
    return sorted(self._manager.all_steps())

  def _writable(self) -> None:
    if self._read_only:
      raise CheckpointError(f"the checkpoints in {self.directory} were opened read-only")

  def delete_all(self) -> None:
    """Deletes every checkpoint (a run started afresh must not resume from an old one's)."""
    self._writable()
    for step in self.steps():
      self._manager.delete(step)

  def save(self, images_seen: int, state: dict, meta: dict, data_iterator=None,
           psnr: float | None = None) -> None:
    """Starts an asynchronous save; returns once the arrays are copied off the devices.

    `meta` gets the images seen, the library version, the alpha of the next step (when it
    holds the run's config and phase index), the held-out PSNR, if given, and the CRC-32 of
    every array (verified on restore). `psnr` also ranks the checkpoint for keeping the best.
    """
    self._writable()
    meta = dict(meta, images_seen=images_seen, version=__version__,
                **_position(meta, images_seen))
    metrics = None
    if psnr is not None:
      meta["metrics"] = {"psnr": float(psnr)}
      metrics = {"psnr": float(psnr), "resolution": meta["resolution"]}
    meta["data_iterator"] = data_iterator is not None
    meta["checksums"] = checksums(state)
    items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(
          _IteratorState(_iterator_state_bytes(data_iterator)))
    self._written(lambda: self._manager.save(images_seen, args=ocp.args.Composite(**items),
                                             metrics=metrics, force=True))
    self._saving = images_seen

  def read_meta(self, step: int | None = None) -> dict:
    step = self._resolve(step)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
      meta = restored["meta"]
    except Exception as e:  # noqa: BLE001 - Orbax raises many kinds; one clear message.
      raise CheckpointError(f"checkpoint {step} in {self.directory} has no readable metadata "
                            f"({_cause(e)}); it is damaged or not a progae_jax checkpoint"
                            ) from None
    if not isinstance(meta, dict):
      raise CheckpointError(f"checkpoint {step} in {self.directory}: its metadata is "
                            f"{type(meta).__name__}, not a JSON object")
    missing = [k for k in _META_KEYS if k not in meta]
    if missing:
      raise CheckpointError(f"checkpoint {step} in {self.directory} is not a progae_jax "
                            f"checkpoint: its metadata lacks {missing}")
    return dict(meta)

  def restore(self, step: int | None, abstract_state: Any, *,
              with_data: bool = True) -> Restored:
    """Restores into `abstract_state` (a pytree of `jax.ShapeDtypeStruct` with shardings).

    `with_data=False` skips the data position: it is saved per process, so only a run with
    the same number of processes can use it, while the state restores on any topology.
    """
    step = self._resolve(step)
    meta = self.read_meta(step)
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    data = _IteratorState()
    where = f"checkpoint {step} in {self.directory}"
    if not with_data:
      pass
    elif (epath.Path(self.directory) / str(step) / "data").exists():
      items["data"] = grain.checkpoint.CheckpointRestore(data)
    elif meta.get("data_iterator"):
      raise CheckpointError(f"{where} has lost its data iterator's position (no `data` item): "
                            "it is damaged, and resuming from it would not be exact")
    _check_array_files(os.path.join(self.directory, str(step), "state"), abstract_state, where)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
      state = restored["state"]
    except Exception as e:  # noqa: BLE001
      raise CheckpointError(f"{where} could not be restored ({_cause(e)}); it is damaged, or "
                            "its arrays do not match its metadata") from None
    _check_restored(state, abstract_state, where)
    _verify_checksums(state, meta, where)
    if data.state is not None:
      try:
        json.loads(data.state)
      except ValueError as e:
        raise CheckpointError(f"{where}: its data iterator's position is not JSON "
                              f"({_cause(e)}); it is damaged") from None
    return Restored(dict(state), meta, data.state)

  def restore_any(self, step: int | None, mesh, *, with_data: bool = False) -> Restored:
    """Restores a checkpoint of any stage: the target is built from its own metadata."""
    step = self._resolve(step)
    meta = self.read_meta(step)
    return self.restore(step, self._abstract_state(step, meta, mesh), with_data=with_data)

  def _abstract_state(self, step: int, meta: dict, mesh):
    """The target of checkpoint `step`, built from its metadata `meta`."""
    try:
      config = saved_config(meta)
      stage = Stage(int(meta["resolution"]), meta["phase"] == "fade")
      optimizer = optim.optimizer_for(config)
      return train_state.abstract_state(config, stage, optimizer, mesh)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
      raise CheckpointError(
          f"the metadata of checkpoint {step} in {self.directory} does not "
          f"describe a progae_jax {__version__} run (written by version "
          f"{meta.get('version', 'unknown')}; {_cause(e)})") from None

  def restore_weights(self, step: int | None, mesh) -> Restored:
    """Only the weights of checkpoint `step` (`params`, and `ema` when the run kept one) and
    its metadata: the optimizer state and the data position are never read."""
    step = self._resolve(step)
    meta = self.read_meta(step)
    abstract = self._abstract_state(step, meta, mesh)
    target = {k: abstract[k] for k in WEIGHTS if k in abstract}
    where = f"checkpoint {step} in {self.directory}"
    reader = ocp.PyTreeCheckpointer()
    try:
      state = reader.restore(
          os.path.join(self.directory, str(step), "state"),
          args=ocp.args.PyTreeRestore(
              item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
              partial_restore=True))
    except Exception as e:  # noqa: BLE001
      raise CheckpointError(f"{where} could not be restored ({_cause(e)}); it is damaged, or "
                            "its arrays do not match its metadata") from None
    finally:
      reader.close()
    _check_restored(state, target, where)
    _verify_checksums(state, meta, where, only_these=True)
    return Restored(dict(state), meta, None)

  def best_step(self) -> int:
    """The checkpoint ranked best (the highest resolution, then the held-out PSNR there): the
    one the run keeps besides the latest."""
    ranked = []
    for step in self.steps():
      meta = self.read_meta(step)
      if isinstance(meta.get("metrics"), dict) and "psnr" in meta["metrics"]:
        ranked.append((_rank({"resolution": meta["resolution"], **meta["metrics"]}), step))
    if not ranked:
      raise CheckpointError(f"no checkpoint in {self.directory} has a held-out evaluation to "
                            f"rank it by (checkpoints: {self.steps()})")
    return max(ranked)[1]

  def intact(self, mesh, *, below: int) -> list[int]:
    """The checkpoints before `below` that restore completely, their checksums verified."""
    good = []
    for step in self.steps():
      if step < below:
        try:
          self.restore_any(step, mesh, with_data=True)
          good.append(step)
        except CheckpointError:
          pass
    return good

  def delete_after(self, step: int) -> list[int]:
    """Deletes the checkpoints after `step` (a run resumed from it replaces them)."""
    self._writable()
    later = [s for s in self.steps() if s > step]
    for s in later:
      self._manager.delete(s)
    return later

  def _resolve(self, step: int | None) -> int:
    steps = self.steps()
    if not steps:
      partial = sorted(os.path.basename(p) for p in
                       glob.glob(os.path.join(glob.escape(self.directory), f"*{_TMP_SUFFIX}*")))
      if partial:
        raise CheckpointError(f"no complete checkpoint in {self.directory}: only interrupted "
                              f"saves ({', '.join(partial)}), which are never restored")
      raise CheckpointError(f"no checkpoint in {self.directory}")
    if step is None:
      return max(steps)
    if step not in steps:
      raise CheckpointError(f"no checkpoint {step} in {self.directory}; there are {steps}")
    return step

  def wait(self) -> None:
    """Blocks until every pending asynchronous save is complete."""
    self._written(self._manager.wait_until_finished)

  def close(self) -> None:
    """Waits for pending saves, then releases Orbax's threads."""
    try:
      self.wait()
    finally:
      try:
        self._manager.close()
      except Exception:  # noqa: BLE001 - a failed save was reported once, by wait().
        if self._failed is None:
          raise

  def reached_preemption(self, step: int) -> bool:
    """Multi-process runs: whether JAX's preemption service agreed to stop at `step`."""
    return self._manager.reached_preemption(step)

  def _written(self, action):
    """Runs a save or a wait; a write that failed (now or in the background) is one
    CheckpointError saying which checkpoint was lost and which are intact, reported once."""
    try:
      return action()
    except Exception as e:  # noqa: BLE001 - Orbax raises many kinds.
      if self._failed is not None:
        return None
      lost = self._saving
      intact = [s for s in self.steps() if s != lost]
      what = f"checkpoint {lost}" if lost is not None else "a checkpoint"
      if _disk_full(e):
        self._failed = (f"the disk is full: {what} could not be written in {self.directory}; "
                        f"the earlier checkpoints {intact} are intact")
      else:
        self._failed = (f"{what} could not be written in {self.directory} ({_cause(e)}); the "
                        f"earlier checkpoints {intact} are intact")
      raise CheckpointError(self._failed) from None


def _read_array_files(state_dir: str) -> dict[str, bytes]:
  """Every key of the `state` item's OCDBT store and its bytes, read with tensorstore alone
  (its own threads, no asyncio): each read ends, failed or not, before this returns.
  Raises what tensorstore raises for a missing, truncated or altered file."""
  import tensorstore as ts
  store = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{state_dir}"}).result()
  keys = store.list().result()
  reads = [store.read(key) for key in keys]
  results, failure = {}, None
  for key, read in zip(keys, reads):
    try:
      result = read.result()
    except Exception as e:  # noqa: BLE001 - wait for every read, report the first failure.
      failure = failure or e
      continue
    if result.state != "value":
      failure = failure or FileNotFoundError(f"{key.decode()} is missing")
    results[key.decode()] = bytes(result.value)
  if failure is not None:
    raise failure
  return results


def _check_array_files(state_dir: str, abstract_state, where: str) -> None:
  """Before Orbax reads a checkpoint: its array files are all there and readable, and each
  array is stored with the shape and dtype its metadata describes. A failure is one
  CheckpointError, raised with no read left running (Orbax's own reads, on asyncio, would
  leave the others in flight when the first fails; see `errors_in_one_line`)."""
  problem = _array_files_problem(state_dir, abstract_state)
  if problem:
    raise CheckpointError(f"{where} could not be restored ({problem}); it is damaged, or its "
                          "arrays do not match its metadata") from None


def _array_files_problem(state_dir: str, abstract_state) -> str | None:
  """What is wrong with the `state` item's files for `abstract_state`, or None."""
  if not os.path.isdir(state_dir):
    return f"it has no `state` item: {state_dir} is missing"
  try:
    files = _read_array_files(state_dir)
  except Exception as e:  # noqa: BLE001 - tensorstore raises many kinds.
    return _cause(e)
  for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_state)[0]:
    name = leaf_name(path)
    try:
      zarray = json.loads(files[f"{name.replace('/', '.')}/.zarray"])
      shape, dtype = tuple(zarray["shape"]), np.dtype(zarray["dtype"])
    except (KeyError, ValueError, TypeError):
      return f"array {name} is missing or its description is unreadable"
    if shape != tuple(leaf.shape) or dtype != leaf.dtype:
      return (f"array {name} is stored as {dtype}{list(shape)} but its metadata says "
              f"{np.dtype(leaf.dtype)}{list(leaf.shape)}")
    prefix = f"{name.replace('/', '.')}/"
    chunks = [k for k in files if k.startswith(prefix) and not k.endswith("/.zarray")]
    if not chunks or not all(files[k] for k in chunks):  # OCDBT reads a lost data file as b"".
      return f"array {name} has no data: its files are missing or empty"
  return None


def _check_restored(state, abstract_state, where: str) -> None:
  """The restored tree must be the target's, leaf for leaf (shapes and dtypes)."""
  got = jax.tree_util.tree_flatten_with_path(state)[0]
  want = jax.tree_util.tree_flatten_with_path(abstract_state)[0]
  if [p for p, _ in got] != [p for p, _ in want]:
    raise CheckpointError(f"{where}: its arrays do not form the tree its metadata describes")
  for (path, a), (_, b) in zip(got, want):
    if tuple(a.shape) != tuple(b.shape) or a.dtype != b.dtype:
      raise CheckpointError(f"{where}: {jax.tree_util.keystr(path)} is {a.dtype}{list(a.shape)}"
                            f" but its metadata says {b.dtype}{list(b.shape)}")


def leaf_name(path) -> str:
  """`opt_state/inner_state/0/mu/encoder/block_8/conv1/kernel`: a leaf's path in the state."""
  parts = []
  for key in path:
    for attr in ("key", "idx", "name"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
  return "/".join(parts)


def _host_array(x) -> np.ndarray:
  """The whole array on this host: a local copy where it is replicated, else gathered (a
  collective in a multi-process run, where every process saves and restores together)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def checksums(state) -> dict[str, str]:
  """The CRC-32 of every array's bytes, by `leaf_name`: what a checkpoint's metadata holds.

  Tensorstore reads a chunk whose compressed bytes were altered without noticing, as long as
  they still decompress: the restore then succeeds with wrong values (an Adam moment off by
  3e38). These checksums, computed from the arrays themselves at save, catch it on restore.
  """
  out, leaves = {}, jax.tree_util.tree_flatten_with_path(state)[0]
  for _, x in leaves:  # Every copy under way at once, not one round trip per array.
    if isinstance(x, jax.Array) and x.is_fully_addressable:
      x.copy_to_host_async()
  for path, x in leaves:
    data = np.ascontiguousarray(_host_array(x)).reshape(-1).view(np.uint8)
    out[leaf_name(path)] = f"{zlib.crc32(data):08x}"
  return out


def _verify_checksums(state, meta: dict, where: str, only_these: bool = False) -> None:
  """Each restored array must have the checksum saved with it (checkpoints written before
  checksums were saved have none to check). `only_these`: `state` is part of the saved one."""
  saved = meta.get("checksums")
  if saved is None:
    return
  got = checksums(state)
  if only_these and isinstance(saved, dict):  # The saved leaves of the parts restored.
    parts = {name.split("/")[0] for name in got}
    saved = {k: v for k, v in saved.items() if k.split("/")[0] in parts}
    if set(saved) != set(got):
      extra = sorted(set(saved) - set(got)) or sorted(set(got) - set(saved))
      raise CheckpointError(f"{where}: its arrays do not form the tree its metadata describes "
                            f"({extra[0]} is in one and not the other)")
  if not isinstance(saved, dict) or set(saved) != set(got):
    raise CheckpointError(f"{where}: the checksums in its metadata do not name its arrays; "
                          "it is damaged")
  bad = [name for name in got if got[name] != saved[name]]
  if bad:
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    raise CheckpointError(
        f"{where}: array {bad[0]}{more} does not match the checksum saved with it (CRC-32 "
        f"{got[bad[0]]}, saved {saved[bad[0]]}): its files were altered after the save")


def _with_added_fields(saved: dict) -> dict:
  """A checkpoint's config with the fields added since it was written (_BEFORE_ADDED_FIELDS)."""
  return {**_BEFORE_ADDED_FIELDS, **saved}


def saved_config(meta: dict) -> TrainConfig:
  """The TrainConfig a checkpoint's metadata holds (with the fields added since it was
  written); raises what `TrainConfig.from_dict` raises."""
  return TrainConfig.from_dict(_with_added_fields(meta["config"]))


def config_differences(saved: dict, current: dict) -> list[str]:
  """Fields where the checkpoint's config and the run's disagree on what the weights mean."""
  if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
    raise CheckpointError(
        f"the checkpoint's config is not a progae_jax TrainConfig: {str(saved)[:200]}")
  out = []
  for field in ("image_channels", "channels", "latent_dim", "leaky_slope", "equalized_lr"):
    a = saved["model"].get(field, _BEFORE_ADDED_MODEL_FIELDS.get(field))
    b = current["model"].get(field)
    if field == "channels":  # Only resolutions both can reach must agree.
      common = set(a) & set(b)
      a, b = {r: a[r] for r in sorted(common, key=int)}, {r: b[r] for r in sorted(common, key=int)}
    if a != b:
      out.append(f"model.{field}: checkpoint {a!r}, this run {b!r}")
  if saved.get("widen", {}) != current.get("widen", {}):  # The widths of later stages.
    out.append(f"widen: checkpoint {saved.get('widen', {})!r}, this run {current.get('widen')!r}")
  if saved.get("dataset") != current.get("dataset"):
    out.append(f"dataset: checkpoint {saved.get('dataset')!r}, this run {current.get('dataset')!r}")
  # The optimizer state's shape: one step count or one per leaf; clipping or not.
  saved = _with_added_fields(saved)
  if saved.get("bias_correction") != current.get("bias_correction"):
    out.append(f"bias_correction: checkpoint {saved.get('bias_correction')!r}, "
               f"this run {current.get('bias_correction')!r}")
  clips = [config.get("clip_grad_norm") is not None for config in (saved, current)]
  if clips[0] != clips[1]:
    out.append(f"clip_grad_norm: checkpoint {saved.get('clip_grad_norm')!r}, "
               f"this run {current.get('clip_grad_norm')!r} (clipping on and off)")
  boosts = [config.get("fade_lr_boost", 1.0) != 1 for config in (saved, current)]
  if boosts[0] != boosts[1]:
    out.append(f"fade_lr_boost: checkpoint {saved.get('fade_lr_boost', 1.0)!r}, "
               f"this run {current.get('fade_lr_boost')!r} (a boost on and off)")
  return out


def _steps_on_disk(directory: str) -> list[int]:
  """The complete checkpoints as the folder holds them now (Orbax's manager lists them once)."""
  try:
    return sorted(int(d) for d in os.listdir(directory) if d.isdigit())
  except OSError:
    return []


def resume_point(directory: str) -> str:
  """What a rerun resumes from, read from the folder alone (no Orbax call: this is said from a
  signal handler): Orbax renames a checkpoint to its step only once it is complete."""
  steps = _steps_on_disk(directory)
  if not steps:
    return f"nothing: there is no checkpoint in {directory} yet, so it starts afresh"
  return f"checkpoint {steps[-1]} in {directory}"


def locate(path: str, step: int | None = None) -> tuple[str, int | None]:
  """(checkpoint directory, step) for a work directory, its `checkpoints/` folder, or one
  checkpoint's own folder (`.../checkpoints/1920`)."""
  path = os.path.abspath(path)
  if not os.path.exists(path):
    raise CheckpointError(f"{path} does not exist")
  if not os.path.isdir(path):
    raise CheckpointError(f"{path} is a file; give a work directory or a checkpoint's folder")
  if os.path.isdir(os.path.join(path, "checkpoints")):
    return os.path.join(path, "checkpoints"), step
  base = os.path.basename(path.rstrip("/"))
  if _TMP_SUFFIX in base:
    raise CheckpointError(f"{path} is an interrupted save, never a checkpoint; the complete "
                          f"ones are beside it in {os.path.dirname(path)}")
  if base.isdigit() and os.path.exists(os.path.join(path, "_CHECKPOINT_METADATA")):
    if step is not None and step != int(base):
      raise CheckpointError(f"{path} is checkpoint {base}, not {step}")
    return os.path.dirname(path), int(base)
  return path, step


def restore_weights(path: str, step: int | None = None, *, best: bool = False,
                    mesh=None) -> tuple[dict, dict]:
  """`restore`, reading only the weights (`params`, and `ema` when the run kept one) and the
  metadata: `({"params": ..., "ema": ...}, meta)`. `best` picks the checkpoint ranked best
  (the highest resolution, then the held-out PSNR) instead of the latest."""
  directory, step = locate(path, step)
  if best and step is not None:
    raise CheckpointError(f"give a step ({step}) or ask for the best checkpoint, not both")
  choose = (lambda manager: manager.best_step()) if best else None
  restored = _read_outlasting_rotation(
      directory, step, lambda manager, chosen: manager.restore_weights(
          chosen, mesh or parallel.make_mesh(1)), choose)
  return restored.state, restored.meta


def restore(path: str, step: int | None = None, *, mesh=None) -> tuple[dict, dict]:
  """Restores a saved train state and its metadata, knowing nothing of its stage in advance.

  `path` is a work directory, its `checkpoints/` folder or one checkpoint's folder; `step`
  (images seen) picks a checkpoint, the latest by default. Returns `(state, meta)`;
  `meta["config"]` rebuilds the TrainConfig with `TrainConfig.from_dict`. Raises
  `CheckpointError` for anything missing, empty, damaged or foreign.
  """
  directory, step = locate(path, step)
  restored = _read_outlasting_rotation(
      directory, step, lambda manager, chosen: manager.restore_any(
          chosen, mesh or parallel.make_mesh()))
  return restored.state, restored.meta


_READ_ATTEMPTS = 3  # Rotations a read-only command outlasts before it gives up.


def _read_outlasting_rotation(directory: str, step: int | None, read, choose=None) -> Restored:
  """`read(manager, chosen step)` with a read-only manager. A checkpoint that the run training
  there removes while it is read (its rotation keeps only the latest and the best) is not
  "damaged": the newest one (or the one `choose(manager)` picks) is read again instead, up to
  `_READ_ATTEMPTS` times; where `step` asked for that very one, the error says so."""
  for attempt in range(_READ_ATTEMPTS):
    manager, chosen = Checkpointer(directory, read_only=True, asynchronous=False), None
    try:
      chosen = choose(manager) if choose else manager._resolve(step)
      return read(manager, chosen)
    except CheckpointError:
      still_there = chosen is None or os.path.isdir(os.path.join(directory, str(chosen)))
      if still_there or attempt + 1 == _READ_ATTEMPTS:
        raise
      if step is not None:
        raise CheckpointError(
            f"checkpoint {step} in {directory} was removed while it was read (the run "
            "training there keeps only its latest checkpoints and the best); there are now "
            f"{_steps_on_disk(directory)}") from None
    finally:
      manager.close()
