"""Widening (widen.py): the function kept for every kind of block, the optimizer state split
like the gradients, a widened tree that still grows, and a widening phase that resumes
bit-exactly."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import progae_jax as pj
from progae_jax import optim, widen as widen_lib
from progae_jax.model import widths_of
from progae_jax.schedule import TrainConfig, model_at
from progae_jax.widen import function_change, widen, widen_opt_state

from conftest import tiny_config

CHANNELS = {4: 4, 8: 4, 16: 3}


def _config(equalized_lr):
  return pj.ModelConfig(image_channels=1, max_resolution=32, channels={**CHANNELS, 32: 2},
                        latent_dim=5, equalized_lr=equalized_lr)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _tree(config, resolution, fading):
  """Weights far from their init (random biases too), so nothing passes by being zero."""
  params = pj.init_params(config, resolution, jax.random.key(0), fading=fading)
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  return jax.tree_util.tree_unflatten(
      treedef, [x + 0.2 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def _images(resolution, n=3):
  return jax.random.uniform(jax.random.key(resolution), (n, resolution, resolution, 1))


def _widen(config, params, channels, noise=0.0):
  """`widen`, jitted (one compile instead of one per operation)."""
  new_config = widen_lib._changes(config, params, channels)[0]
  fn = jax.jit(lambda p: widen(config, p, channels, noise=noise, rng=jax.random.key(7))[1])
  return new_config, fn(params)


@pytest.mark.parametrize("equalized_lr", [False, True])
def test_the_function_is_kept_for_every_kind_of_block(equalized_lr):
  """Mid-fade at 16x16 every kind of block is there: the dense layers on the flattened 4x4
  map, block_8 (read and written by block_16), block_16 and both stages' adapters."""
  config = _config(equalized_lr)
  old = _tree(config, 16, True)
  channels = {4: 6, 8: 9, 16: 5}
  new_config, new = _widen(config, old, channels, noise=0.3)
  assert widths_of(new) == {r: new_config.channels_at(r) for r in (4, 8, 16)} == channels
  # At alpha 0, 0.5 and 1 (so the stable tree's function too), latent and reconstruction.
  change = function_change(config, old, new, _images(16))
  assert change <= 1e-5, change
  if not equalized_lr:
    return  # The stable tree is checked once, equalized (the same layers either way).
  # The stable 16x16 tree (no old adapters left to read the copies).
  stable = pj.finish_fade(old)
  widened = _widen(config, stable, {4: 5, 8: 6, 16: 4}, noise=0.3)[1]
  assert function_change(config, stable, widened, _images(16), alphas=(1.0,)) <= 1e-5


def test_noise_breaks_the_copies_symmetry_and_the_model_has_no_normalisation():
  config = _config(False)
  old = _tree(config, 8, False)
  _, plain = _widen(config, old, {8: 8})
  _, noisy = _widen(config, old, {8: 8}, noise=0.3)
  rows = lambda t: t["encoder"]["block_8"]["conv2"]["kernel"]  # reads block_8.conv1's units
  # Without noise unit j and its copy j + 4 send the same (halved) weights on; with it not.
  np.testing.assert_array_equal(rows(plain)[:, :, :4], rows(plain)[:, :, 4:])
  np.testing.assert_allclose(rows(plain)[:, :, :4] * 2, rows(old), rtol=1e-6)
  assert np.abs(rows(noisy)[:, :, :4] - rows(noisy)[:, :, 4:]).min() > 0
  # ... yet the copies' shares still add up to the original's weights.
  np.testing.assert_allclose(rows(noisy)[:, :, :4] + rows(noisy)[:, :, 4:], rows(old),
                             atol=1e-6)
  # The encoder and the decoder alone run a widened tree at its widths too.
  from progae_jax.model import decode, encode
  x = _images(8)
  recon, latent = widen_lib._jitted_apply(config, old, x, jnp.float32(1))
  np.testing.assert_allclose(jax.jit(encode, static_argnums=0)(config, noisy, x), latent,
                             atol=1e-5)
  np.testing.assert_allclose(jax.jit(decode, static_argnums=0)(config, noisy, latent), recon,
                             atol=1e-5)
  # A layer widen does not know (a normalisation's scale over channels) is refused.
  odd = jax.tree.map(lambda x: x, old)
  odd["encoder"]["block_8"]["norm"] = {"scale": jnp.ones(4)}
  with pytest.raises(ValueError, match=r"\['block_8'\]\['norm'\]\['scale'\].*does not know"):
    widen(config, odd, {8: 8})


