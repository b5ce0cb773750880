"""A jax.profiler trace of a few steps of the requested stages, and nothing of the others."""

import glob
import gzip
import json
import os

import jax
import jax.numpy as jnp
import pytest

from progae_jax import profiling


def test_a_trace_of_two_steps_after_the_first_of_each_requested_stage(tmp_path, capsys):
  step = jax.jit(lambda x: x * 1.5 + 1.0)
  profiler = profiling.StepProfiler(str(tmp_path), steps=2, stages=(8,))
  state, n = jnp.ones((64, 64)), 0
  for resolution, count in ((4, 3), (8, 5)):
    for _ in range(count):
      with profiler.step(resolution, n, state):
        state = step(state)
      n += 1
  profiler.close(state)
  assert [r for r, _ in profiler.written] == [8]  # 4x4 was not asked for.
  folder = profiler.written[0][1]
  assert folder.startswith(os.path.join(str(tmp_path), "profile", "plugins", "profile"))
  assert glob.glob(os.path.join(folder, "*.xplane.pb"))
  (perfetto,) = glob.glob(os.path.join(folder, "*perfetto_trace.json.gz"))
  with gzip.open(perfetto) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  # The step annotations: the 8x8 stage's steps 2 and 3 (its first compiles), run-wide 4, 5.
  assert sorted(e["args"]["step_num"] for e in events if e.get("name") == "train") == ["4", "5"]
  out = capsys.readouterr().out
  assert "profile of 2 steps at 8x8" in out and "tensorboard --logdir" in out


def test_a_run_without_profile_steps_traces_nothing(tmp_path):
  profiler = profiling.StepProfiler(str(tmp_path), steps=0, stages=(4,))
  for n in range(3):
    with profiler.step(4, n, None):
      pass
  profiler.close()
  assert profiler.written == [] and not os.path.exists(tmp_path / "profile")


@pytest.mark.parametrize("text, says", [("16,64", "[64] not among"), ("x", "resolutions such"),
                                        (",", "nothing not among")])
def test_stages_that_the_model_does_not_have_are_one_error(text, says):
  with pytest.raises(ValueError, match=says.replace("[", "\\[").replace("]", "\\]")):
    profiling.parse_stages(text, (4, 8, 16, 32))
