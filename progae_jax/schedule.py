"""The training plan: per-resolution schedules in images seen, and where alpha stands.

Everything is counted in images, not steps, so a plan means the same thing at any batch size
and on any hardware. A run is a list of phases:

    4x4 stable -> 8x8 fade -> 8x8 stable -> 16x16 fade -> 16x16 stable -> ...

and the position of a run is one integer, the images seen so far: the phase, alpha and
learning rate all follow from it, which is what makes resuming mid-fade exact.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal, Mapping

from progae_jax.config import (MIN_RESOLUTION, ModelConfig, check_field, check_ints,
                               check_keys, is_int, is_number, resolution_key)


# What `optimizer_on_growth` may be (see TrainConfig).
OPTIMIZER_POLICIES = ("carry", "reset", "reset_twice")
# What `bias_correction` may be (see TrainConfig and optim.py).
BIAS_CORRECTIONS = ("per_leaf", "shared")
# What `optimizer_on_widening` may be (see TrainConfig and widen.py).
WIDENING_POLICIES = ("split", "fresh")


@dataclasses.dataclass(frozen=True)
class StageSchedule:
  """How one resolution is trained."""
  # Images over which alpha ramps from 0 to 1 after growing to this resolution (not used at
  # 4x4). 0: no fade, the new resolution's path takes over at once.
  fade_images: int = 20_000
  # Images trained at alpha = 1 once the fade is finished.
  stable_images: int = 20_000
  # Global batch size (summed over all devices and processes).
  batch_size: int = 64
  # Adam's learning rate for this stage (set without recompiling, via inject_hyperparams).
  learning_rate: float = 1e-3

  def __post_init__(self):
    check_ints(self, ("fade_images", "stable_images"), 0)
    check_ints(self, ("batch_size",), 1)
    lr = self.learning_rate
    check_field(self, "learning_rate", is_number(lr) and 0 < lr < 1, "must be in (0, 1)")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything a run needs; saved whole in every checkpoint's metadata."""
  # The architecture (its max_resolution is the final stage).
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  # Dataset name: a built-in one ('digits', 'image_patches') or any prepared tfds dataset.
  dataset: str = "image_patches"
  # Extra keyword options for the data layer (e.g. {"fit": "pad"} for 28x28 mnist).
  dataset_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  # Where tfds datasets live (None: tfds's default directory).
  data_dir: str | None = None
  # Schedule per resolution; resolutions not listed use `default_stage`.
  stages: Mapping[int, StageSchedule] = dataclasses.field(default_factory=dict)
  # The schedule of every resolution without an entry in `stages`.
  default_stage: StageSchedule = dataclasses.field(default_factory=StageSchedule)
  # What happens to Adam's moments at growth: 'carry' kept leaves' moments, 'reset' all, or
  # 'reset_twice' (ProGAN's): reset at growth and again when the fade ends.
  optimizer_on_growth: Literal["carry", "reset", "reset_twice"] = "carry"
  # Adam's bias correction: 'per_leaf' (each weight counts its own steps, so the leaves that
  # growth adds start as Adam starts; optim.py) or 'shared' (optax's one count for all).
  bias_correction: Literal["per_leaf", "shared"] = "per_leaf"
  # Widenings (widen.py): {R: {r: channels}} widens resolution r to `channels` when R's stable
  # phase begins (after R's fade), keeping the function; a resolution not grown yet is grown
  # at its new width. E.g. {16: {4: 256, 8: 256, 16: 128}}. R cannot be the first stage.
  widen: Mapping[int, Mapping[int, int]] = dataclasses.field(default_factory=dict)
  # The symmetry-breaking noise of a widening, relative to each layer's weight spread. It
  # sums to zero over each unit's copies, so the function is kept whatever its size; without
  # it the copies of a unit would get the same gradients forever.
  widen_noise: float = 0.1
  # Adam's state at a widening: 'split' (moments copied and scaled like the gradients, counts
  # kept) or 'fresh' (the widened leaves start afresh).
  optimizer_on_widening: Literal["split", "fresh"] = "split"
  # Adam's second-moment decay (its memory is about 1 / (1 - adam_b2) steps).
  adam_b2: float = 0.999
  # Clip the gradient's global norm to this before Adam (None: no clipping).
  clip_grad_norm: float | None = None
  # During a fade, the new resolution's block and adapters take steps this many times the
  # phase's learning rate (optim.boost_fading_in; 1: the same steps as every other weight).
  fade_lr_boost: float = 1.0
  # The run's last this many images train with the learning rate annealed from the phase's
  # to 0 along a cosine (0: no annealing). Longer than the whole run: its last phase
  # (`annealing_window`; the run says so when it starts).
  anneal_images: int = 0
  # Alpha's ramp over a fade: 'linear', or 'smooth' (smoothstep: gentle at both ends).
  alpha_ramp: Literal["linear", "smooth"] = "linear"
  # Decay of the parameters' exponential moving average (None: no EMA). Evaluation uses it.
  ema_decay: float | None = 0.99
  # Held-out evaluation every this many images (and always at the end of every phase).
  eval_every_images: int = 50_000
  # How many held-out images an evaluation uses.
  eval_images: int = 256
  # Training metrics are logged (and checked for NaN) every this many steps.
  log_every_steps: int = 20
  # Save a checkpoint every this many images (and always at the end of every phase).
  checkpoint_every_images: int = 20_000
  # How many recent checkpoints to keep (the best by held-out PSNR is kept as well).
  keep_checkpoints: int = 2
  # Compute dtype of the model ('float32' or 'bfloat16'); parameters stay float32.
  compute_dtype: str = "float32"
  # Deterministic GPU kernels (XLA's --xla_gpu_deterministic_ops): the same bits on every run
  # of a config. Set before JAX starts (`progae train --deterministic`; compilation.py); the
  # CPU's kernels are deterministic already.
  deterministic: bool = False
  # Seed of initialisation, growth and data order.
  seed: int = 0

  def __post_init__(self):
    if not isinstance(self.model, ModelConfig):
      raise ValueError(f"TrainConfig.model must be a ModelConfig, got {type(self.model)}")
    stages = {int(r): (s if isinstance(s, StageSchedule) else StageSchedule(**s))
              for r, s in dict(self.stages).items()}
    unknown = sorted(set(stages) - set(self.model.resolutions))
    if unknown:
      raise ValueError(f"TrainConfig.stages has resolutions {unknown} that are not stages of "
                       f"the model {self.model.resolutions}")
    object.__setattr__(self, "stages", stages)
    object.__setattr__(self, "dataset_options", dict(self.dataset_options))
    self._check_widenings()
    check_field(self, "optimizer_on_growth", self.optimizer_on_growth in OPTIMIZER_POLICIES,
                f"must be one of {', '.join(OPTIMIZER_POLICIES)}")
    check_field(self, "bias_correction", self.bias_correction in BIAS_CORRECTIONS,
                f"must be one of {', '.join(BIAS_CORRECTIONS)}")
    check_field(self, "adam_b2", is_number(self.adam_b2) and 0 < self.adam_b2 < 1,
                "must be in (0, 1)")
    clip = self.clip_grad_norm
    check_field(self, "clip_grad_norm", clip is None or (is_number(clip) and clip > 0),
                "must be a positive number or None")
    boost = self.fade_lr_boost
    check_field(self, "fade_lr_boost", is_number(boost) and 0 < boost <= 100,
                "must be a number in (0, 100]")
    check_field(self, "alpha_ramp", self.alpha_ramp in ("linear", "smooth"),
                "must be 'linear' or 'smooth'")
    decay = self.ema_decay
    check_field(self, "ema_decay", decay is None or (is_number(decay) and 0 < decay < 1),
                "must be in (0, 1) or None")
    check_field(self, "compute_dtype", self.compute_dtype in ("float32", "bfloat16"),
                "must be 'float32' or 'bfloat16'")
    check_field(self, "deterministic", isinstance(self.deterministic, bool), "must be a bool")
    check_ints(self, ("eval_every_images", "eval_images", "log_every_steps",
                      "checkpoint_every_images", "keep_checkpoints"), 1)
    check_ints(self, ("seed", "anneal_images"), 0)

  def _check_widenings(self) -> None:
    """`widen` as {int: {int: int}}: each at a stage's stable phase after the first, each
    resolution widened to at least the channels it has by then."""
    check_keys(self.widen, None, "widen")
    widen = {resolution_key(at, "widen"): {resolution_key(r, f"widen.{at}"): c
                                           for r, c in check_keys(w, None, f"widen.{at}").items()}
             for at, w in self.widen.items()}
    object.__setattr__(self, "widen", dict(sorted(widen.items())))
    model = self.model.resolutions
    for at, channels in self.widen.items():
      check_field(self, "widen", at in model and at > MIN_RESOLUTION,
                  f"widens at {at}, which is not a stage after the first of {model}")
      have = dict(model_at(self, at, fading=True).channels)
      for r, c in channels.items():
        check_field(self, "widen", r in model,
                    f"widens resolution {r} at {at}, but the model's resolutions are {model}")
        check_field(self, "widen", is_int(c, have[r]),
                    f"widens resolution {r} at {at} to {c!r} channels; it has {have[r]} by "
                    "then, and widening needs an integer at least that")
    last = self.model.max_resolution
    check_field(self, "widen", last not in self.widen or self.stage(last).stable_images > 0,
                f"widens at {last}, whose stable phase trains on no images")
    check_field(self, "widen_noise", is_number(self.widen_noise) and self.widen_noise >= 0,
                "must be a number >= 0")
    check_field(self, "optimizer_on_widening",
                self.optimizer_on_widening in WIDENING_POLICIES,
                f"must be one of {', '.join(WIDENING_POLICIES)}")

  def stage(self, resolution: int) -> StageSchedule:
    return self.stages.get(resolution, self.default_stage)

  def to_dict(self) -> dict:
    d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    d["model"] = self.model.to_dict()
    d["stages"] = {str(r): dataclasses.asdict(s) for r, s in self.stages.items()}
    d["default_stage"] = dataclasses.asdict(self.default_stage)
    d["widen"] = {str(at): {str(r): c for r, c in w.items()} for at, w in self.widen.items()}
    return d

  @classmethod
  def from_dict(cls, d: Any) -> "TrainConfig":
    """Inverts `to_dict`, strictly: a key that is not a field, at any level, is one
    `ConfigError` naming the key, where it was and the keys allowed there."""
    d = dict(check_keys(d, [f.name for f in dataclasses.fields(cls)], ""))
    if "model" in d:
      d["model"] = ModelConfig.from_dict(d["model"])
    if "default_stage" in d:
      d["default_stage"] = _stage_from_dict(d["default_stage"], "default_stage")
    if "stages" in d:
      d["stages"] = {resolution_key(r, "stages"): _stage_from_dict(s, f"stages.{r}")
                     for r, s in check_keys(d["stages"], None, "stages").items()}
    if "dataset_options" in d:
      from progae_jax.data import DATASET_OPTIONS  # tfds is imported only when options are
      check_keys(d["dataset_options"], DATASET_OPTIONS, "dataset_options")
    return cls(**d)


