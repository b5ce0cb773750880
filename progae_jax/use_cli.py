"""`progae encode / decode / interpolate / export` and `progae reconstruct --images`: a
trained run put to use from the command line (cli.py wires them in).

    progae encode W photos/ '*.jpg' --out latents.npz    latents + relative file names
    progae decode W latents.npz --out decoded/           one PNG per latent, named after its file
    progae reconstruct W --images a.png b.jpg --out grid.png
    progae interpolate W a.png b.png --steps 8 --out strip.png   (--slerp: spherical)
    progae export W --out exported/                      encoder.jax, decoder.jax, model.json

Every verb loads the model with `trained.load` (the latest checkpoint, `--step N` or
`--best`) and prepares images as `trained.Model.images` says. A file that cannot be read is
skipped and listed on stderr, never fatal, unless nothing is left.
"""

from __future__ import annotations

import glob
import json
import os
import sys

import numpy as np

PROGRESS_CHUNK = 64  # Files read and encoded per update of the progress bar.


def _model_flags(p) -> None:
  p.add_argument("path", help="a work directory or one checkpoint's folder")
  which = p.add_mutually_exclusive_group()
  which.add_argument("--step", type=int, help="checkpoint to use (images seen); default latest")
  which.add_argument("--best", action="store_true",
                     help="the checkpoint ranked best (highest resolution, then held-out PSNR)")
  p.add_argument("--no-ema", action="store_true", help="the raw weights, not their EMA")


def add_parsers(sub) -> None:
  """The verbs' parsers, on cli.py's subparsers."""
  from progae_jax.cli import _positive_int
  p = sub.add_parser("encode", help="latents of any images (files, folders, patterns)")
  _model_flags(p)
  p.add_argument("images", nargs="+", help="image files, folders (read recursively) or glob "
                 "patterns")
  p.add_argument("--out", required=True, help="the .npz to write: latents and file names")
  p = sub.add_parser("decode", help="one PNG per latent of an encode's .npz")
  _model_flags(p)
  p.add_argument("latents", help="a .npz written by progae encode")
  p.add_argument("--out", required=True, help="folder for the PNGs")
  p = sub.add_parser("interpolate", help="the decoded path between two images' latents")
  _model_flags(p)
  p.add_argument("a", help="the first image file")
  p.add_argument("b", help="the second image file")
  p.add_argument("--steps", type=_positive_int, default=8,
                 help="decoded points from A to B, both included (default 8)")
  p.add_argument("--slerp", action="store_true",
                 help="spherical interpolation of the latents (default: linear)")
  p.add_argument("--out", required=True, help="the PNG to write")
  p = sub.add_parser("export", help="encoder and decoder as jax.export files, run with JAX only")
  _model_flags(p)
  p.add_argument("--out", required=True,
                 help="folder for encoder.jax, decoder.jax and model.json")
  p.add_argument("--onnx", action="store_true", help="also encoder.onnx and decoder.onnx "
                 '(pip install "progae_jax[onnx]")')


def add_images_flag(p) -> None:
  """`progae reconstruct --images FILES...`."""
  p.add_argument("--images", nargs="+", metavar="IMAGE",
                 help="reconstruct these image files, folders or patterns instead of the "
                      "dataset's held-out images")


def _load(args):
  from progae_jax import trained
  model = trained.load(args.path, args.step, getattr(args, "best", False),
                       ema=not args.no_ema)
  print(f"model: {model}", file=sys.stderr)
  return model


# ---------------------------------------------------------------------------------------------
# Files


