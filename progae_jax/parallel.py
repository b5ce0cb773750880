"""Scaling out with JAX's own runtime: one mesh, `NamedSharding`s, `jax.distributed`.

Data parallelism is a mesh with one axis, "data". Batches are split along it; parameters and
optimizer state are replicated (`P()`). Sharding large parameters too (FSDP-style) would be a
change to `state_sharding` alone: every jitted function takes its shardings from here.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  """A 1-D data-parallel mesh over all devices of all processes (or the first `num_devices`)."""
  devices = jax.devices()
  if num_devices is not None:
    if not 1 <= num_devices <= len(devices):
      raise ValueError(f"asked for {num_devices} devices but {len(devices)} are available")
    devices = devices[:num_devices]
  # Auto axes: shardings propagate through jit as in classic pjit (jax.make_mesh now defaults
  # to Explicit axes, which would make every sharding part of the types).
  return jax.make_mesh((len(devices),), (DATA_AXIS,), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharding(mesh) -> NamedSharding:
  """Batches: split along their first (batch) axis over the data axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def state_sharding(mesh) -> NamedSharding:
  """Training state: replicated. A pytree prefix, so it fits every stage's tree."""
  return replicated(mesh)


def check_batch_size(global_batch: int, mesh) -> None:
  n = mesh.devices.size
  if global_batch % n:
    raise ValueError(f"the global batch size {global_batch} is not divisible by the "
                     f"{n} devices of the mesh")


def global_batch(local_batch: np.ndarray, mesh) -> jax.Array:
  """This process's rows of a batch -> one global array, sharded along the data axis."""
  return jax.make_array_from_process_local_data(data_sharding(mesh), local_batch)


def put_replicated(tree, mesh):
  """Places a host or device pytree replicated on the mesh."""
  return jax.device_put(tree, replicated(mesh))


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
  """Calls `jax.distributed.initialize` when a multi-process run is asked for.

  Explicit arguments win; otherwise JAX's own cluster detection (SLURM, Open MPI, Kubernetes,
  Cloud TPU) or the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID environment
  variables are used. Returns whether distributed mode was started.
  """
  coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
  if num_processes is None and "JAX_NUM_PROCESSES" in os.environ:
    num_processes = int(os.environ["JAX_NUM_PROCESSES"])
  if process_id is None and "JAX_PROCESS_ID" in os.environ:
    process_id = int(os.environ["JAX_PROCESS_ID"])
  if coordinator is None and num_processes is None:
    return False
  if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
    raise ValueError(f"process id {process_id} is not in [0, {num_processes})")
  jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                             process_id=process_id)
  return True


def is_main_process() -> bool:
  """Only process 0 prints progress and writes pictures and metrics."""
  return jax.process_index() == 0
