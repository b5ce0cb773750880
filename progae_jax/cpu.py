"""Setting up a process for XLA:CPU, before JAX starts its backend.

Two things make training on a CPU up to twice as fast (benchmarks/training_speed.md has the
measurements):

* One JAX device per core. XLA:CPU runs each convolution on one core, so a single device
  leaves the other cores idle; with one device per core the data-parallel step (train.py
  splits the batch over the mesh's "data" axis) keeps all of them busy.
* glibc's malloc told to keep freed memory (`tune_malloc`), so XLA:CPU's per-step buffers are
  reused instead of being page-faulted back in every step.

Both only take effect before JAX's backend starts, and both are the business of the program
that owns the process (`progae train`, `progae bench`), never of a library import.
"""

from __future__ import annotations

import math
import os
import re
from typing import Iterable


def core_count() -> int:
  """The cores this process may run on (its CPU affinity, where the OS tells)."""
  if hasattr(os, "sched_getaffinity"):
    return max(1, len(os.sched_getaffinity(0)))
  return os.cpu_count() or 1


def devices_for(batch_sizes: Iterable[int], cores: int | None = None) -> int:
  """The most CPU devices, at most one per core, that split every global batch evenly."""
  cores = cores or core_count()
  common = math.gcd(*batch_sizes)
  return max(d for d in range(1, cores + 1) if common % d == 0)


def device_count_requested() -> bool:
  """Whether the environment already asks for a number of CPU devices (XLA_FLAGS or
  JAX_NUM_CPU_DEVICES, as the multi-process tests and launchers do)."""
  return bool(os.environ.get("JAX_NUM_CPU_DEVICES")) or bool(
      re.search(r"xla_force_host_platform_device_count", os.environ.get("XLA_FLAGS", "")))


ACCELERATOR_PLUGINS = ("jax_cuda13_plugin", "jax_cuda12_plugin", "jax_rocm7_plugin",
                       "jax_rocm60_plugin", "libtpu")


def trains_on_cpu() -> bool:
  """Whether JAX will run on the CPU: JAX_PLATFORMS says so, or no accelerator plugin is
  installed. Decided without starting JAX's backend (which would fix the device count)."""
  import importlib.util
  platforms = os.environ.get("JAX_PLATFORMS", "")
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  return not any(importlib.util.find_spec(name) for name in ACCELERATOR_PLUGINS)


def backend_started() -> bool:
  from jax._src import xla_bridge
  return xla_bridge.backends_are_initialized()


# glibc's malloc settings that keep XLA:CPU's per-step buffers mapped (see tune_malloc).
MALLOC_TUNING = {"M_MMAP_MAX": (-4, 0), "M_TRIM_THRESHOLD": (-1, 1 << 30), "M_ARENA_MAX": (-8, 1)}
# The same for a child process, as glibc tunables (read when the child starts).
MALLOC_TUNABLES = ("glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1073741824:"
                   "glibc.malloc.arena_max=1")


def tune_malloc() -> bool:
  """Makes glibc's malloc keep freed memory instead of unmapping it (Linux/glibc only).

  Every step, XLA:CPU allocates each device's temporary buffer afresh (about 100 MB at 32x32,
  batch 32 per device) with posix_memalign. glibc serves blocks that large with mmap and
  returns them with munmap, so each step page-faults its whole working set back in: 47,000
  minor faults and 80 ms of kernel time per 32x32 step here (a sixth of the step's CPU time).
  With mmap off, a high trim threshold and one arena (a thread arena cannot hold a block over
  64 MB, and glibc mmaps those even with mmap off), the buffers are reused from the heap:
  no faults. The cost: the process keeps its peak heap until it exits. Process-wide and
  irreversible, so only programs that own their process (the CLI) should call it.
  Returns whether all settings were accepted.
  """
  import ctypes
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
  return all(mallopt(param, value) == 1 for param, value in MALLOC_TUNING.values())


def set_up(batch_sizes: Iterable[int], devices: int | None = None, *,
           malloc: bool = True) -> list[str]:
  """What a training program does first on the CPU: one device per core (as many as split
  every batch evenly; `devices` overrides, 0 leaves JAX's one) and tuned malloc.

  Only when JAX will run on the CPU; a device count the environment chose (XLA_FLAGS,
  JAX_NUM_CPU_DEVICES) is kept; nothing once JAX's backend runs. Returns warnings.
  """
  if backend_started():
    return ["JAX is already running, --cpu-devices ignored"] if devices is not None else []
  on_cpu = trains_on_cpu()
  if devices is None and on_cpu and not device_count_requested():
    devices = devices_for(batch_sizes)
  # One malloc arena suits XLA:CPU's big per-step buffers, not an accelerator run's host
  # threads (data loading), which would all queue for it.
  return configure_cpu(devices or None, malloc=on_cpu and malloc)


def configure_cpu(cpu_devices: int | None, xla_flags: str = "", *,
                  malloc: bool = False) -> list[str]:
  """Asks for `cpu_devices` host devices, appends `xla_flags` to XLA_FLAGS and, with
  `malloc`, tunes glibc's malloc for XLA:CPU (`tune_malloc`).

  Devices and flags only take effect before JAX's backend starts; returns warnings (empty
  when all was applied).
  """
  warnings = []
  if malloc and not tune_malloc():
    warnings.append("could not tune malloc (not glibc?): XLA:CPU will page-fault its "
                    "buffers in every step")
  started = backend_started()
  if xla_flags:
    if started:
      warnings.append(f"JAX's backend is already running: --xla-flags {xla_flags!r} ignored")
    else:
      os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS", ""),
                                                       xla_flags]))
  if cpu_devices:
    import jax
    if started:
      have = len(jax.devices("cpu"))
      if have != cpu_devices:
        warnings.append(f"JAX's backend is already running with {have} CPU device(s): "
                        f"--cpu-devices {cpu_devices} ignored")
    else:
      jax.config.update("jax_num_cpu_devices", cpu_devices)
  return warnings
