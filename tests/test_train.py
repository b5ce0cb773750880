"""Progressive training end to end on the digits that ship with scikit-learn."""

import json
import logging
import os
import threading

import jax
import numpy as np
import pytest

from progae_jax import (ModelConfig, apply, checkpoint, data, downsample, optim, parallel,
                        stage_of, steps, train, train_state)
from progae_jax.schedule import TrainConfig, alpha_at, phases

from conftest import tiny_config

_compiles = []  # The thread of every backend compile of this process.
jax.monitoring.register_event_duration_secs_listener(
    lambda event, secs, **kw: _compiles.append(threading.current_thread().name)
    if event == "/jax/core/compile/backend_compile_duration" else None)


def _compiles_in_loop() -> int:
  """Backend compiles the training loop waited for: those on the main thread."""
  return sum(name == threading.main_thread().name for name in _compiles)


class _Recording:
  """The real data layer, noting every batch it serves."""

  def __init__(self, poison_at=None):
    self.poison_at, self.served = poison_at, 0
    self.served_batches = []  # Every batch served, in order.
    self.alphas = []  # The alpha of every train step, as the step received it.
    self.loop_compiles = []  # `_compiles_in_loop()` at every train step.

  def dataset_info(self, *a, **k):
    return data.dataset_info(*a, **k)

  def eval_images(self, *a, **k):
    return data.eval_images(*a, **k)

  def batches(self, *a, **k):
    inner, outer = data.batches(*a, **k), self

    class It:
      def __next__(self):
        batch = next(inner)
        outer.served += 1
        if outer.poison_at is not None and outer.served > outer.poison_at:
          batch = np.full_like(batch, np.nan)
        outer.served_batches.append(batch)
        return batch

      def get_state(self):
        return inner.get_state()

      def set_state(self, s):
        inner.set_state(s)

    return It()


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory):
  """One two-stage run (4x4 stable -> 8x8 fade -> 8x8 stable), shared by the tests below."""
  workdir = str(tmp_path_factory.mktemp("run"))
  config = tiny_config(data_dir, keep_checkpoints=3)  # Every phase end's checkpoint stays.
  recorder = _Recording()
  handler = _CompileLog()
  logging.getLogger("jax").addHandler(handler)
  jax.config.update("jax_log_compiles", True)
  try:
    with pytest.MonkeyPatch.context() as patch:
      patch.setattr(steps.Programs, "train_step",
                    _alpha_noting(steps.Programs.train_step, recorder))
      result = train.train_and_evaluate(config, workdir, progress=False, data_module=recorder)
  finally:
    jax.config.update("jax_log_compiles", False)
    logging.getLogger("jax").removeHandler(handler)
  return config, workdir, result, recorder, handler.train_step_compiles


def _alpha_noting(train_step_of, recorder):
  """`Programs.train_step` whose programs note, in `recorder`, the alpha they are given and
  the compiles the loop has waited for so far."""
  def train_step(programs, phase):
    program = train_step_of(programs, phase)

    def noting(state, batch, alpha):
      recorder.alphas.append(float(alpha))
      recorder.loop_compiles.append(_compiles_in_loop())
      return program(state, batch, alpha)
    return noting
  return train_step


class _CompileLog(logging.Handler):
  def __init__(self):
    super().__init__(logging.DEBUG)
    self.train_step_compiles = 0

  def emit(self, record):
    if "Compiling jit(_train_step)" in record.getMessage():
      self.train_step_compiles += 1


def _records(workdir, kind):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if r["kind"] == kind]


def test_run_completes_and_loss_falls(run):
  config, workdir, result, _, _ = run
  assert result.images_seen == phases(config)[-1].end == 768
  train_records = _records(workdir, "train")
  first4 = [r["loss"] for r in train_records if r["resolution"] == 4]
  assert np.mean(first4[-2:]) < 0.7 * np.mean(first4[:2])
  assert all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in train_records)
  assert result.final_eval["resolution"] == 8 and 0 < result.final_eval["ssim"] <= 1


