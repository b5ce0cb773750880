"""`progae`: train, inspect, reconstruct, bench; encode, decode, interpolate, export.

    progae train                       # the main job: image_patches, RGB, 4x4 -> 32x32
    progae train --preset digits       # the seed's case: 8x8 grayscale digits, 4x4 -> 8x8
    progae train --workdir W           # resumes W from its latest checkpoint, if it has one
    progae inspect W                   # stage, images seen, metrics, parameter table
    progae reconstruct W --dataset image_patches --out recon.png
    progae prepare ~/photos --data-resolution 64   # a folder of images, ahead of training
    progae bench --vs-torch            # speed per stage, beside the PyTorch reference
    progae encode W photos/ --out latents.npz     # a trained run put to use (docs/using.md):
    progae export W --out exported/               #   also decode, interpolate, reconstruct --images
"""

from __future__ import annotations

import argparse
import errno
import os
import sys

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
  from progae_jax import config_files
  from progae_jax.schedule import OPTIMIZER_POLICIES
  p = sub.add_parser("train", help="train a model progressively (resumes a work directory)")
  p.add_argument("--preset", choices=config_files.preset_names(),
                 help="starting point for every option below: progae_jax/configs/PRESET.py "
                      "(default: main, unless --config is given)")
  p.add_argument("--config", metavar="FILE",
                 help="TrainConfig fields: a .py file with get_config() (as "
                      "progae_jax/configs/*.py) or a .json file; merged over --preset if "
                      "both are given. --config.KEY=VALUE sets any field, e.g. "
                      "--config.model.latent_dim=64 --config.stages.16.batch_size=32")
  p.add_argument("--dataset", help="digits, image_patches, a folder of images, or a prepared "
                 "tfds dataset")
  p.add_argument("--data-dir", help="where tfds datasets are (default: tfds's own)")
  p.add_argument("--fit", choices=("pad", "resize"),
                 help="how non-power-of-two images (mnist's 28x28) reach the next power of two")
  p.add_argument("--max-resolution", type=_positive_int, help="final resolution (power of 2)")
  _folder_flags(p, "default: --max-resolution")
  p.add_argument("--workdir", help="checkpoints, metrics and pictures (default: runs/PRESET, "
                 "runs/CONFIG_NAME or runs/DATASET)")
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
  p.add_argument("--deterministic", action="store_true", default=None,
                 help="deterministic GPU kernels: the same bits on every run (slower; see "
                      "progae_jax/compilation.py)")
  p.add_argument("--no-compile-cache", action="store_true",
                 help="do not keep compiled programs in the per-user cache (default: "
                      "$PROGAE_COMPILE_CACHE, else ~/.cache/progae_jax/xla)")
  p.add_argument("--restart", action="store_true",
                 help="ignore (and replace) the work directory's checkpoints")
  p.add_argument("--stop-after-images", type=_positive_int,
                 help="save and stop once this many images are seen (resume later)")
  p.add_argument("--resume-from-step", type=_non_negative_int, metavar="N",
                 help="resume from checkpoint N (images seen), an earlier one than the latest "
                      "(when the latest is damaged); the later checkpoints are replaced")
  p.add_argument("--continue-on-new-data", action="store_true",
                 help="resume on a folder whose files changed since the run started: the "
                      "current phase's data order starts over on the new contents, the "
                      "held-out images stay the run's own (docs/data.md)")
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
  _watch_flags(p)


def _watch_flags(p) -> None:
  w = p.add_argument_group("watching (docs/watching.md)")
  w.add_argument("--no-tensorboard", action="store_true",
                 help="no TensorBoard event files in WORKDIR/tensorboard/")
  w.add_argument("--wandb", action="store_true",
                 help="also log to Weights & Biases (pip install wandb; offline without network)")
  w.add_argument("--profile-steps", type=_positive_int, metavar="N",
                 help="record a jax.profiler trace of N steps after the first step of each "
                      "stage in --profile-stages, into WORKDIR/profile/")
  w.add_argument("--profile-stages", metavar="R,R",
                 help="resolutions to profile, e.g. 16,32 (default: the last stage)")


