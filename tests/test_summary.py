import jax
import jax.numpy as jnp

import progae_jax as pj


def test_param_table_lists_every_leaf_and_the_total():
  tree = {"encoder": {"w": jnp.zeros((3, 4)), "b": jnp.zeros((4,))}, "decoder": {"w": jnp.zeros(2)}}
  table = pj.param_table(tree)
  assert [r[0] for r in table.rows] == ["decoder/w", "encoder/b", "encoder/w"]
  assert table.total == 18
  text = str(table)
  assert "encoder/w" in text and "(3, 4)" in text and text.splitlines()[-1].endswith("18")
  assert "<table>" in table._repr_html_() and repr(table) == text


def test_param_table_works_on_abstract_shapes():
  config = pj.ModelConfig(max_resolution=8)
  shapes = jax.eval_shape(lambda: pj.init_params(config, 8, jax.random.key(0), fading=True))
  assert pj.param_table(shapes).total == 1_413_766


def test_growth_diff_sorts_leaves_into_kept_new_and_dropped():
  before = {"a": jnp.zeros((2, 2)), "b": jnp.zeros(3)}
  after = {"a": jnp.zeros((2, 2)), "c": jnp.zeros(5)}
  diff = pj.growth_diff(before, after)
  assert diff.kept == (("a", (2, 2)),) and diff.new == (("c", (5,)),)
  assert diff.dropped == (("b", (3,)),)
  assert diff.count("new") == 5 and diff.count("dropped") == 3
  assert "+ c" in str(diff) and "- b" in str(diff) and "new</td>" not in str(diff)
  assert "<table>" in diff._repr_html_()
