"""Model FLOP utilisation (MFU) of a compiled training step.

    FLOPs per step     XLA's own count for the compiled step (`compiled.cost_analysis()`):
                       convolutions, elementwise work, Adam; for one device's share of a
                       data-parallel step, so times the devices for the whole step
    achieved TFLOP/s   FLOPs per step x steps per second / 1e12
    MFU                achieved / the devices' peak (datasheet, dense, the dtype's unit)

The peak depends on the chip and on the unit the step's dtype runs on. XLA on NVIDIA GPUs runs
float32 convolutions on the tensor cores as TF32 at JAX's default precision, so float32's peak
is TF32's. Chips not in `PEAK_TFLOPS` get no MFU unless the caller names a peak
(`progae bench --peak-tflops`) or measures one (`measured_matmul_tflops`, `progae bench
--measure-peak`: what one large matrix product in the compute dtype reaches on the device,
the ceiling a convolution net can hope for; on an H200 in bfloat16 about 80% of the
datasheet's).
"""

from __future__ import annotations

import time

# Dense datasheet TFLOP/s per device, by (jax device_kind, compute dtype). H200 SXM and H100
# SXM share their arithmetic (NVIDIA H100/H200 datasheets: bf16 989.4, TF32 494.7).
PEAK_TFLOPS = {
    ("NVIDIA H200", "bfloat16"): 989.4,
    ("NVIDIA H200", "float32"): 494.7,
    ("NVIDIA H100 80GB HBM3", "bfloat16"): 989.4,
    ("NVIDIA H100 80GB HBM3", "float32"): 494.7,
}


def step_flops(compiled, devices: int = 1) -> float | None:
  """FLOPs of one whole step: XLA's count for one device's module, times the devices.

  None where the backend gives no count. (JAX before 0.4.30 returned a list of dicts here;
  every JAX this package admits returns one dict.)
  """
  analysis = compiled.cost_analysis()
  if not analysis or analysis.get("flops") is None:
    return None
  return float(analysis["flops"]) * devices


def peak_tflops(device_kind: str, compute_dtype: str, devices: int = 1) -> float | None:
  """The datasheet peak of `devices` such devices for this dtype; None if not known."""
  per_device = PEAK_TFLOPS.get((device_kind, compute_dtype))
  return None if per_device is None else per_device * devices


def utilisation(flops_per_step: float | None, steps_per_s: float,
                peak: float | None) -> dict:
  """{"flops_per_step", "tflops" (achieved), "mfu" (None without a peak), "peak_tflops"}."""
  if flops_per_step is None:
    return {"flops_per_step": None, "tflops": None, "mfu": None, "peak_tflops": peak}
  tflops = flops_per_step * steps_per_s / 1e12
  return {"flops_per_step": flops_per_step, "tflops": float(f"{tflops:.4g}"),
          "mfu": None if not peak else float(f"{tflops / peak:.4g}"), "peak_tflops": peak}


def measured_matmul_tflops(compute_dtype: str, size: int | None = None,
                           seconds: float = 1.0) -> dict:
  """The device's rate on a large square matrix product in `compute_dtype`, in TFLOP/s:
  {"tflops", "size", "dtype", "device_kind"}. `size` defaults to 8192 on accelerators and
  1024 on the CPU; repeats for about `seconds` after one untimed run."""
  import jax
  import jax.numpy as jnp

  device = jax.devices()[0]
  n = size or (1024 if device.platform == "cpu" else 8192)
  dtype = jnp.dtype(compute_dtype)
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  product = jax.jit(lambda x, y: x @ y)
  product(a, b).block_until_ready()
  t = time.perf_counter()
  product(a, b).block_until_ready()
  per_call = max(time.perf_counter() - t, 1e-6)
  calls = max(3, int(seconds / per_call))
  t = time.perf_counter()
  for _ in range(calls):
    out = product(a, b)
  out.block_until_ready()
  rate = 2 * n ** 3 * calls / (time.perf_counter() - t) / 1e12
  return {"tflops": float(f"{rate:.4g}"), "size": n, "dtype": str(dtype),
          "device_kind": device.device_kind}
