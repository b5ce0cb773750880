"""What the program that owns a process sets up for XLA before it compiles anything: a
persistent compilation cache, and deterministic GPU kernels on request.

    first run of a config:   trace -> compile (seconds a program on a GPU) -> cache entry
    the same config again:   trace -> read the cache entry (milliseconds)  -> same program

`progae train` keeps the cache on by default, in a per-user directory
(`cache_dir`): $PROGAE_COMPILE_CACHE if set ("off" turns the cache off), else
$XDG_CACHE_HOME/progae_jax/xla, else ~/.cache/progae_jax/xla. `--no-compile-cache` turns it
off for one command, and a JAX_COMPILATION_CACHE_DIR the user set is left as it is. Every
program is cached, however short its compile (JAX's default skips those under a second, which
is most of this model's), and XLA's GPU autotuning results are cached beside them.

`--deterministic` (`TrainConfig.deterministic`) asks XLA for deterministic GPU kernels
(`--xla_gpu_deterministic_ops=true` in XLA_FLAGS): two runs of one config on one GPU give the
same bits. It takes effect only if set before JAX starts its backend; on the CPU, whose
kernels are deterministic already, it changes nothing.

Like cpu.py, none of this happens on a library import or call: `train_and_evaluate` only
checks that a deterministic config runs in a process set up for it.
"""

from __future__ import annotations

import os

DETERMINISTIC_FLAG = "--xla_gpu_deterministic_ops=true"
CACHE_ENV = "PROGAE_COMPILE_CACHE"


def cache_dir() -> str | None:
  """The per-user cache directory, or None when $PROGAE_COMPILE_CACHE is "off"."""
  chosen = os.environ.get(CACHE_ENV)
  if chosen is not None:
    return None if chosen.strip().lower() in ("off", "0", "") else os.path.expanduser(chosen)
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "progae_jax", "xla")


def enable_cache(directory: str | None = None) -> str | None:
  """Turns JAX's persistent compilation cache on for this process, caching every program.

  A JAX_COMPILATION_CACHE_DIR already set wins (its directory is returned). Returns the
  directory in use, or None when the cache stays off ($PROGAE_COMPILE_CACHE=off).
  """
  import jax
  directory = os.environ.get("JAX_COMPILATION_CACHE_DIR") or directory or cache_dir()
  if directory is None:
    return None
  os.makedirs(directory, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return directory


def deterministic_requested() -> bool:
  """Whether XLA_FLAGS asks for deterministic GPU kernels."""
  return DETERMINISTIC_FLAG in os.environ.get("XLA_FLAGS", "").split()


def request_deterministic() -> None:
  """Adds `--xla_gpu_deterministic_ops=true` to XLA_FLAGS, before JAX's backend starts."""
  from progae_jax.cpu import backend_started
  if deterministic_requested():
    return
  if backend_started():
    raise ValueError("deterministic GPU kernels must be asked for before JAX starts its "
                     f"backend: set XLA_FLAGS={DETERMINISTIC_FLAG} in the environment")
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {DETERMINISTIC_FLAG}".strip()


def check_deterministic(deterministic: bool) -> None:
  """A config that asks for deterministic kernels runs only in a process set up for them."""
  if deterministic and not deterministic_requested():
    raise ValueError(f"deterministic=True needs XLA_FLAGS={DETERMINISTIC_FLAG} set before JAX "
                     "starts (progae train --deterministic sets it)")
