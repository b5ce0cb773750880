"""MFU: XLA's FLOP count of a compiled step, scaled to the whole step and set against a peak."""

import jax
import jax.numpy as jnp
import pytest

from progae_jax import bench, mfu
from progae_jax.config import ModelConfig

TINY = ModelConfig(image_channels=1, max_resolution=8, channels={4: 4, 8: 4}, latent_dim=4)


def test_a_matrix_product_counts_two_flops_per_multiply_add():
  compiled = jax.jit(lambda a, b: a @ b).lower(jnp.ones((64, 32)), jnp.ones((32, 16))).compile()
  assert mfu.step_flops(compiled) == 2 * 64 * 32 * 16
  assert mfu.step_flops(compiled, devices=4) == 4 * 2 * 64 * 32 * 16  # One device's share x4.


def test_the_train_steps_flops_grow_with_the_batch_and_give_tflops_and_mfu():
  n = len(jax.devices())
  small, large = (bench.prepare_jax_stage(TINY, 4, False, b * n, 1.0).flops_per_step
                  for b in (4, 16))
  assert large / small == pytest.approx(4, rel=0.15)  # Per-image work, not a constant.
  rates = mfu.utilisation(large, steps_per_s=1e3, peak=large * 1e3 / 1e12 * 4)
  assert rates["tflops"] == pytest.approx(large * 1e3 / 1e12, rel=1e-3)
  assert rates["mfu"] == pytest.approx(0.25, rel=1e-3)


def test_mfu_needs_a_known_peak():
  assert mfu.peak_tflops("NVIDIA H200", "bfloat16", devices=2) == pytest.approx(2 * 989.4)
  assert mfu.peak_tflops("cpu", "float32") is None
  assert mfu.utilisation(1e9, 10.0, None)["mfu"] is None
  assert mfu.utilisation(None, 10.0, 100.0) == {"flops_per_step": None, "tflops": None,
                                                "mfu": None, "peak_tflops": 100.0}


def test_the_measured_peak_times_a_matrix_product_on_the_device():
  measured = mfu.measured_matmul_tflops("float32", size=64, seconds=0.01)
  assert measured["tflops"] > 0 and measured["size"] == 64 and measured["dtype"] == "float32"
  assert measured["device_kind"] == jax.devices()[0].device_kind