def model_at(config: TrainConfig, resolution: int, fading: bool) -> ModelConfig:
  """The model in force at a stage: `config.model` widened by every widening at or before it
  (a widening at R happens as R's stable phase begins)."""
  channels = dict(config.model.channels)
  for at, widths in config.widen.items():
    if at < resolution or (at == resolution and not fading):
      channels.update(widths)
  if channels == dict(config.model.channels):
    return config.model
  return dataclasses.replace(config.model, channels=channels)


def _stage_from_dict(d: Any, where: str) -> StageSchedule:
  return StageSchedule(**check_keys(d, [f.name for f in dataclasses.fields(StageSchedule)],
                                    where))


@dataclasses.dataclass(frozen=True)
class Phase:
  """One phase of a run: a resolution, fading or stable, over [start, end) images seen."""
  index: int
  resolution: int
  fading: bool
  start: int  # images seen when the phase begins
  steps: int
  batch_size: int
  learning_rate: float

  @property
  def end(self) -> int:
    return self.start + self.steps * self.batch_size

  @property
  def name(self) -> str:
    return f"{self.resolution}x{self.resolution} {'fade' if self.fading else 'stable'}"


def phases(config: TrainConfig) -> list[Phase]:
  """The whole run, phase by phase. A phase's images are rounded up to whole batches."""
  out, start = [], 0
  for r in config.model.resolutions:
    s = config.stage(r)
    for fading, images in ((True, s.fade_images), (False, s.stable_images)):
      if fading and r == MIN_RESOLUTION:
        continue  # Nothing to fade in at the first stage.
      steps = math.ceil(images / s.batch_size)
      if steps == 0:  # No fade: growth and the fade's end happen back to back.
        continue
      out.append(Phase(len(out), r, fading, start, steps, s.batch_size, s.learning_rate))
      start = out[-1].end
  if not out:
    raise ValueError("the schedule trains on no images at all")
  return out


