"""`progae`: train, inspect, reconstruct, bench.

    progae train                       # the main job: image_patches, RGB, 4x4 -> 32x32
    progae train --preset digits       # the seed's case: 8x8 grayscale digits, 4x4 -> 8x8
    progae train --workdir W           # resumes W from its latest checkpoint, if it has one
    progae inspect W                   # stage, images seen, metrics, parameter table
    progae reconstruct W --dataset image_patches --out recon.png
    progae bench --vs-torch ../shared/bench/torch_ref.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys

# Per-preset TrainConfig fields; flags and --config override them.
PRESETS = {
    # The main job: finishes in under 10 minutes on a 2-core CPU (see README for the numbers).
    "main": {"dataset": "image_patches", "max_resolution": 32, "batch_size": 64,
             "fade_images": 12_800, "stable_images": 12_800, "learning_rate": 3e-4,
             "stages": {"4": {"fade_images": 0, "stable_images": 12_800, "batch_size": 64,
                              "learning_rate": 1e-3},
                        "16": {"fade_images": 12_800, "stable_images": 19_200,
                               "batch_size": 64, "learning_rate": 3e-4},
                        "32": {"fade_images": 12_800, "stable_images": 25_600,
                               "batch_size": 64, "learning_rate": 3e-4}},
             # Short CPU runs: an EMA of the weights lagged the weights by ~2 dB held-out PSNR.
             "ema_decay": None,
             "eval_every_images": 25_600, "checkpoint_every_images": 12_800},
    # The seed's own case: 1,797 8x8 grayscale digits, trained at 4x4 then grown to 8x8.
    "digits": {"dataset": "digits", "max_resolution": 8, "batch_size": 64,
               "fade_images": 20_000, "stable_images": 40_000, "learning_rate": 3e-4,
               "stages": {"4": {"fade_images": 0, "stable_images": 40_000, "batch_size": 64,
                                "learning_rate": 1e-3}},
               "ema_decay": None,
               "eval_every_images": 20_000, "checkpoint_every_images": 20_000},
}


def _int_at_least(minimum: int):
  """An argparse type: an integer (underscores allowed, 20_000) no smaller than `minimum`."""

  def parse(text: str) -> int:
    try:
      value = int(text.replace("_", ""))
    except ValueError:
      raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < minimum:
      raise argparse.ArgumentTypeError(f"{text!r} must be at least {minimum}")
    return value

  return parse


_positive_int, _non_negative_int = _int_at_least(1), _int_at_least(0)


def _rate(text: str) -> float:
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
  if not 0 < value < 1:
    raise argparse.ArgumentTypeError(f"{text!r} must be in (0, 1)")
  return value


def _train_parser(sub) -> None:
  from progae_jax.schedule import OPTIMIZER_POLICIES
  p = sub.add_parser("train", help="train a model progressively (resumes a work directory)")
  p.add_argument("--preset", choices=sorted(PRESETS), default="main",
                 help="starting point for every option below (default: main)")
  p.add_argument("--config", metavar="FILE.json",
                 help="JSON with TrainConfig fields, e.g. per-stage schedules: "
                      '{"stages": {"16": {"batch_size": 32, "learning_rate": 5e-4}}}')
  p.add_argument("--dataset", help="digits, image_patches, or a prepared tfds dataset")
  p.add_argument("--data-dir", help="where tfds datasets are (default: tfds's own)")
  p.add_argument("--fit", choices=("pad", "resize"),
                 help="how non-power-of-two images (mnist's 28x28) reach the next power of two")
  p.add_argument("--max-resolution", type=_positive_int, help="final resolution (power of 2)")
  p.add_argument("--workdir", help="checkpoints, metrics and pictures (default: runs/PRESET)")
  p.add_argument("--batch-size", type=_positive_int, help="global batch size, every stage")
  p.add_argument("--fade-images", type=_non_negative_int, help="images per fade, every stage")
  p.add_argument("--stable-images", type=_non_negative_int,
                 help="images per stable phase, every stage")
  p.add_argument("--learning-rate", type=_rate, help="Adam's learning rate, every stage")
  p.add_argument("--seed", type=_non_negative_int)
  p.add_argument("--optimizer-on-growth", choices=OPTIMIZER_POLICIES,
                 help="carry Adam's moments of kept weights at growth (default), reset all, "
                      "or reset at growth and again at the fade's end (ProGAN)")
  p.add_argument("--alpha-ramp", choices=("linear", "smooth"))
  p.add_argument("--ema-decay", type=_rate, help="EMA of the weights used for evaluation")
  p.add_argument("--no-ema", action="store_true", help="no EMA of the weights")
  p.add_argument("--eval-every-images", type=_positive_int)
  p.add_argument("--checkpoint-every-images", type=_positive_int)
  p.add_argument("--keep-checkpoints", type=_positive_int)
  p.add_argument("--compute-dtype", choices=("float32", "bfloat16"))
  p.add_argument("--restart", action="store_true",
                 help="ignore (and replace) the work directory's checkpoints")
  p.add_argument("--stop-after-images", type=_positive_int,
                 help="save and stop once this many images are seen (resume later)")
  p.add_argument("--resume-from-step", type=_non_negative_int, metavar="N",
                 help="resume from checkpoint N (images seen), an earlier one than the latest "
                      "(when the latest is damaged); the later checkpoints are replaced")
  p.add_argument("--num-devices", type=_positive_int, help="use only this many local devices")
  p.add_argument("--cpu-devices", type=_non_negative_int,
                 help="on the CPU: host devices to split each batch over (default: one per "
                      "core, as many as divide every batch size; 0: JAX's default of one)")
  p.add_argument("--no-malloc-tuning", action="store_true",
                 help="on the CPU: keep glibc's malloc defaults (see progae_jax/cpu.py)")
  p.add_argument("--coordinator", metavar="HOST:PORT", help="multi-host: jax.distributed "
                 "coordinator (or JAX_COORDINATOR_ADDRESS)")
  p.add_argument("--num-processes", type=_positive_int)
  p.add_argument("--process-id", type=int)
  p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_config(args) -> "TrainConfig":
  """Preset, then --config file, then flags: each overrides the one before."""
  fields = json.loads(json.dumps(PRESETS[args.preset]))
  if args.max_resolution is not None:  # The preset's entries for stages never reached go.
    fields["stages"] = {r: s for r, s in fields.get("stages", {}).items()
                        if int(r) <= args.max_resolution}
  if args.config:
    try:
      with open(args.config) as f:
        fields.update(json.load(f))
    except (OSError, json.JSONDecodeError) as e:
      raise ValueError(f"--config {args.config}: {e}") from None
  # Flags named like the TrainConfig (or StageSchedule) field they set.
  flag_fields = ("dataset", "data_dir", "max_resolution", "batch_size", "fade_images",
                 "stable_images", "learning_rate", "seed", "optimizer_on_growth", "alpha_ramp",
                 "ema_decay", "eval_every_images", "checkpoint_every_images",
                 "keep_checkpoints", "compute_dtype")
  for field in flag_fields:
    value = getattr(args, field, None)
    if value is None:
      continue
    fields[field] = value
    if field in _STAGE_FIELDS:  # A flag means "every stage": per-stage entries give way to it.
      for stage in fields.get("stages", {}).values():
        stage[field] = value
  if args.no_ema:
    fields["ema_decay"] = None
  if args.fit:
    fields["dataset_options"] = dict(fields.get("dataset_options", {}), fit=args.fit)
  return config_from_fields(fields)


_STAGE_FIELDS = ("fade_images", "stable_images", "batch_size", "learning_rate")


def config_from_fields(fields: dict) -> "TrainConfig":
  """The TrainConfig of a preset's or `--config` file's fields: TrainConfig's own, `model`
  (ModelConfig's), `max_resolution`, and the default StageSchedule's (`batch_size`, ...).
  The model's image channels default to the dataset's."""
  from progae_jax import data
  from progae_jax.config import ModelConfig
  from progae_jax.schedule import StageSchedule, TrainConfig

  fields = json.loads(json.dumps(fields))
  options = fields.pop("dataset_options", {})
  spec = data.dataset_info(fields["dataset"], data_dir=fields.get("data_dir"), **options)
  model_fields = fields.pop("model", {})
  model_fields.setdefault("image_channels", spec.channels)
  model_fields["max_resolution"] = fields.pop("max_resolution", model_fields.get(
      "max_resolution", 32))
  default_stage = StageSchedule(**{k: fields.pop(k) for k in _STAGE_FIELDS if k in fields})
  return TrainConfig(model=ModelConfig.from_dict(model_fields), default_stage=default_stage,
                     dataset_options=options, **fields)


def _set_up_cpu(args, config) -> None:
  """One CPU device per core and tuned malloc, if this process is still ours to set up."""
  from progae_jax import cpu
  from progae_jax.schedule import phases
  warnings = cpu.set_up((p.batch_size for p in phases(config)), args.cpu_devices,
                        malloc=not args.no_malloc_tuning)
  for warning in warnings:
    print(f"progae train: warning: {warning}", file=sys.stderr)


def cmd_train(args) -> int:
  from progae_jax import parallel, preemption, train
  from progae_jax.schedule import phases

  config = build_config(args)
  _set_up_cpu(args, config)
  parallel.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
  workdir = args.workdir if args.workdir is not None else os.path.join(
      "runs", args.preset if args.dataset is None else config.dataset)
  mesh = parallel.make_mesh(args.num_devices)
  result = train.train_and_evaluate(config, workdir, restart=args.restart, mesh=mesh,
                                    progress=not args.quiet,
                                    stop_after_images=args.stop_after_images,
                                    resume_from_step=args.resume_from_step)
  if result.stopped_by:
    return preemption.EXIT_STATUS[result.stopped_by]
  finished = result.images_seen >= phases(config)[-1].end
  if parallel.is_main_process() and finished and result.final_eval:
    e = result.final_eval
    print(f"final held-out PSNR: {e['psnr']:.2f} dB (SSIM {e['ssim']:.3f}) at "
          f"{e['resolution']}x{e['resolution']} after {result.images_seen:,} images")
    if result.pictures:
      print(f"reconstructions: {os.path.abspath(result.pictures[-1])}")
  return 0


def cmd_inspect(args) -> int:
  from progae_jax import checkpoint, summary
  from progae_jax.metrics_log import FILENAME

  state, meta = checkpoint.restore(args.path, args.step)
  alpha = f" (alpha {meta['alpha']:.3f})" if "alpha" in meta else ""
  print(f"checkpoint: {meta['images_seen']:,} images seen, stage {meta['resolution']}x"
        f"{meta['resolution']} {meta['phase']}{alpha}, step {int(state['step'])}, "
        f"dataset {meta['config']['dataset']}, progae_jax {meta.get('version')}")
  directory, _ = checkpoint.locate(args.path)
  workdir = os.path.dirname(directory)
  records = [r for r in _metrics_beside(os.path.join(workdir, FILENAME))
             if r.get("images_seen", 0) <= meta["images_seen"]]
  evals = [r for r in records if r["kind"] == "eval"]
  if evals:
    print("held-out evaluations:")
    for r in evals:
      print(f"  {r['images_seen']:>9,} images  {r['resolution']:>3}x{r['resolution']:<3} "
            f"{r['phase']:<6} alpha {r['alpha']:.2f}  MSE {r['mse']:.5f}  "
            f"PSNR {r['psnr']:.2f} dB  SSIM {r['ssim']:.3f}")
  elif "metrics" in meta:
    print(f"held-out PSNR at this checkpoint: {meta['metrics']['psnr']:.2f} dB "
          "(no metrics.jsonl beside it)")
  else:
    print("no saved metrics beside this checkpoint")
  print("parameters:")
  print(summary.param_table(state["params"]))
  return 0


def _metrics_beside(path: str) -> list[dict]:
  """The records `inspect` shows; a metrics file it cannot read is a warning, never an error:
  the checkpoint is what it inspects."""
  from progae_jax.metrics_log import read_metrics
  try:
    records = read_metrics(path, warn=lambda line: print(f"progae inspect: warning: {line}",
                                                         file=sys.stderr))
  except (OSError, ValueError) as e:
    print(f"progae inspect: warning: metrics not shown: {e}", file=sys.stderr)
    return []
  return [r for r in records if r.get("kind") in ("train", "eval")]


def cmd_reconstruct(args) -> int:
  import numpy as np
  from progae_jax import checkpoint, data, plots
  from progae_jax.model import apply, stage_of
  from progae_jax.schedule import TrainConfig

  state, meta = checkpoint.restore(args.path, args.step)
  config = TrainConfig.from_dict(meta["config"])
  params = state["ema"] if "ema" in state and not args.no_ema else state["params"]
  stage = stage_of(params)
  dataset = args.dataset or config.dataset
  options = dict(config.dataset_options) if dataset == config.dataset else {}
  images = data.eval_images(dataset, resolution=stage.resolution, count=args.count,
                            data_dir=args.data_dir or config.data_dir, **options)
  if images.shape[-1] != config.model.image_channels:
    raise ValueError(f"{dataset!r} has {images.shape[-1]} channel(s) but the checkpoint's model "
                     f"takes {config.model.image_channels}")
  # Mid-fade, the model is shown as it was trained at that moment: at the saved alpha.
  recon, _ = apply(config.model, params, images, meta.get("alpha", 1.0))
  out = args.out
  if os.path.isdir(out):
    out = os.path.join(out, f"reconstructions_{meta['images_seen']}.png")
  elif not os.path.splitext(out)[1]:
    out += ".png"  # What the PNG writer would name it anyway.
  plots.save_reconstructions(out, images, np.asarray(recon),
                             title=f"{dataset} at {stage}, {meta['images_seen']:,} images")
  print(f"wrote {out}")
  return 0


def train_config(argv: list[str]) -> "TrainConfig":
  """The TrainConfig that `progae train ARGV` would train (nothing is run)."""
  return build_config(_parser().parse_args(["train", *argv]))


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="progae", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  _train_parser(sub)
  p = sub.add_parser("inspect", help="what a checkpoint holds")
  p.add_argument("path", help="a work directory or one checkpoint's folder")
  p.add_argument("--step", type=int, help="checkpoint to read (images seen); default latest")
  p = sub.add_parser("reconstruct", help="a PNG of held-out originals and reconstructions")
  p.add_argument("path", help="a work directory or one checkpoint's folder")
  p.add_argument("--dataset", help="images to reconstruct (default: the run's dataset)")
  p.add_argument("--data-dir")
  p.add_argument("--out", required=True,
                 help="the PNG to write, or a folder to write reconstructions_STEP.png in")
  p.add_argument("--count", type=_positive_int, default=16)
  p.add_argument("--step", type=int)
  p.add_argument("--no-ema", action="store_true", help="use the raw weights, not their EMA")
  sub.add_parser("bench", help="training speed per stage (--help for its options)",
                 add_help=False)
  return parser


def main(argv=None) -> int:
  parser = _parser()
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv and argv[0] == "bench":
    from progae_jax import bench
    return bench.main(argv[1:])
  args = parser.parse_args(argv)
  from progae_jax.checkpoint import CheckpointError
  from progae_jax.data import DataError
  from progae_jax.train import NonFiniteLossError
  from progae_jax.workdir import WorkdirError
  try:
    return {"train": cmd_train, "inspect": cmd_inspect,
            "reconstruct": cmd_reconstruct}[args.command](args)
  except (CheckpointError, DataError, ValueError, WorkdirError, NonFiniteLossError) as e:
    print(f"progae {args.command}: error: {e}", file=sys.stderr)
    return 2
  except OSError as e:  # A full disk, a folder that vanished: the file and the reason.
    where = f"{e.filename}: " if e.filename else ""
    print(f"progae {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
