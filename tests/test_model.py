import jax
import jax.numpy as jnp
import numpy as np
import pytest

import progae_jax as pj
from progae_jax.model import check_alpha

SMALL = dict(channels={4: 8, 8: 8, 16: 4, 32: 4}, latent_dim=16)


def test_default_parameter_counts_match_the_pytorch_reference():
  # The PyTorch reference's counts (benchmarks/torch_reference.py, the same layers): 3 image
  # channels, both adapters of a fading stage included.
  config = pj.ModelConfig(max_resolution=32)
  want = {8: 1_413_766, 16: 1_634_822, 32: 1_689_606}
  for r, count in want.items():
    shapes = jax.eval_shape(lambda: pj.init_params(config, r, jax.random.key(0), fading=True))
    assert pj.count_params(shapes) == count


def test_parameters_are_named_by_resolution():
  config = pj.ModelConfig(max_resolution=16, **SMALL)
  params = pj.init_params(config, 16, jax.random.key(0), fading=True)
  assert set(params["encoder"]) == {"from_image_16", "from_image_8", "block_16", "block_8",
                                    "block_4", "to_latent"}
  assert set(params["decoder"]) == {"from_latent", "block_4", "block_8", "block_16",
                                    "to_image_16", "to_image_8"}
  assert params["encoder"]["block_16"]["conv2"]["kernel"].shape == (3, 3, 4, 8)


@pytest.mark.parametrize("resolution, fading", [(4, False), (8, True), (8, False), (16, True)])
def test_stage_is_read_from_the_tree(resolution, fading):
  config = pj.ModelConfig(max_resolution=16, **SMALL)
  params = pj.init_params(config, resolution, jax.random.key(0), fading=fading)
  assert pj.stage_of(params) == pj.Stage(resolution, fading)
  x = jnp.ones((2, resolution, resolution, 3))
  recon, latent = pj.apply(config, params, x, 0.5)
  assert recon.shape == x.shape and latent.shape == (2, 16)


def test_equalized_lr_stores_unit_scale_weights_of_the_same_function():
  # The same key draws the same weights; equalized stores them at unit scale and applies
  # 1/sqrt(fan_in) at run time, so at init both models compute the same thing.
  plain = pj.ModelConfig(max_resolution=8, **SMALL)
  equalized = pj.ModelConfig(max_resolution=8, equalized_lr=True, **SMALL)
  p = pj.init_params(plain, 8, jax.random.key(0), fading=True)
  q = pj.init_params(equalized, 8, jax.random.key(0), fading=True)
  assert jax.tree.structure(p) == jax.tree.structure(q)
  conv = lambda t: t["encoder"]["block_8"]["conv1"]["kernel"]  # 3x3, 8 in: fan_in 72
  np.testing.assert_allclose(conv(q), conv(p) * np.sqrt(72), rtol=1e-6)
  assert 0.7 < float(jnp.std(conv(q))) < 1.3
  x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3))
  for a, b in zip(pj.apply(plain, p, x, 0.5), pj.apply(equalized, q, x, 0.5)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_alpha_is_traced_so_a_fade_compiles_once():
  config = pj.ModelConfig(max_resolution=8, **SMALL)
  params = pj.init_params(config, 8, jax.random.key(0), fading=True)
  traces = []

  @jax.jit
  def f(params, x, alpha):
    traces.append(1)
    return pj.apply(config, params, x, alpha)[0]

  x = jnp.ones((1, 8, 8, 3))
  outs = [f(params, x, jnp.float32(a)) for a in (0.0, 0.3, 1.0)]
  assert len(traces) == 1
  assert not np.allclose(outs[0], outs[2])


def test_bfloat16_compute_returns_float32_close_to_float32():
  config = pj.ModelConfig(max_resolution=8, **SMALL)
  params = pj.init_params(config, 8, jax.random.key(0))
  x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3))
  full = pj.apply(config, params, x)[0]
  half = pj.apply(config, params, x, dtype=jnp.bfloat16)[0]
  assert half.dtype == jnp.float32
  np.testing.assert_allclose(half, full, atol=5e-2)


def test_wrong_images_are_refused_with_both_shapes():
  config = pj.ModelConfig(max_resolution=8, **SMALL)
  params = pj.init_params(config, 8, jax.random.key(0))
  with pytest.raises(ValueError, match=r"\(batch, 8, 8, 3\).*\(2, 4, 4, 3\)"):
    pj.apply(config, params, jnp.ones((2, 4, 4, 3)))
  with pytest.raises(ValueError, match=r"\(2, 8, 8, 1\)"):
    pj.apply(config, params, jnp.ones((2, 8, 8, 1)))
  with pytest.raises(ValueError, match="got \\(8, 8, 3\\)"):
    pj.apply(config, params, jnp.ones((8, 8, 3)))


def test_alpha_outside_unit_interval_is_refused():
  config = pj.ModelConfig(max_resolution=8, **SMALL)
  params = pj.init_params(config, 8, jax.random.key(0), fading=True)
  with pytest.raises(ValueError, match="alpha must be in \\[0, 1\\], got 1.5"):
    pj.apply(config, params, jnp.ones((1, 8, 8, 3)), 1.5)
  check_alpha(np.float32(0.5))  # Fine, and silent.


@pytest.mark.parametrize("tree", [
    {"encoder": {}},
    [1, 2],
    {"encoder": {"from_image_8": {}}, "decoder": {"to_image_4": {}}},
    {"encoder": {"from_image_8": {}}, "decoder": {"to_image_8": {}}},  # blocks missing
])
def test_foreign_trees_are_refused(tree):
  with pytest.raises(ValueError, match="not a progae_jax parameter tree"):
    pj.stage_of(tree)


def test_bad_stage_requests():
  config = pj.ModelConfig(max_resolution=8, **SMALL)
  with pytest.raises(ValueError, match="resolution 16 is not a stage"):
    pj.init_params(config, 16, jax.random.key(0))
  with pytest.raises(ValueError, match="cannot be fading"):
    pj.init_params(config, 4, jax.random.key(0), fading=True)