def _folder_flags(p, resolution_default: str) -> None:
  p.add_argument("--data-resolution", type=_positive_int, metavar="N",
                 help=f"a folder of images: the side they are stored at ({resolution_default})")
  p.add_argument("--image-channels", type=int, choices=(1, 3),
                 help="a folder of images: 3 for RGB (default), 1 for grayscale")


def _folder_options(args, max_resolution: int | None = None) -> dict:
  """The dataset options the folder flags set; a folder's resolution defaults to the model's."""
  options = {"data_resolution": args.data_resolution, "channels": args.image_channels}
  if max_resolution is not None and options["data_resolution"] is None:
    options["data_resolution"] = max_resolution
  return {k: v for k, v in options.items() if v is not None}


def build_config(args) -> "TrainConfig":
  """Preset or --config file (or both, merged), then flags, then --config.KEY=VALUE: each
  overrides the one before. TrainConfig.from_dict checks the result."""
  from progae_jax import config_files

  fields = {} if args.config and not args.preset else config_files.preset(args.preset or "main")
  if args.config:
    fields = config_files.merge(fields, config_files.load(args.config))
  _apply_flags(fields, args)
  for key, text in getattr(args, "config_overrides", ()):
    config_files.apply_override(fields, key, text)
  return config_from_fields(fields)


def config_from_fields(fields: dict) -> "TrainConfig":
  """The TrainConfig of a preset's or config file's fields (TrainConfig's layout, or the
  flags' names at the top level). Unless they say otherwise, the model has the dataset's
  image channels."""
  from progae_jax import config_files, data
  from progae_jax.config import ModelConfig
  from progae_jax.schedule import TrainConfig

  fields = config_files.unfold_flag_names(fields)
  fields.setdefault("model", {})
  TrainConfig.from_dict(fields)  # A malformed config is reported before the data is read.
  dataset = fields.setdefault("dataset", TrainConfig.dataset)
  options = fields.setdefault("dataset_options", {})
  if data.is_folder(dataset):  # Stored no larger than the model needs.
    fields["dataset"] = os.path.abspath(os.path.expanduser(dataset))
    options.setdefault("data_resolution", fields["model"].get(
        "max_resolution", ModelConfig.max_resolution))
  spec = data.dataset_info(fields["dataset"], data_dir=fields.get("data_dir"), **options)
  fields["model"].setdefault("image_channels", spec.channels)
  if "eval_images" not in fields:  # A small folder holds out fewer than the default 256.
    fields["eval_images"] = min(TrainConfig.eval_images, spec.num_test)
  return TrainConfig.from_dict(fields)


# Flags named like the TrainConfig field they set; the stage ones set every stage.
_FLAG_FIELDS = ("dataset", "data_dir", "seed", "optimizer_on_growth", "alpha_ramp", "ema_decay",
                "eval_every_images", "checkpoint_every_images", "keep_checkpoints",
                "compute_dtype", "deterministic")
_STAGE_FLAGS = ("batch_size", "fade_images", "stable_images", "learning_rate")


def _apply_flags(fields: dict, args) -> None:
  for field in _FLAG_FIELDS:
    if getattr(args, field, None) is not None:
      fields[field] = getattr(args, field)
  if args.no_ema:
    fields["ema_decay"] = None
  if args.fit:
    fields["dataset_options"] = dict(fields.get("dataset_options") or {}, fit=args.fit)
  if _folder_options(args):  # Refused by the data for a dataset that is not a folder.
    fields["dataset_options"] = dict(fields.get("dataset_options") or {}, **_folder_options(args))
  if args.max_resolution is not None:  # Stage entries the run no longer reaches go.
    fields["model"] = dict(fields.get("model") or {}, max_resolution=args.max_resolution)
    fields["stages"] = {r: s for r, s in (fields.get("stages") or {}).items()
                        if int(r) <= args.max_resolution}
  for field in _STAGE_FLAGS:
    value = getattr(args, field, None)
    if value is None:
      continue
    fields["default_stage"] = dict(fields.get("default_stage") or {}, **{field: value})
    for stage in (fields.get("stages") or {}).values():  # A flag means every stage.
      stage[field] = value


