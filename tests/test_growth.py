"""The invariants of growth: function preservation, bit-exact copies, optimizer
state that follows the parameters, and no jump in the loss."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import progae_jax as pj

SMALL = dict(channels={4: 8, 8: 8, 16: 4, 32: 4}, latent_dim=16)
leaves = lambda t: dict((jax.tree_util.keystr(p), x)
                        for p, x in jax.tree_util.tree_flatten_with_path(t)[0])


def _perturb(tree, key):
  """Random-looking weights everywhere, so that no check passes by being all zeros."""
  flat, treedef = jax.tree_util.tree_flatten(tree)
  keys = jax.random.split(key, len(flat))
  return jax.tree_util.tree_unflatten(
      treedef, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(flat, keys)])


def _stable_trees(config, key):
  """A (perturbed) stable tree at every resolution that can still grow."""
  params = _perturb(pj.init_params(config, 4, key), key)
  for r in config.resolutions[:-1]:
    yield r, params
    params = _perturb(pj.finish_fade(pj.grow(params, config, jax.random.fold_in(key, r))), key)


@pytest.mark.parametrize("image_channels, equalized_lr", [(1, True), (3, False)])
def test_function_is_preserved_at_alpha_zero(image_channels, equalized_lr):
  config = pj.ModelConfig(image_channels=image_channels, max_resolution=32,
                          equalized_lr=equalized_lr, **SMALL)
  for r, old in _stable_trees(config, jax.random.key(0)):
    new = pj.grow(old, config, jax.random.key(r))
    x = jax.random.uniform(jax.random.key(r + 1), (3, 2 * r, 2 * r, image_channels))
    old_recon, old_latent = pj.apply(config, old, pj.downsample(x))
    new_recon, new_latent = pj.apply(config, new, x, 0.0)
    np.testing.assert_allclose(new_latent, old_latent, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new_recon, pj.upsample(old_recon), rtol=1e-5, atol=1e-6)
    # ... and the new path really is wired in: alpha = 1 gives something else.
    assert not np.allclose(pj.apply(config, new, x, 1.0)[0], new_recon, atol=1e-4)


def test_growth_copies_shared_leaves_bit_for_bit_and_inits_new_ones():
  config = pj.ModelConfig(max_resolution=16, **SMALL)
  old = _perturb(pj.init_params(config, 8, jax.random.key(0)), jax.random.key(1))
  new = pj.grow(old, config, jax.random.key(2))
  old_l, new_l = leaves(old), leaves(new)
  assert set(old_l) < set(new_l)
  for path, x in old_l.items():
    assert new_l[path] is x or np.array_equal(new_l[path], x), path
  fresh = leaves(pj.init_params(config, 16, jax.random.key(2), fading=True))
  added = set(new_l) - set(old_l)
  assert {p.split("']")[1].strip("['") for p in added} == {"block_16", "from_image_16",
                                                            "to_image_16"}
  for path in added:
    np.testing.assert_array_equal(new_l[path], fresh[path])


def test_finish_fade_drops_old_adapters_and_changes_nothing_at_alpha_one():
  config = pj.ModelConfig(max_resolution=16, **SMALL)
  faded = _perturb(pj.init_params(config, 16, jax.random.key(0), fading=True), jax.random.key(1))
  stable = pj.finish_fade(faded)
  assert pj.stage_of(stable) == pj.Stage(16, False)
  diff = pj.growth_diff(faded, stable)
  assert {p.split("/")[1] for p, _ in diff.dropped} == {"from_image_8", "to_image_8"}
  assert not diff.new
  x = jax.random.uniform(jax.random.key(3), (2, 16, 16, 3))
  a, b = pj.apply(config, faded, x, 1.0), pj.apply(config, stable, x)
  np.testing.assert_allclose(a[0], b[0], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(a[1], b[1], rtol=1e-6, atol=1e-7)


def test_loss_is_continuous_across_growth():
  config = pj.ModelConfig(max_resolution=16, **SMALL)
  old = _perturb(pj.init_params(config, 8, jax.random.key(0)), jax.random.key(1))
  new = pj.grow(old, config, jax.random.key(2))
  x = jax.random.uniform(jax.random.key(3), (4, 16, 16, 3))
  small = pj.downsample(x)
  old_loss = jnp.mean((pj.apply(config, old, small)[0] - small) ** 2)
  new_loss = jnp.mean((pj.apply(config, new, x, 0.0)[0] - pj.fade_target(x, 0.0)) ** 2)
  np.testing.assert_allclose(new_loss, old_loss, rtol=1e-5)


def test_the_seed_case_grayscale_4x4_grown_to_8x8_keeps_its_kernels():
  config = pj.ModelConfig(image_channels=1, max_resolution=8)
  four = _perturb(pj.init_params(config, 4, jax.random.key(0)), jax.random.key(1))
  eight = pj.finish_fade(pj.grow(four, config, jax.random.key(2)))
  for part in ("encoder", "decoder"):
    np.testing.assert_array_equal(eight[part]["block_4"]["conv1"]["kernel"],
                                  four[part]["block_4"]["conv1"]["kernel"])
  np.testing.assert_array_equal(eight["encoder"]["to_latent"]["kernel"],
                                four["encoder"]["to_latent"]["kernel"])
  assert eight["encoder"]["from_image_8"]["conv"]["kernel"].shape == (1, 1, 1, 128)
  recon, _ = pj.apply(config, eight, jnp.zeros((5, 8, 8, 1)))
  assert recon.shape == (5, 8, 8, 1)


def _loss(config, params, x, alpha):
  return jnp.mean((pj.apply(config, params, x, alpha)[0] - pj.fade_target(x, alpha)) ** 2)


OPTIMIZERS = {
    "adam": lambda: optax.adam(1e-2),
    "inject_hyperparams(adam)": lambda: optax.inject_hyperparams(optax.adam)(learning_rate=1e-2),
    "chain(clip, adamw)": lambda: optax.chain(optax.clip_by_global_norm(1.0),
                                              optax.adamw(1e-2, weight_decay=1e-4)),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_state_follows_the_parameters(name):
  config = pj.ModelConfig(max_resolution=8, **SMALL)
  opt = OPTIMIZERS[name]()
  params = pj.init_params(config, 4, jax.random.key(0))
  state = opt.init(params)
  x4 = jax.random.uniform(jax.random.key(1), (4, 4, 4, 3))
  for _ in range(3):
    grads = jax.grad(lambda p: _loss(config, p, x4, 1.0))(params)
    updates, state = opt.update(grads, state, params)
    params = optax.apply_updates(params, updates)

  grown = pj.grow(params, config, jax.random.key(2))
  new_state = pj.grow_opt_state(state, opt, grown)
  old_l, new_l = leaves(state), leaves(new_state)
  carried = [p for p in new_l if p in old_l]
  for path in carried:  # mu, nu, counts and hyperparameters of kept leaves, bit for bit.
    np.testing.assert_array_equal(new_l[path], old_l[path])
  assert any(".mu" in p for p in carried) and any(".nu" in p for p in carried)
  counts = [p for p in carried if p.endswith(".count")]
  assert counts and all(int(new_l[p]) == 3 for p in counts)
  new_slots = [p for p in new_l if p not in old_l]
  assert new_slots and all("block_8" in p or "_image_8" in p for p in new_slots)
  assert all(not np.any(new_l[p]) for p in new_slots)  # fresh moments start at zero
  if name.startswith("inject"):
    assert float(new_state.hyperparams["learning_rate"]) == pytest.approx(1e-2)

  # A train step runs on the grown state ...
  x8 = jax.random.uniform(jax.random.key(3), (4, 8, 8, 3))
  grads = jax.grad(lambda p: _loss(config, p, x8, 0.5))(grown)
  updates, new_state = opt.update(grads, new_state, grown)
  grown = optax.apply_updates(grown, updates)
  # ... and the same function serves finish_fade, dropping the adapters' slots.
  stable = pj.finish_fade(grown)
  stable_state = pj.grow_opt_state(new_state, opt, stable)
  assert not any("_image_4" in p for p in leaves(stable_state))
  jax.tree_util.tree_map(lambda a, b: None, opt.init(stable), stable_state)  # same structure

  reset = pj.grow_opt_state(new_state, opt, stable, policy="reset")
  assert all(not np.any(x) for p, x in leaves(reset).items() if ".mu" in p or ".count" in p)


def test_bad_growth_requests():
  config = pj.ModelConfig(max_resolution=8, **SMALL)
  params = pj.init_params(config, 8, jax.random.key(0))
  with pytest.raises(ValueError, match="cannot grow past max_resolution=8"):
    pj.grow(params, config, jax.random.key(1))
  fading = pj.init_params(config, 8, jax.random.key(0), fading=True)
  with pytest.raises(ValueError, match="call finish_fade"):
    pj.grow(fading, config, jax.random.key(1))
  with pytest.raises(ValueError, match="not fading"):
    pj.finish_fade(params)
  with pytest.raises(ValueError, match="policy"):
    pj.grow_opt_state({}, optax.adam(1e-3), params, policy="keep")


def test_merge_refuses_shape_mismatch_naming_path_and_shapes():
  small = pj.ModelConfig(max_resolution=8, **SMALL)
  wide = pj.ModelConfig(max_resolution=8, channels={4: 16, 8: 8}, latent_dim=16)
  params = pj.init_params(small, 4, jax.random.key(0))
  with pytest.raises(ValueError, match=r"\['decoder'\]\['block_4'\]\['conv1'\]\['bias'\].*"
                                       r"\(8,\).*\(16,\)"):
    pj.grow(params, wide, jax.random.key(1))