def test_a_widen_that_forgets_to_divide_changes_the_function(monkeypatch):
  config = _config(True)
  old = _tree(config, 16, True)
  undivided = lambda edit, equalized: np.ones(edit.copies.new, np.float32)
  monkeypatch.setattr(widen_lib, "_weight_factor", undivided)
  _, new = _widen(config, old, {8: 8})
  assert function_change(config, old, new, _images(16)) > 1e-2


def test_errors_say_what_is_wrong():
  config = _config(False)
  old = _tree(config, 8, False)
  with pytest.raises(ValueError, match="cannot widen resolution 8 to 3 channels: it has 4"):
    widen(config, old, {8: 3})
  with pytest.raises(ValueError, match="cannot widen resolution 64: the model's resolutions"):
    widen(config, old, {64: 8})
  with pytest.raises(ValueError, match="noise=0.1 needs an rng"):
    widen(config, old, {8: 8}, noise=0.1)
  with pytest.raises(ValueError, match="policy must be one of"):
    widen_opt_state({}, None, config, old, {8: 8}, policy="keep")


def test_a_widened_tree_grows_finishes_its_fade_and_a_later_stage_is_born_wide():
  config = _config(True)
  old = _tree(config, 8, False)
  wide_config, wide = _widen(config, old, {8: 6, 16: 7})  # 16 is not grown yet
  grown = jax.jit(pj.grow, static_argnums=1)(wide, wide_config, jax.random.key(3))
  assert widths_of(grown) == {4: 4, 8: 6, 16: 7}
  x, run = _images(16), jax.jit(pj.apply, static_argnums=0)
  before, _ = run(config, old, pj.downsample(x), jnp.float32(1))
  np.testing.assert_allclose(run(config, grown, x, jnp.float32(0))[0], pj.upsample(before),
                             atol=1e-5)
  stable = pj.finish_fade(grown)
  np.testing.assert_allclose(run(config, stable, x, jnp.float32(1))[0],
                             run(config, grown, x, jnp.float32(1))[0], atol=1e-6)


@functools.partial(jax.jit, static_argnums=0)
@functools.partial(jax.grad, argnums=1)
def _gradient(config, params):
  x = _images(8, 4)
  return jnp.mean((pj.apply(config, params, x, 0.3)[0] - x) ** 2)