def _set_up_cpu(args, config) -> None:
  """One CPU device per core and tuned malloc, if this process is still ours to set up."""
  from progae_jax import cpu
  from progae_jax.schedule import phases
  warnings = cpu.set_up((p.batch_size for p in phases(config)), args.cpu_devices,
                        malloc=not args.no_malloc_tuning)
  for warning in warnings:
    print(f"progae train: warning: {warning}", file=sys.stderr)


def _set_up_compiler(args, config) -> None:
  """The compilation cache (unless turned off) and deterministic kernels (if asked for),
  before JAX's backend starts."""
  from progae_jax import compilation
  if config.deterministic:
    compilation.request_deterministic()
  if not args.no_compile_cache:
    compilation.enable_cache()


def cmd_train(args) -> int:
  from progae_jax import parallel, preemption, train

  config = build_config(args)
  watch = _watch(args, config)
  _set_up_compiler(args, config)
  _set_up_cpu(args, config)
  parallel.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
  workdir = args.workdir if args.workdir is not None else os.path.join(
      "runs", _run_name(args, config))
  mesh = parallel.make_mesh(args.num_devices)
  result = train.train_and_evaluate(config, workdir, restart=args.restart, mesh=mesh,
                                    progress=not args.quiet,
                                    stop_after_images=args.stop_after_images,
                                    resume_from_step=args.resume_from_step, watch=watch,
                                    continue_on_new_data=args.continue_on_new_data)
  if result.stopped_by:
    return preemption.EXIT_STATUS[result.stopped_by]
  if parallel.is_main_process() and result.finished and result.final_eval:
    e = result.final_eval
    print(f"final held-out PSNR: {e['psnr']:.2f} dB (SSIM {e['ssim']:.3f}) at "
          f"{e['resolution']}x{e['resolution']} after {result.images_seen:,} images")
    if result.pictures:
      print(f"reconstructions: {os.path.abspath(result.pictures[-1])}")
  return 0


def _watch(args, config) -> "Watch":
  from progae_jax import profiling
  from progae_jax.writers import Watch
  if args.profile_stages and not args.profile_steps:
    raise ValueError("--profile-stages needs --profile-steps N (how many steps to trace)")
  stages = (profiling.parse_stages(args.profile_stages, config.model.resolutions)
            if args.profile_stages else ())
  return Watch(tensorboard=not args.no_tensorboard, wandb=args.wandb,
               profile_steps=args.profile_steps or 0, profile_stages=stages)


def _run_name(args, config) -> str:
  """The default work directory's name: the preset's, the config file's, or the dataset's."""
  from progae_jax import data
  if args.dataset is not None:
    return os.path.basename(config.dataset) if data.is_folder(config.dataset) else config.dataset
  if args.config and not args.preset:
    return os.path.splitext(os.path.basename(args.config))[0]
  return args.preset or "main"


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
  _print_config(workdir, meta["config"])
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


def _print_config(workdir: str, saved: dict) -> None:
  """The run's resolved config, as the dotted keys --config.KEY=VALUE takes."""
  from progae_jax import config_files
  fields = config_files.read(workdir)
  where = os.path.join(workdir, config_files.CONFIG_JSON)
  if fields is None:
    fields, where = saved, "the checkpoint's metadata"
  print(f"config ({where}):")
  for key, value in sorted(config_files.flatten(fields).items()):
    print(f"  {key} = {value!r}")


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
  if args.images:
    from progae_jax import use_cli
    return use_cli.cmd_reconstruct_images(args)
  import numpy as np
  from progae_jax import checkpoint, data, plots
  from progae_jax.model import apply, stage_of
  from progae_jax.schedule import TrainConfig

  state, meta = checkpoint.restore(args.path, args.step)
  config = TrainConfig.from_dict(meta["config"])
  params = state["ema"] if "ema" in state and not args.no_ema else state["params"]
  stage = stage_of(params)
  dataset = args.dataset or config.dataset
  if data.is_folder(dataset):
    dataset = os.path.abspath(os.path.expanduser(dataset))
  options = dict(config.dataset_options) if dataset == config.dataset else {}
  if dataset != config.dataset and data.is_folder(dataset):  # Stored as the model takes it.
    options = data.folder_options_for(config.model)
  data_dir = args.data_dir or config.data_dir
  count = args.count or min(16, data.dataset_info(dataset, data_dir=data_dir,
                                                  **options).num_test)
  images = data.eval_images(dataset, resolution=stage.resolution, count=count,
                            data_dir=data_dir, **options)
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


