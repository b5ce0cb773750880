"""The large preset (progae_jax/configs/large.py): ProGAN's shape to 128x128 in bfloat16.

At its full width a 128x128 step is ~190 GFLOP per image, a GPU's work: here it is built
at 1/64 of its width (the same stages, the same schedule and optimizer), grown through every
stage with the function kept at alpha = 0, and its real training step compiled and run in
bfloat16 over its first two stages (4x4, then 8x8 fading in).
"""

import dataclasses

import jax
import numpy as np
import pytest

import progae_jax as pj
from progae_jax import bench, optim, parallel, steps, train_state
from progae_jax.model import Stage

NARROW = 64  # Channels and latent divided by this: 512 -> 8, 256 -> 4, 128 -> 2.


@pytest.fixture(scope="module")
def large():
  return bench.preset_train_config("large")


def _narrow(model, max_resolution=None):
  return dataclasses.replace(
      model, channels={r: c // NARROW for r, c in model.channels},
      latent_dim=model.latent_dim // NARROW,
      max_resolution=max_resolution or model.max_resolution)


def test_the_preset_is_progans_shape_in_bfloat16(large):
  assert large.model.resolutions == (4, 8, 16, 32, 64, 128)
  assert dict(large.model.channels) == {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128}
  assert large.model.latent_dim == 512 and large.compute_dtype == "bfloat16"
  assert large.dataset == "image_patches_128"
  # Images, not steps: every fade and stable phase is 200,000 images, at any batch.
  for r in large.model.resolutions:
    s = large.stage(r)
    assert s.stable_images == 200_000 and s.fade_images == (0 if r == 4 else 200_000)
    assert s.batch_size >= 256


def test_every_growth_keeps_the_function_at_alpha_zero(large):
  config = _narrow(large.model)

  @jax.jit
  def every_growth(key):  # One compile for the five growths.
    params, outputs = pj.init_params(config, 4, key), []
    for r in config.resolutions[:-1]:
      grown = pj.grow(params, config, jax.random.fold_in(key, r))
      x = jax.random.uniform(jax.random.fold_in(key, 1000 + r), (2, 2 * r, 2 * r, 3))
      outputs.append((pj.apply(config, params, pj.downsample(x)),
                      pj.apply(config, grown, x, 0.0)))
      params = pj.finish_fade(grown)
    return params, outputs

  params, outputs = every_growth(jax.random.key(0))
  assert len(outputs) == 5 and pj.stage_of(params) == Stage(128, False)
  for (old_recon, old_latent), (new_recon, new_latent) in outputs:
    np.testing.assert_allclose(new_latent, old_latent, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new_recon, pj.upsample(old_recon), rtol=1e-5, atol=1e-6)


def test_two_stages_compile_and_train_in_bfloat16(large):
  config = dataclasses.replace(large, model=_narrow(large.model, max_resolution=8))
  optimizer = optim.optimizer_for(config)
  mesh = parallel.make_mesh()
  step = steps.make_train_step(config, optimizer, mesh)
  state = train_state.init_state(config, optimizer, mesh)
  batch = 2 * len(jax.devices())
  images = jax.random.uniform(jax.random.key(1), (batch, 8, 8, 3))
  losses = {}
  for stage, x in ((Stage(4, False), pj.downsample(images)), (Stage(8, True), images)):
    state = train_state.grow_to(state, stage, config, optimizer, mesh)
    for _ in range(2):
      state, metrics = step(state, x, np.float32(0.5))
    losses[str(stage)] = float(metrics["loss"])
  assert all(np.isfinite(v) and v > 0 for v in losses.values()), losses
  assert pj.stage_of(state["params"]) == Stage(8, True)
