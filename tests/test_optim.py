"""Adam with a step count per leaf: optax's Adam where nothing grows, Adam's first steps for
the leaves that growth adds, carried by path like the moments."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import progae_jax as pj
from progae_jax import optim

SMALL = dict(image_channels=1, channels={4: 8, 8: 8, 16: 8}, latent_dim=8)


def _grads(config, params, resolution, seed):
  x = jax.random.uniform(jax.random.key(seed), (4, resolution, resolution, 1))
  loss = lambda p: jnp.mean((pj.apply(config, p, x, 0.5)[0] - pj.fade_target(x, 0.5)) ** 2)
  return jax.grad(loss)(params)


def _train(opt, config, params, state, resolution, steps, seed=0):
  @jax.jit
  def step(params, state, i):
    x = jax.random.uniform(jax.random.fold_in(jax.random.key(seed), i),
                           (4, resolution, resolution, 1))
    loss = lambda p: jnp.mean((pj.apply(config, p, x, 0.5)[0] - pj.fade_target(x, 0.5)) ** 2)
    updates, state = opt.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  for i in range(steps):
    params, state = step(params, state, i)
  return params, state


def test_where_nothing_grows_it_is_optaxs_adam():
  config = pj.ModelConfig(max_resolution=8, **SMALL)
  params = pj.init_params(config, 4, jax.random.key(0))
  ours, theirs = optim.scale_by_leafwise_adam(b2=0.99), optax.scale_by_adam(b2=0.99)
  s_ours, s_theirs = ours.init(params), theirs.init(params)
  for i in range(5):  # The same arithmetic, up to how XLA fuses it (one rounding).
    g = _grads(config, params, 4, i)
    u_ours, s_ours = jax.jit(ours.update)(g, s_ours)
    u_theirs, s_theirs = jax.jit(theirs.update)(g, s_theirs)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=3e-7), u_ours, u_theirs)
  assert all(int(c) == 5 for c in jax.tree.leaves(s_ours.count))


def _first_update_of_new_leaves(bias_correction: str) -> float:
  """The largest first update of a leaf that growth added, in units of the learning rate,
  after 200 steps of training the old tree."""
  config = pj.ModelConfig(max_resolution=8, **SMALL)
  opt = optim.make_optimizer(1e-3, bias_correction=bias_correction)
  params = pj.init_params(config, 4, jax.random.key(0))
  params, state = _train(opt, config, params, opt.init(params), 4, 200)
  grown = pj.grow(params, config, jax.random.key(1))
  state = pj.grow_opt_state(state, opt, grown)
  updates, _ = opt.update(_grads(config, grown, 8, 999), state, grown)
  new = updates["decoder"]["block_8"]
  return max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(new)) / 1e-3


def test_a_new_leaf_takes_adams_first_step_not_several_times_it():
  # Adam's first step is lr * g / |g|: exactly the learning rate, per weight.
  assert _first_update_of_new_leaves("per_leaf") == pytest.approx(1.0, rel=1e-3)
  # One shared count, already 200: the correction is off and the first step is
  # (1 - b1) / sqrt(1 - b2) / (1 - b1^201) * sqrt(1 - b2^201) ~ 3.16 * 0.42 = 1.3x ... 3x.
  assert _first_update_of_new_leaves("shared") > 1.2


def test_growth_carries_each_leafs_count_by_path():
  config = pj.ModelConfig(max_resolution=16, **SMALL)
  opt = optim.make_optimizer(1e-3)
  params = pj.init_params(config, 4, jax.random.key(0))
  params, state = _train(opt, config, params, opt.init(params), 4, 3)
  grown = pj.grow(params, config, jax.random.key(1))
  state = pj.grow_opt_state(state, opt, grown)
  grown, state = _train(opt, config, grown, state, 8, 2)
  count = state.inner_state[0].count
  assert int(count["encoder"]["block_4"]["conv1"]["kernel"]) == 5
  assert int(count["encoder"]["from_image_4"]["conv"]["kernel"]) == 5
  assert int(count["encoder"]["block_8"]["conv1"]["kernel"]) == 2
  assert int(count["decoder"]["to_image_8"]["conv"]["bias"]) == 2
  stable = pj.finish_fade(grown)
  state = pj.grow_opt_state(state, opt, stable)
  assert "from_image_4" not in state.inner_state[0].count["encoder"]
  jax.tree.map(lambda a, b: None, opt.init(stable), state)  # The fresh tree's structure.


def test_clipping_bounds_the_gradient_that_adam_sees():
  config = pj.ModelConfig(max_resolution=8, **SMALL)
  params = pj.init_params(config, 4, jax.random.key(0))
  opt = optim.make_optimizer(1e-3, clip_grad_norm=1e-6)
  state = opt.init(params)
  g = _grads(config, params, 4, 0)
  assert optax.tree.norm(g) > 1e-4
  _, state = opt.update(g, state, params)
  nu = state.inner_state[1].nu  # (1 - b2) g^2 of the clipped gradient, summed: 1e-3 * 1e-12.
  assert float(sum(jnp.sum(v) for v in jax.tree.leaves(nu))) == pytest.approx(1e-15, rel=1e-3)


def test_a_fade_lr_boost_multiplies_the_steps_of_the_leaves_fading_in_and_no_others():
  # A tree is read as fading by its names (two adapters each side): 8x8 fading in.
  leaf = lambda: {"kernel": jnp.ones((2, 3)), "bias": jnp.ones((3,))}
  fading = {"encoder": {n: leaf() for n in ("from_image_4", "from_image_8", "block_4",
                                             "block_8")},
            "decoder": {n: leaf() for n in ("to_image_4", "to_image_8", "block_4", "block_8")}}
  stable = {part: {n: v for n, v in tree.items() if not n.endswith("image_4")}
            for part, tree in fading.items()}
  plain, boosted = optim.make_optimizer(1e-3), optim.make_optimizer(1e-3, fade_lr_boost=3.0)
  for tree, boost_at in ((fading, 3.0), (stable, 1.0)):
    g = jax.tree.map(jnp.ones_like, tree)  # Adam's first step: the learning rate, per weight.
    base, more = (jax.jit(opt.update)(g, opt.init(tree))[0] for opt in (plain, boosted))
    for part in ("encoder", "decoder"):
      for name, leaves in base[part].items():
        factor = boost_at if name in optim.fading_in_names(8) else 1.0
        jax.tree.map(lambda a, b: np.testing.assert_allclose(b, factor * a, rtol=1e-6),
                     leaves, more[part][name])
  assert optim.fading_in_names(8) == {"block_8", "from_image_8", "to_image_8"}


def test_a_bad_bias_correction_is_named():
  with pytest.raises(ValueError, match="bias_correction must be one of"):
    optim.make_optimizer(1e-3, bias_correction="none")
