"""Scaling out with JAX's own runtime: one mesh, `NamedSharding`s, `jax.distributed`.

Data parallelism is a mesh with one axis, "data". Batches are split along it; parameters and
optimizer state are replicated (`P()`): `state_sharding(mesh)` is that decision, a pytree
prefix that fits every stage's tree, and every jitted function in train.py and
train_state.py takes its shardings from here, so the layout is decided in one place.

Process layout: the mesh lists devices process by process, so process i's devices hold the
global rows [i * B/P, (i+1) * B/P) of a batch: exactly the rows `data.batches(...,
shard_index=i, shard_count=P)` reads. `global_batch` glues those local rows into one
`jax.Array` without any cross-process copy.
"""

from __future__ import annotations

import os
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def _process_ordered(devices) -> list:
  """Devices grouped by process (stable within a process), process 0 first."""
  return sorted(devices, key=lambda d: d.process_index)


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  """A 1-D data-parallel mesh over the devices of every process.

  `num_devices` takes only the first that many devices of EACH process (all by default), so
  `--num-devices 2` means the same on one host and on many. Devices are ordered process by
  process (see the module docstring): that is what makes the per-process data shards line up
  with the rows each process's devices hold.
  """
  local = jax.local_devices()
  if num_devices is not None:
    if not 1 <= num_devices <= len(local):
      raise ValueError(f"asked for {num_devices} devices per process but this process has "
                       f"{len(local)} ({local[0].platform}); for more CPU devices set "
                       f"XLA_FLAGS=--xla_force_host_platform_device_count={num_devices} "
                       "before JAX starts")
  # jax.make_mesh may reorder devices for the physical topology (TPU rings); keep its order
  # within each process, then group by process.
  chosen = []
  for p in range(jax.process_count()):
    mine = [d for d in jax.devices() if d.process_index == p]
    chosen += mine[:num_devices] if num_devices is not None else mine
  ordered = jax.make_mesh((len(chosen),), (DATA_AXIS,), devices=chosen,
                          axis_types=(jax.sharding.AxisType.Auto,)).devices.flat
  # Auto axes: shardings propagate through jit as in classic pjit (jax.make_mesh now defaults
  # to Explicit axes, which would make every sharding part of the types).
  return jax.sharding.Mesh(np.array(_process_ordered(ordered)), (DATA_AXIS,),
                           axis_types=(jax.sharding.AxisType.Auto,))


def mesh_summary(mesh) -> str:
  """e.g. '4 cpu devices (2 processes x 2)': for progress lines and benchmark tables."""
  devices = list(mesh.devices.flat)
  procs = sorted({d.process_index for d in devices})
  per = len(devices) // len(procs)
  where = f" ({len(procs)} processes x {per})" if len(procs) > 1 else ""
  return f"{len(devices)} {devices[0].platform} device{'s' if len(devices) > 1 else ''}{where}"


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharding(mesh) -> NamedSharding:
  """Batches: split along their first (batch) axis over the data axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def state_sharding(mesh) -> NamedSharding:
  """Training state: replicated. A pytree prefix, so it fits every stage's tree."""
  return replicated(mesh)


def check_batch_size(global_batch: int, mesh) -> None:
  """A global batch must split evenly over the devices of the mesh."""
  n = mesh.devices.size
  if global_batch % n:
    lo, hi = global_batch // n * n, -(-global_batch // n) * n
    hint = f"{lo} or {hi}" if lo else f"{hi}"
    raise ValueError(f"the global batch size {global_batch} is not divisible by the {n} "
                     f"devices of the mesh ({mesh_summary(mesh)}); use a multiple of {n}, "
                     f"e.g. {hint}, or fewer devices (--num-devices)")


def global_batch(local_batch: np.ndarray, mesh) -> jax.Array:
  """This process's rows of a batch -> one global array, sharded along the data axis.

  Process i contributes rows [i * b, (i + 1) * b) of the global batch (b = its local rows),
  which its own devices hold: no data crosses between processes.
  """
  local_batch = np.asarray(local_batch)
  local_devices = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
  if local_batch.shape[0] % local_devices:
    raise ValueError(f"this process's {local_batch.shape[0]} rows of the batch do not split "
                     f"over its {local_devices} devices of the mesh")
  shape = (local_batch.shape[0] * jax.process_count(), *local_batch.shape[1:])
  return jax.make_array_from_process_local_data(data_sharding(mesh), local_batch, shape)


def _int_env(name: str) -> int | None:
  value = os.environ.get(name)
  if value in (None, ""):
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def launcher_detected() -> str | None:
  """The multi-process launcher this process runs under (SLURM, Open MPI), if any.

  JAX's `jax.distributed.initialize()` reads their variables itself; this only decides
  whether to call it. A single task (e.g. an interactive SLURM shell) is not multi-process.
  """
  slurm_tasks = _int_env("SLURM_NTASKS") or _int_env("SLURM_NPROCS")
  if "SLURM_JOB_ID" in os.environ and "SLURM_PROCID" in os.environ and (slurm_tasks or 1) > 1:
    return "SLURM"
  if (_int_env("OMPI_COMM_WORLD_SIZE") or 1) > 1 and "OMPI_MCA_orte_hnp_uri" in os.environ:
    return "Open MPI"
  return None


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
  """Calls `jax.distributed.initialize` when a multi-process run is asked for.

  Explicit arguments win; then the environment variables JAX_COORDINATOR_ADDRESS,
  JAX_NUM_PROCESSES and JAX_PROCESS_ID; then a SLURM or Open MPI launcher, whose settings
  JAX's own cluster detection reads. With none of these it does nothing (one process) and
  returns False. Must run before anything else touches JAX's devices.
  """
  coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
  if num_processes is None:
    num_processes = _int_env("JAX_NUM_PROCESSES")
  if process_id is None:
    process_id = _int_env("JAX_PROCESS_ID")
  explicit = (coordinator, num_processes, process_id)
  launcher = launcher_detected()
  if all(v is None for v in explicit) and launcher is None:
    return False
  if launcher is None and None in explicit:
    missing = [flag for flag, v in zip(("--coordinator HOST:PORT", "--num-processes N",
                                        "--process-id I"), explicit) if v is None]
    raise ValueError(f"a multi-process run needs {', '.join(missing)} as well (or the "
                     "environment variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, "
                     "JAX_PROCESS_ID, or a SLURM / Open MPI launcher)")
  if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
    raise ValueError(f"process id {process_id} is not in [0, {num_processes})")
  if coordinator is not None and ":" not in coordinator:
    raise ValueError(f"the coordinator address {coordinator!r} must be HOST:PORT")
  jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                             process_id=process_id)
  return True


def is_main_process() -> bool:
  """Only process 0 prints progress and writes pictures and metrics."""
  return jax.process_index() == 0
