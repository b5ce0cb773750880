import pytest

from progae_jax import ModelConfig
from progae_jax.schedule import (StageSchedule, TrainConfig, alpha_at, annealing_note,
                                 annealing_window, learning_rate_at, phase_at, phases)


def _config(**kw):
  return TrainConfig(model=ModelConfig(max_resolution=16, channels={4: 8, 8: 8, 16: 8}),
                     default_stage=StageSchedule(fade_images=100, stable_images=64,
                                                 batch_size=32), **kw)


def test_the_plan_goes_stable_grow_fade_stable_in_images_seen():
  plan = phases(_config(stages={8: {"fade_images": 64, "stable_images": 0, "batch_size": 16,
                                    "learning_rate": 5e-4}}))
  assert [p.name for p in plan] == ["4x4 stable", "8x8 fade", "16x16 fade", "16x16 stable"]
  assert [p.start for p in plan] == [0, 64, 128, 256]  # 100 images round up to 4 batches of 32
  assert plan[1].batch_size == 16 and plan[1].learning_rate == 5e-4 and plan[1].steps == 4
  assert plan[-1].end == 320
  assert phase_at(plan, 0) is plan[0] and phase_at(plan, 127) is plan[1]
  assert phase_at(plan, 128) is plan[2] and phase_at(plan, 320) is None


def test_alpha_ramps_over_the_fade_and_is_one_when_stable():
  plan = phases(_config())
  fade = plan[1]
  alphas = [alpha_at(fade, fade.start + k * fade.batch_size) for k in range(fade.steps)]
  assert alphas[0] == 0.0 and alphas == sorted(alphas) and alphas[-1] < 1.0
  assert alpha_at(plan[0], 10) == 1.0
  smooth = [alpha_at(fade, fade.start + k * fade.batch_size, "smooth") for k in range(fade.steps)]
  assert smooth[0] == 0.0 and smooth[1] < alphas[1]  # gentle start


def test_the_learning_rate_anneals_over_the_runs_last_images_only():
  config = _config(anneal_images=128)
  plan = phases(config)  # 448 images: annealed from 320 on.
  assert plan[-1].end == 448
  assert learning_rate_at(_config(), plan[-1], 416) == plan[-1].learning_rate  # Off.
  rates = [learning_rate_at(config, phase_at(plan, i), i) for i in range(0, 448, 32)]
  assert rates[:11] == [1e-3] * 11  # Up to 320 images: the phases' rate.
  assert rates[10:] == sorted(rates[10:], reverse=True) and rates[11] < 1e-3
  assert rates[12] == pytest.approx(0.5e-3) and 0 < rates[-1] < 0.2e-3  # Half-way: half.


def test_an_annealing_longer_than_the_run_anneals_its_last_phase_only():
  """The main preset's 25,600 images on a 448-image run: not a run that starts at a sliver of
  its learning rate, but the last phase annealed, and a line that says so."""
  config = _config(anneal_images=25_600)
  plan = phases(config)
  last = plan[-1]
  assert annealing_window(config) == last.end - last.start == 64
  assert all(learning_rate_at(config, p, p.start) == p.learning_rate for p in plan)
  assert learning_rate_at(config, last, last.end - 32) == pytest.approx(0.5e-3)
  assert annealing_note(config) == (
      "anneal_images=25,600 is longer than this run (448 images): the learning rate anneals "
      "over the run's last phase (64 images) instead")
  assert annealing_note(_config(anneal_images=448)) is None  # The whole run: as asked.
  assert annealing_window(_config(anneal_images=448)) == 448


def test_config_round_trips_through_json_dict():
  config = _config(stages={8: StageSchedule(batch_size=8)}, ema_decay=None)
  assert TrainConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("kw, match", [
    ({"optimizer_on_growth": "keep"}, "optimizer_on_growth"),
    ({"alpha_ramp": "cubic"}, "alpha_ramp"),
    ({"ema_decay": 1.5}, "ema_decay"),
    ({"compute_dtype": "float16"}, "compute_dtype"),
    ({"stages": {32: {}}}, "resolutions \\[32\\]"),
    ({"eval_images": 0}, "eval_images"),
    ({"anneal_images": -1}, "anneal_images"),
    ({"bias_correction": "none"}, "bias_correction"),
    ({"adam_b2": 1.0}, "adam_b2"),
    ({"clip_grad_norm": 0}, "clip_grad_norm"),
    ({"fade_lr_boost": 0}, "fade_lr_boost"),
])
def test_bad_train_configs(kw, match):
  with pytest.raises(ValueError, match=match):
    _config(**kw)


@pytest.mark.parametrize("kw", [{"batch_size": 0}, {"learning_rate": 2.0},
                                {"fade_images": -1}])
def test_bad_stage_schedules(kw):
  with pytest.raises(ValueError, match="StageSchedule"):
    StageSchedule(**kw)


def test_a_fade_without_images_means_growing_without_a_fade():
  plan = phases(_config(stages={8: {"fade_images": 0}}))
  assert [p.name for p in plan if p.resolution == 8] == ["8x8 stable"]
  assert [p.name for p in plan if p.resolution == 16] == ["16x16 fade", "16x16 stable"]