def test_growth_happens_at_the_scheduled_image_counts(run):
  config, workdir, _, _, _ = run
  plan = phases(config)
  for r in _records(workdir, "train"):
    start = r["images_seen"] - config.default_stage.batch_size  # images before that step
    phase = next(p for p in plan if p.start <= start < p.end)
    assert (r["resolution"], r["phase"]) == (phase.resolution,
                                             "fade" if phase.fading else "stable")
    if phase.fading:
      assert r["alpha"] == pytest.approx((start - phase.start) / (phase.end - phase.start))


def test_every_step_is_given_the_schedules_alpha(run):
  config, _, _, recorder, _ = run
  want = [alpha_at(p, seen, config.alpha_ramp)
          for p in phases(config) for seen in range(p.start, p.end, p.batch_size)]
  assert sorted(set(want))[:2] == [0.0, 0.125]  # The fade's alphas, not just 1.
  assert recorder.alphas == pytest.approx(want, abs=1e-7)


def test_the_fade_starts_where_the_old_stage_ended(run):
  """The first step after growth (alpha 0) has exactly the loss the old 4x4 model has on the
  same batch: the grown model computes what the old one did, on the faded target."""
  config, workdir, _, recorder, _ = run
  fade = phases(config)[1]
  old, meta = checkpoint.restore(workdir, step=fade.start)
  assert (meta["resolution"], meta["phase"]) == (4, "stable")
  batch = recorder.served_batches[fade.start // fade.batch_size]  # The fade's first batch, 8x8.
  small = downsample(batch)
  old_loss = float(np.mean((np.asarray(apply(config.model, old["params"], small)[0]) - small) ** 2))
  first = next(r for r in _records(workdir, "train")
               if r["images_seen"] == fade.start + fade.batch_size)
  assert (first["resolution"], first["phase"], first["alpha"]) == (8, "fade", 0.0)
  assert first["loss"] == pytest.approx(old_loss, rel=1e-5)


def test_ema_and_optimizer_state_were_grown(run):
  _, _, result, _, _ = run
  state = result.state
  assert stage_of(state["params"]) == stage_of(state["ema"])
  assert str(stage_of(state["params"])) == "8x8 stable"
  inner = state["opt_state"].inner_state[0]
  assert "block_8" in inner.mu["encoder"] and "from_image_4" not in inner.mu["encoder"]
  # Each leaf's Adam counts its own steps: the 4x4 leaves all 24, block_8 the 16 since growth.
  count = inner.count
  assert int(count["encoder"]["block_4"]["conv1"]["kernel"]) == int(state["step"]) == 24
  assert int(count["decoder"]["block_8"]["conv1"]["bias"]) == 16
  assert int(count["decoder"]["to_image_8"]["conv"]["kernel"]) == 16
  assert not np.array_equal(state["ema"]["encoder"]["block_8"]["conv1"]["kernel"],
                            state["params"]["encoder"]["block_8"]["conv1"]["kernel"])


def test_train_step_compiles_once_per_phase_and_never_during_a_fade(run):
  _, _, _, recorder, train_step_compiles = run
  assert train_step_compiles == 3  # 4x4 stable, 8x8 fade, 8x8 stable
  by_phase = {}
  for i, compiles in enumerate(recorder.loop_compiles):
    by_phase.setdefault(i // 8, []).append(compiles)
  assert len(by_phase) == 3
  for phase, counts in by_phase.items():
    # From the second step on, the loop waited for no compile in the phase.
    assert counts[1] == counts[-1], (phase, counts)


def test_evaluation_measures_every_stage_at_the_final_resolution_too(run):
  _, workdir, _, _, _ = run
  evals = _records(workdir, "eval")
  four, *_, last = evals
  # The 4x4 stage enlarged to 8x8 cannot match the 8x8 originals as well as it matches its
  # own 4x4 target; at the final stable stage the two measurements are the same thing.
  assert four["resolution"] == 4 and four["psnr_full"] < four["psnr"]
  assert last["psnr_full"] == pytest.approx(last["psnr"], abs=1e-4)
  assert last["ssim_full"] == pytest.approx(last["ssim"], abs=1e-5)


def test_train_seconds_grow_and_leave_out_evaluation(run):
  _, workdir, _, _, _ = run
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    times = [r["train_seconds"] for r in map(json.loads, f) if "train_seconds" in r]
  assert len(times) > 6 and times == sorted(times) and times[0] > 0


def test_metrics_pictures_and_curves_are_written(run):
  _, workdir, result, _, _ = run
  assert len(_records(workdir, "eval")) == 3
  names = sorted(os.listdir(os.path.join(workdir, "pictures")))
  assert names == ["recon_00_4x4_stable.png", "recon_01_8x8_fade.png",
                   "recon_02_8x8_stable.png"]
  for path in result.pictures + [result.curves]:
    with open(path, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_a_non_finite_loss_stops_the_run_and_keeps_the_saved_checkpoint(data_dir, tmp_path):
  config = tiny_config(data_dir, checkpoint_every_images=128)
  poisoned = _Recording(poison_at=10)  # batch 11 (8x8 fade, step 11) is all NaN
  with pytest.raises(train.NonFiniteLossError, match=r"step 11 .*8x8 fade, alpha 0\.25"):
    train.train_and_evaluate(config, str(tmp_path), progress=False, data_module=poisoned)
  state, meta = checkpoint.restore(str(tmp_path))
  assert meta["images_seen"] <= 10 * 32
  assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(state["params"]))


def test_dataset_and_model_must_agree(data_dir, tmp_path):
  config = TrainConfig(model=ModelConfig(image_channels=3, max_resolution=8), dataset="digits",
                       data_dir=data_dir)
  with pytest.raises(ValueError, match="1 channel.*image_channels=3"):
    train.train_and_evaluate(config, str(tmp_path), progress=False)
  config = TrainConfig(model=ModelConfig(image_channels=1, max_resolution=16),
                       dataset="digits", data_dir=data_dir)
  with pytest.raises(ValueError, match="8x8, below max_resolution=16"):
    train.train_and_evaluate(config, str(tmp_path), progress=False)


def test_a_schedule_without_fades_grows_at_once(data_dir, tmp_path):
  config = tiny_config(data_dir, fade_images=0, stable_images=128)
  result = train.train_and_evaluate(config, str(tmp_path), progress=False)
  assert [p.name for p in phases(config)] == ["4x4 stable", "8x8 stable"]
  assert str(stage_of(result.state["params"])) == "8x8 stable"
  assert "from_image_4" not in result.state["params"]["encoder"]
  evals = _records(str(tmp_path), "eval")
  assert [(r["resolution"], r["phase"]) for r in evals] == [(4, "stable"), (8, "stable")]


def test_microbatches_give_the_same_step(data_dir):
  config = tiny_config(data_dir)
  mesh, opt = parallel.make_mesh(), optim.make_optimizer()
  batch = parallel.global_batch(
      next(data.batches("digits", resolution=4, batch_size=32, seed=1, data_dir=data_dir)), mesh)
  results = []
  for microbatches in (1, 4):
    state = train_state.init_state(config, opt, mesh)
    step = steps.make_train_step(config, opt, mesh, microbatches=microbatches)
    for _ in range(2):
      state, metrics = step(state, batch, np.float32(1.0))
    results.append((jax.device_get(state["params"]), float(metrics["loss"])))
  (one, loss_one), (four, loss_four) = results
  assert loss_four == pytest.approx(loss_one, rel=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(one), jax.tree_util.tree_leaves(four)):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_a_second_run_in_the_process_reuses_the_steps_and_trains_the_same(data_dir, tmp_path,
                                                                         monkeypatch):
  """The next seed, learning rate or schedule on the same model: no stage is traced again."""
  traced = []

  def noting_trace(*args, **kwargs):
    traced.append(None)
    return train_step(*args, **kwargs)

  train_step = steps._train_step
  monkeypatch.setattr(steps, "_train_step", noting_trace)
  monkeypatch.setattr(steps, "_PROGRAMS", {})
  config = tiny_config(data_dir, fade_images=32, stable_images=32)
  first = train.train_and_evaluate(config, str(tmp_path / "a"), progress=False)
  assert len(traced) == 3  # 4x4 stable, 8x8 fade, 8x8 stable.
  again = train.train_and_evaluate(config, str(tmp_path / "b"), progress=False)
  assert len(traced) == 3
  for a, b in zip(jax.tree_util.tree_leaves(first.state), jax.tree_util.tree_leaves(again.state)):
    np.testing.assert_array_equal(a, b)
  # What the steps are made from, and nothing else, tells them apart.
  mesh = parallel.make_mesh()
  programs = lambda c: steps.programs_for(c, optim.optimizer_for(c), mesh)
  other_run = tiny_config(data_dir, fade_images=64, learning_rate=1e-3, seed=3)
  assert programs(other_run) is programs(config)
  for other in (tiny_config(data_dir, model={"channels": {"4": 8, "8": 8}, "latent_dim": 4}),
                tiny_config(data_dir, adam_b2=0.99), tiny_config(data_dir, ema_decay=None)):
    assert programs(other) is not programs(config)


def test_programs_compiled_ahead_train_the_same_bits_as_a_plain_jitted_call(run, tmp_path,
                                                                            monkeypatch):
  """The executables compiled in background threads (the module's run) are the ones a first
  call of the jitted steps compiles."""
  config, _, ahead, _, _ = run
  monkeypatch.setattr(steps, "_PROGRAMS", {})
  monkeypatch.setattr(steps, "_compile", lambda jitted, args: jitted)  # Called as jitted.
  called = train.train_and_evaluate(config, str(tmp_path), progress=False)
  for a, b in zip(jax.tree_util.tree_leaves(ahead.state), jax.tree_util.tree_leaves(called.state)):
    np.testing.assert_array_equal(a, b)
  assert ahead.final_eval["psnr"] == called.final_eval["psnr"]


def test_the_loop_brings_nothing_to_the_host_between_log_windows(data_dir, tmp_path,
                                                                 monkeypatch):
  """No array is read back to the host anywhere in the loop except where a window is written,
  an evaluation or checkpoint is made, or a phase or the run ends (JAX's transfer guard does
  not see reads on the CPU, whose arrays are in host memory already). Waiting for a step
  launched a few steps before, which reads nothing, is allowed."""
  allowed = threading.local()
  reads = []

  def refusing(method):
    def read(self, *args, **kwargs):
      if threading.current_thread() is threading.main_thread() and not getattr(
          allowed, "on", False):
        reads.append(method.__name__)
        raise AssertionError(f"the loop read an array to the host ({method.__name__})")
      return method(self, *args, **kwargs)
    return read

  allowing = lambda fn: _with_reads(fn, allowed, True)

  from jax._src import array
  value = array.ArrayImpl._value.fget
  monkeypatch.setattr(array.ArrayImpl, "_value", property(refusing(value)))
  for name in ("__array__", "item"):
    monkeypatch.setattr(array.ArrayImpl, name, refusing(getattr(array.ArrayImpl, name)))
  for name in ("_log_window", "_evaluate_now", "_save", "_end_phase", "_finish"):
    monkeypatch.setattr(train, name, allowing(getattr(train, name)))
  config = tiny_config(data_dir, fade_images=64, stable_images=64, log_every_steps=3,
                       anneal_images=64)
  # The set-up may read (a restored checkpoint, the held-out images); each phase may not.
  monkeypatch.setattr(train, "_train_phase", _with_reads(train._train_phase, allowed, False))
  result = allowing(train.train_and_evaluate)(config, str(tmp_path), progress=False)
  assert not reads
  assert result.images_seen == 192 and len(_records(str(tmp_path), "train")) == 6


def _with_reads(fn, allowed, on: bool):
  """`fn` with reads of arrays to the host allowed (`on`) or refused while it runs."""
  def call(*args, **kwargs):
    before, allowed.on = getattr(allowed, "on", False), on
    try:
      return fn(*args, **kwargs)
    finally:
      allowed.on = before
  return call


def test_the_timings_account_for_the_run(run):
  _, _, result, _, _ = run
  seconds = result.timings.seconds
  assert set(seconds) == set(train.Timings.KINDS)
  assert all(v >= 0 for v in seconds.values()) and seconds["evaluate"] > 0
  assert seconds["pictures"] > 0  # Drawn in the background thread, and waited for.
  assert [kind for _, kind, _ in result.timings.events].count("phase_end") == 3