def phase_at(plan: list[Phase], images_seen: int) -> Phase | None:
  """The phase that the next step belongs to (None once the run is complete)."""
  for phase in plan:
    if images_seen < phase.end:
      return phase
  return None


def annealing_window(config: TrainConfig) -> int:
  """The images the learning rate anneals over: `anneal_images`, unless that is longer than
  the whole run; then the run's last phase (what the main preset anneals, its last stable
  phase), so that a shortened schedule never starts at a fraction of its learning rate."""
  plan = phases(config)
  if config.anneal_images <= plan[-1].end:
    return config.anneal_images
  return plan[-1].end - plan[-1].start


def annealing_note(config: TrainConfig) -> str | None:
  """The line that says the annealing was fitted to the run (None where it was not)."""
  window = annealing_window(config)
  if window == config.anneal_images:
    return None
  return (f"anneal_images={config.anneal_images:,} is longer than this run "
          f"({phases(config)[-1].end:,} images): the learning rate anneals over the run's "
          f"last phase ({window:,} images) instead")


def learning_rate_at(config: TrainConfig, phase: Phase, images_seen: int) -> float:
  """The learning rate of the step that starts at `images_seen`: the phase's, times a cosine
  from 1 to 0 over the run's last `annealing_window(config)` images."""
  window = annealing_window(config) if config.anneal_images else 0
  if not window:
    return phase.learning_rate
  end = phases(config)[-1].end
  t = min(max((images_seen - (end - window)) / window, 0.0), 1.0)
  return phase.learning_rate * 0.5 * (1.0 + math.cos(math.pi * t))


def alpha_at(phase: Phase, images_seen: int, ramp: str = "linear") -> float:
  """Alpha of the step that starts at `images_seen`: 0 at a fade's first step, toward 1 at its
  end; 1 in a stable phase."""
  if not phase.fading:
    return 1.0
  t = (images_seen - phase.start) / (phase.end - phase.start)
  t = min(max(t, 0.0), 1.0)
  return t * t * (3 - 2 * t) if ramp == "smooth" else t
