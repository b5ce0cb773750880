import jax.numpy as jnp
import numpy as np
import pytest

from progae_jax import downsample, fade_target, to_resolution, upsample


def test_downsample_is_a_2x2_box_filter():
  x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
  want = np.array([[2.5, 4.5], [10.5, 12.5]], np.float32).reshape(1, 2, 2, 1)
  np.testing.assert_array_equal(downsample(x), want)
  np.testing.assert_array_equal(np.asarray(downsample(jnp.asarray(x))), want)


def test_upsample_is_nearest_neighbour_and_inverts_downsample_on_blocks():
  x = np.random.default_rng(0).random((2, 3, 3, 2), np.float32)
  up = upsample(x)
  assert up.shape == (2, 6, 6, 2)
  np.testing.assert_array_equal(up[:, ::2, ::2], x)
  np.testing.assert_array_equal(up[:, 1::2, 1::2], x)
  np.testing.assert_array_equal(downsample(up), x)
  np.testing.assert_array_equal(np.asarray(upsample(jnp.asarray(x))), up)


def test_fade_target_ends():
  x = np.random.default_rng(1).random((2, 8, 8, 3), np.float32)
  np.testing.assert_allclose(fade_target(x, 1.0), x)
  np.testing.assert_allclose(fade_target(x, 0.0), upsample(downsample(x)))
  np.testing.assert_allclose(fade_target(x, 0.25), 0.25 * x + 0.75 * upsample(downsample(x)),
                             rtol=1e-6)


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 3)), np.zeros((1, 5, 4, 3))])
def test_downsample_rejects_bad_shapes(bad):
  with pytest.raises(ValueError):
    downsample(bad)


def test_to_resolution_repeats_the_one_way_down_and_up():
  x = np.random.default_rng(2).random((2, 8, 8, 3), np.float32)
  np.testing.assert_array_equal(to_resolution(x, 2), downsample(downsample(x)))
  np.testing.assert_array_equal(to_resolution(x, 32), upsample(upsample(x)))
  assert to_resolution(x, 8) is x
  with pytest.raises(ValueError, match="8 -> 24 is not a power-of-two factor"):
    to_resolution(x, 24)
