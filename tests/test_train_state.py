"""The train state: made at 4x4, grown one stage at a time on the devices, described for Orbax."""

import jax
import numpy as np
import pytest

from progae_jax import Stage, optim, parallel, stage_of, train_state

from conftest import tiny_config


def _bumped(state):
  return jax.tree_util.tree_map(lambda x: x + 1 if x.dtype == np.float32 else x, state)


def test_grow_to_walks_the_stages_in_order_and_abstract_state_describes_each(data_dir):
  config = tiny_config(data_dir)
  mesh, opt = parallel.make_mesh(), optim.make_optimizer()
  state = train_state.init_state(config, opt, mesh)
  for stage in (Stage(4, False), Stage(8, True), Stage(8, False)):
    state = train_state.grow_to(state, stage, config, opt, mesh)
    assert stage_of(state["params"]) == stage
    # What a checkpoint of this stage is restored into: the same tree, leaf for leaf.
    target = train_state.abstract_state(config, stage, opt, mesh)
    assert jax.tree_util.tree_structure(target) == jax.tree_util.tree_structure(state)
    for want, got in zip(jax.tree_util.tree_leaves(target), jax.tree_util.tree_leaves(state)):
      assert (want.shape, want.dtype) == (got.shape, got.dtype)
      assert want.sharding.is_equivalent_to(got.sharding, got.ndim)
  with pytest.raises(ValueError, match="the state is at 8x8 stable, past 8x8 fade"):
    train_state.grow_to(state, Stage(8, True), config, opt, mesh)


def _moments(state) -> dict:
  """Adam's first moments by parameter path, on the host."""
  mu = state["opt_state"].inner_state[0].mu
  return {jax.tree_util.keystr(p): np.asarray(x)
          for p, x in jax.tree_util.tree_flatten_with_path(jax.device_get(mu))[0]}


@pytest.mark.parametrize("policy, reset_at_growth, reset_at_fade_end", [
    ("carry", False, False), ("reset", True, False), ("reset_twice", True, True)])
def test_adams_moments_at_growth_and_at_the_fade_end(data_dir, policy, reset_at_growth,
                                                     reset_at_fade_end):
  config = tiny_config(data_dir, optimizer_on_growth=policy)
  mesh, opt = parallel.make_mesh(), optim.make_optimizer()
  before = _bumped(train_state.init_state(config, opt, mesh))  # Every moment 1.
  fading = train_state.advance_state(before, config, opt, mesh)
  kept = {k: v for k, v in _moments(fading).items() if "_4']" in k}  # The 4x4 leaves.
  assert len(kept) > 4
  assert all(np.all(v == (0 if reset_at_growth else 1)) for v in kept.values()), policy
  before = _bumped(fading)
  want = _moments(before)
  stable = train_state.advance_state(before, config, opt, mesh)
  assert str(stage_of(stable["params"])) == "8x8 stable"
  got = _moments(stable)
  assert set(got) < set(want)  # The 4x4 adapters' moments went with the adapters.
  for k, v in got.items():
    np.testing.assert_array_equal(v, 0 * v if reset_at_fade_end else want[k], err_msg=k)