def image_files(inputs) -> list[tuple[str, str]]:
  """(path, name) of every image `inputs` names: a folder's image files, recursively as
  `progae prepare` reads them (named by their path inside it), a file, or a glob pattern's
  files (named by their file name). Names are made unique with _2, _3, ..."""
  from progae_jax.data import folder
  found = []
  for item in inputs:
    path = os.path.expanduser(item)
    if os.path.isdir(path):
      found += [(os.path.join(path, e.path), e.path) for e in folder.scan(path)]
    elif os.path.isfile(path):
      found.append((path, os.path.basename(path)))
    else:
      matches = [m for m in sorted(glob.glob(path, recursive=True)) if os.path.isfile(m)]
      if not matches:
        raise ValueError(f"{item}: no such file or folder, and no file matches it as a pattern")
      found += [(m, os.path.basename(m)) for m in matches]
  if not found:
    raise ValueError(f"no image files in {', '.join(inputs)}")
  seen, out = {}, []
  for path, name in found:
    seen[name] = seen.get(name, 0) + 1
    if seen[name] > 1:
      stem, ext = os.path.splitext(name)
      name = f"{stem}_{seen[name]}{ext}"
    out.append((path, name))
  return out


def _read(model, files, what: str):
  """Reads `files` for `model` with a progress bar: (images, names kept); skipped files are
  listed on stderr; none readable is an error."""
  from tqdm.auto import tqdm
  kept_images, kept_names, skipped = [], [], {}
  with tqdm(total=len(files), desc=what, unit=" images", disable=None, leave=False) as bar:
    for start in range(0, len(files), PROGRESS_CHUNK):
      chunk = files[start:start + PROGRESS_CHUNK]
      images, kept, bad = model.load_files([p for p, _ in chunk])
      kept_images.append(images)
      kept_names += [chunk[i][1] for i in kept]
      skipped.update(bad)
      bar.update(len(chunk))
  _report_skipped(skipped)
  if not kept_names:
    raise ValueError(f"none of the {len(files)} file(s) could be read as an image")
  return np.concatenate(kept_images), kept_names


def _report_skipped(skipped: dict[str, str]) -> None:
  if skipped:
    print(f"skipped {len(skipped)} file(s) that could not be used:", file=sys.stderr)
    for path, why in skipped.items():
      print(f"  {path}: {why}", file=sys.stderr)


def to_uint8(images: np.ndarray) -> np.ndarray:
  """Model outputs (linear) -> uint8 pictures, clipped to [0, 1]."""
  return np.rint(np.clip(images, 0.0, 1.0) * 255).astype(np.uint8)


def _save_png(path: str, pixels: np.ndarray) -> None:
  """Writes uint8 pixels, (H, W), (H, W, 1) or (H, W, 3), as a PNG."""
  from PIL import Image
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(pixels[..., 0] if pixels.ndim == 3 and pixels.shape[-1] == 1 else pixels
                  ).save(path)


def _png_name(name: str) -> str:
  """A latent's source name as a relative .png path that stays inside the output folder."""
  name = os.path.normpath(str(name))
  if os.path.isabs(name) or name.startswith(".."):
    name = os.path.basename(name)
  return os.path.splitext(name)[0] + ".png"


# ---------------------------------------------------------------------------------------------
# Verbs


def cmd_encode(args) -> int:
  files = image_files(args.images)
  model = _load(args)
  images, names = _read(model, files, "encoding")
  latents = model.encode(images)
  out = args.out if args.out.endswith(".npz") else args.out + ".npz"
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  source = {"checkpoint": model.checkpoint, "weights": model.weights, "stage": str(model.stage),
            "alpha": model.alpha}
  np.savez(out, latents=latents, names=np.array(names), source=json.dumps(source))
  print(f"wrote {out}: {len(latents)} latents of {model.latent_dim} numbers")
  return 0


def _read_latents(path: str) -> tuple[np.ndarray, list[str]]:
  try:
    with np.load(path, allow_pickle=False) as f:
      if "latents" not in f:
        raise ValueError(f"{path} holds no 'latents' array (it has {sorted(f.keys())}): "
                         "write it with progae encode")
      latents = np.asarray(f["latents"])
      names = [str(n) for n in f["names"]] if "names" in f else [
          f"latent_{i}" for i in range(len(latents))]
  except (OSError, EOFError, ValueError) as e:
    if "latents" in str(e):
      raise
    raise ValueError(f"{path} is not a .npz file that progae encode wrote ("
                     f"{str(e).splitlines()[0][:120]})") from None
  return latents, names