def cmd_prepare(args) -> int:
  from progae_jax import data
  path = data.prepare(args.path, data_dir=args.data_dir, **_folder_options(args))
  print(f"prepared: {path}")
  return 0


def train_config(argv: list[str]) -> "TrainConfig":
  """The TrainConfig that `progae train ARGV` would train (nothing is run)."""
  from progae_jax.config_files import split_overrides
  argv, overrides = split_overrides(argv)
  args = _parser().parse_args(["train", *argv])
  args.config_overrides = overrides
  return build_config(args)


class _OneLineErrors(argparse.ArgumentParser):
  """argparse, but bad input is one line on stderr (status 2), not the usage block first."""

  def error(self, message):
    self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
  from progae_jax import use_cli
  parser = _OneLineErrors(prog="progae", description=__doc__,
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
  p.add_argument("--count", type=_positive_int,
                 help="held-out images to show (default: 16, or all of them if fewer)")
  p.add_argument("--step", type=int)
  p.add_argument("--no-ema", action="store_true", help="use the raw weights, not their EMA")
  use_cli.add_images_flag(p)
  p = sub.add_parser("prepare", help="prepare a folder of images (or a built-in dataset) now, "
                     "not on first use; prints what was kept and skipped")
  p.add_argument("path", help="a folder of images (PNG, JPEG, BMP, GIF, TIFF, WebP)")
  _folder_flags(p, "default: 32, progae train's default --max-resolution")
  p.add_argument("--data-dir", help="where prepared datasets are (default: tfds's own)")
  sub.add_parser("bench", help="training speed per stage (--help for its options)",
                 add_help=False)
  use_cli.add_parsers(sub)
  return parser


def main(argv=None) -> int:
  parser = _parser()
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv and argv[0] == "bench":
    from progae_jax import bench
    return bench.main(argv[1:])
  from progae_jax.checkpoint import CheckpointError, errors_in_one_line
  from progae_jax.config_files import split_overrides
  from progae_jax.data import DataError
  from progae_jax.train import NonFiniteLossError
  from progae_jax.workdir import WorkdirError
  try:
    argv, overrides = split_overrides(argv)
  except ValueError as e:
    parser.error(str(e))
  args = parser.parse_args(argv)
  if overrides and args.command != "train":
    parser.error(f"--config.{overrides[0][0]}: --config.KEY=VALUE is an option of "
                 "progae train")
  args.config_overrides = overrides
  try:
    from progae_jax.use_cli import COMMANDS as use_commands
    with errors_in_one_line():  # This process's logging and asyncio, until main returns.
      return {"train": cmd_train, "inspect": cmd_inspect, "reconstruct": cmd_reconstruct,
              "prepare": cmd_prepare, **use_commands}[args.command](args)
  except (CheckpointError, DataError, ValueError, WorkdirError, NonFiniteLossError) as e:
    print(f"progae {args.command}: error: {e}", file=sys.stderr)
    return 2
  except OSError as e:  # A full disk, a folder that vanished: the file and the reason.
    where = f"{e.filename}: " if e.filename else ""
    if e.errno == errno.ENOSPC:  # The metrics, TensorBoard's events, a prepared dataset.
      what = f"{e.filename} could not be written" if e.filename else "a write failed"
      print(f"progae {args.command}: error: the disk is full: {what}; what was saved before "
            "is intact: free space and run the same command again", file=sys.stderr)
      return 2
    print(f"progae {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