def test_split_moments_are_the_widened_trees_gradients_split():
  """'split' scales a copied weight's moments as its gradient scales: the widened tree's
  gradient is exactly the old gradient put through the same split (the equalized learning
  rate's rescaling included)."""
  config = _config(True)
  old = _tree(config, 8, False)
  channels = {4: 6, 8: 7}
  _, new = _widen(config, old, channels)
  opt = optim.make_optimizer(1e-3)
  grads, grads_new = _gradient(config, old), _gradient(config, new)
  # Each step jitted: one compile instead of one per operation of every leaf.
  state = jax.jit(lambda g: opt.update(g, opt.init(old), old)[1])(grads)  # mu = 0.1 g,
  # nu = 0.001 g^2, count 1
  widened = jax.jit(lambda s, policy: widen_opt_state(s, opt, config, old, channels,
                                                      policy=policy), static_argnums=1)
  split = widened(state, "split").inner_state[0]
  for got, want in ((split.mu, jax.tree.map(lambda g: 0.1 * g, grads_new)),
                    (split.nu, jax.tree.map(lambda g: 0.001 * g * g, grads_new))):
    for path, x in jax.tree_util.tree_flatten_with_path(got)[0]:
      w = dict(jax.tree_util.tree_flatten_with_path(want)[0])[path]
      np.testing.assert_allclose(x, w, rtol=1e-3, atol=1e-5 * float(jnp.abs(w).max()))
  assert all(int(c) == 1 for c in jax.tree.leaves(split.count))
  # 'fresh': the widened leaves start as Adam starts; the others keep everything.
  fresh = widened(state, "fresh").inner_state[0]
  kept = fresh.mu["decoder"]["to_image_8"]["conv"]["bias"]  # its channels are the image's
  assert int(fresh.count["decoder"]["to_image_8"]["conv"]["bias"]) == 1 and kept.any()
  np.testing.assert_array_equal(
      kept, state.inner_state[0].mu["decoder"]["to_image_8"]["conv"]["bias"])
  assert int(fresh.count["encoder"]["block_8"]["conv1"]["kernel"]) == 0
  assert not fresh.mu["encoder"]["block_8"]["conv1"]["kernel"].any()
  # Either state drives the next Adam step of the widened tree.
  jax.jit(opt.update)(grads_new, widened(state, "split"), new)


def test_the_schedule_checks_and_places_its_widenings(data_dir):
  cfg = tiny_config(data_dir, widen={"8": {"4": 12, "8": 10}})
  assert cfg.widen == {8: {4: 12, 8: 10}}
  assert TrainConfig.from_dict(cfg.to_dict()).widen == cfg.widen
  assert model_at(cfg, 8, fading=True).channels == ((4, 8), (8, 8))
  assert model_at(cfg, 8, fading=False).channels == ((4, 12), (8, 10))
  # A checkpoint of this run does not resume a run that widens otherwise.
  from progae_jax.checkpoint import config_differences
  other = tiny_config(data_dir, widen={"8": {"4": 16}})
  assert [d.split(":")[0] for d in config_differences(cfg.to_dict(), other.to_dict())] == ["widen"]
  for widen_, message in (({"4": {"4": 12}}, "not a stage after the first"),
                          ({"8": {"4": 6}}, "widens resolution 4 at 8 to 6 channels; it has 8"),
                          ({"8": {"16": 6}}, "widens resolution 16 at 8, but")):
    with pytest.raises(ValueError, match=message):
      tiny_config(data_dir, widen=widen_)


def test_a_stop_and_resume_across_a_widening_is_bit_identical(data_dir, tmp_path):
  """4x4 stable [0, 64), 8x8 fade [64, 128), widening, 8x8 stable [128, 256): stopped where
  the fade ends (before the widening) and mid-way through the widened phase."""
  from progae_jax import train
  cfg = tiny_config(data_dir, stages={
      "4": {"fade_images": 0, "stable_images": 64, "batch_size": 32, "learning_rate": 0.003},
      "8": {"fade_images": 64, "stable_images": 128, "batch_size": 32, "learning_rate": 0.002}},
      widen={"8": {"4": 12, "8": 10}})
  reference = train.train_and_evaluate(cfg, str(tmp_path / "reference"), progress=False)
  resumed = str(tmp_path / "resumed")
  for stop in (128, 192, None):
    result = train.train_and_evaluate(cfg, resumed, progress=False, stop_after_images=stop)
  assert widths_of(result.state["params"]) == {4: 12, 8: 10}
  assert result.state["opt_state"].inner_state[0].mu["encoder"]["block_8"]["conv2"][
      "kernel"].shape == (3, 3, 10, 12)
  for (path, want), got in zip(jax.tree_util.tree_flatten_with_path(reference.state)[0],
                               jax.tree.leaves(result.state)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=str(path))