def cmd_decode(args) -> int:
  from tqdm.auto import tqdm
  latents, names = _read_latents(args.latents)
  model = _load(args)
  images = model.decode(latents)
  for name, image in tqdm(list(zip(names, images)), desc="writing", unit=" images",
                          disable=None, leave=False):
    _save_png(os.path.join(args.out, _png_name(name)), to_uint8(image))
  print(f"wrote {len(images)} PNG(s) of {model.resolution}x{model.resolution} in {args.out}")
  return 0


def cmd_reconstruct_images(args) -> int:
  from progae_jax import plots
  if args.dataset:
    raise ValueError("give --images or --dataset, not both")
  files = image_files(args.images)
  model = _load(args)
  images, names = _read(model, files, "reconstructing")
  recon = np.clip(model.reconstruct(images), 0.0, 1.0)
  out = args.out
  if os.path.isdir(out):
    out = os.path.join(out, f"reconstructions_{model.images_seen}.png")
  elif not os.path.splitext(out)[1]:
    out += ".png"
  plots.save_reconstructions(out, images, recon, title=f"{len(images)} images at {model.stage}")
  print(f"wrote {out}")
  return 0


def latent_path(a: np.ndarray, b: np.ndarray, steps: int, spherical: bool) -> np.ndarray:
  """`steps` latents from `a` to `b`, both included: on the line between them, or with
  `spherical` along the great circle (slerp; the line where they are nearly parallel)."""
  t = np.linspace(0.0, 1.0, steps, dtype=np.float64)[:, None]
  a64, b64 = a.astype(np.float64), b.astype(np.float64)
  cos = np.dot(a64, b64) / max(np.linalg.norm(a64) * np.linalg.norm(b64), 1e-12)
  omega = np.arccos(np.clip(cos, -1.0, 1.0))
  if not spherical or np.sin(omega) < 1e-6:
    return ((1 - t) * a64 + t * b64).astype(np.float32)
  return ((np.sin((1 - t) * omega) * a64 + np.sin(t * omega) * b64) / np.sin(omega)).astype(
      np.float32)


def strip(images: np.ndarray, gap: int = 1) -> np.ndarray:
  """Images (n, R, R, C) side by side with `gap` white pixels between them, enlarged with
  visible pixels to at least 64 pixels a side: one uint8 picture, (H, W) grey or (H, W, 3)."""
  n, r, _, c = images.shape
  scale = max(1, -(-64 // r))
  big = to_uint8(images).repeat(scale, axis=1).repeat(scale, axis=2)
  side = r * scale
  out = np.full((side, n * side + (n - 1) * gap, c), 255, np.uint8)
  for i, image in enumerate(big):
    out[:, i * (side + gap):i * (side + gap) + side] = image
  return out[..., 0] if c == 1 else out


def cmd_interpolate(args) -> int:
  if args.steps < 2:
    raise ValueError(f"--steps {args.steps}: a path needs at least 2 points (A and B)")
  model = _load(args)
  images, names = _read(model, image_files([args.a, args.b]), "encoding")
  if len(images) != 2:
    raise ValueError("interpolate needs two readable images, A and B")
  a, b = model.encode(images)
  decoded = model.decode(latent_path(a, b, args.steps, args.slerp))
  out = args.out if os.path.splitext(args.out)[1] else args.out + ".png"
  _save_png(out, strip(np.concatenate([images[:1], decoded, images[1:]])))
  how = "spherical" if args.slerp else "linear"
  print(f"wrote {out}: {names[0]}, {args.steps} decoded points ({how}), {names[1]}")
  return 0


def cmd_export(args) -> int:
  from progae_jax import export
  model = _load(args)
  info = export.export(model, args.out, onnx=args.onnx)
  r = model.resolution
  print(f"wrote {args.out}: {info['encoder']} (batch, {r}, {r}, {model.image_channels}) -> "
        f"(batch, {model.latent_dim}), {info['decoder']} and back, model.json; platforms "
        f"{', '.join(info['platforms'])}" + ("; encoder.onnx, decoder.onnx" if args.onnx else ""))
  return 0


COMMANDS = {"encode": cmd_encode, "decode": cmd_decode, "interpolate": cmd_interpolate,
            "export": cmd_export}
