"""A trained model as files that run with JAX alone: no progae_jax, no Flax, no checkpoint.

    Model ──jax.export──> encoder.jax   images (batch, R, R, C) float32 -> latents
                          decoder.jax   latents (batch, latent_dim) -> images (linear)
                          model.json    shapes, value range, preprocessing, source run

Each `.jax` file is serialized StableHLO (`jax.export`) with the weights inside as
constants and the batch dimension symbolic, so any batch size runs; it is lowered for every
platform asked (CPU and CUDA by default) and runs on whichever the loading process has. A
model saved during a fade is exported with its alpha fixed. Loading needs only `jax`:

    exported = jax.export.deserialize(open("encoder.jax", "rb").read())
    latents = exported.call(images)

`export_onnx` also writes encoder.onnx and decoder.onnx through jax2onnx (the optional extra
`pip install "progae_jax[onnx]"`), for onnxruntime and the tools that read ONNX.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os

import jax
import jax.numpy as jnp

from progae_jax.trained import Model
from progae_jax.version import __version__

PLATFORMS = ("cpu", "cuda")
FILES = {"encoder": "encoder.jax", "decoder": "decoder.jax", "info": "model.json"}


def _serialized(fn, shape: str) -> bytes:
  """`fn` exported for an input of `shape` ("batch, 8, 8, 1"; "batch" is symbolic)."""
  spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape(shape), jnp.float32)
  return jax.export.export(jax.jit(fn), platforms=PLATFORMS)(spec).serialize()


def describe(model: Model) -> dict:
  """What model.json says: enough to feed the exported functions and to know their source."""
  r, c, latent = model.resolution, model.image_channels, model.latent_dim
  return {
      "encoder": FILES["encoder"], "decoder": FILES["decoder"],
      "format": "jax.export serialized StableHLO; jax.export.deserialize(bytes).call(x)",
      "platforms": list(PLATFORMS),
      "input_shape": ["batch", r, r, c], "latent_shape": ["batch", latent],
      "output_shape": ["batch", r, r, c], "dtype": "float32",
      "value_range": [0.0, 1.0],
      "output_range": "linear: about [0, 1]; clip to [0, 1] to show",
      "resolution": r, "image_channels": c, "latent_dim": latent,
      "stage": str(model.stage), "alpha": model.alpha,
      "note": model.note,
      "preprocessing": (f"{'RGB' if c == 3 else 'grayscale (ITU-R 601 luma)'}; centre square; "
                        f"Lanczos resize to {model.input_side}x{model.input_side}; 8 bits / 255;"
                        f" 2x2 box filter down to {r}x{r} (progae_jax.trained.Model.images)"),
      "source": {"run": os.path.dirname(os.path.dirname(model.checkpoint)),
                 "checkpoint": model.images_seen, "weights": model.weights,
                 "dataset": model.config.dataset},
      "versions": {"progae_jax": __version__, "jax": jax.__version__},
  }


def export(model: Model, out: str, *, onnx: bool = False) -> dict:
  """Writes encoder.jax, decoder.jax and model.json into the folder `out` (with `onnx`, also
  encoder.onnx and decoder.onnx); returns the contents of model.json."""
  r, c = model.resolution, model.image_channels
  files = onnx_files(model) if onnx else {}  # First: a missing converter fails before writing.
  files.update({
      FILES["encoder"]: _serialized(model.encoder_function(), f"batch, {r}, {r}, {c}"),
      FILES["decoder"]: _serialized(model.decoder_function(), f"batch, {model.latent_dim}"),
  })
  info = describe(model)
  if onnx:
    info["onnx"] = sorted(n for n in files if n.endswith(".onnx"))
  os.makedirs(out, exist_ok=True)
  for name, blob in files.items():
    with open(os.path.join(out, name), "wb") as f:
      f.write(blob)
  with open(os.path.join(out, FILES["info"]), "w") as f:
    json.dump(info, f, indent=2)
    f.write("\n")
  return info


@contextlib.contextmanager
def _errors_only(logger_name: str):
  """The logger shows errors only inside the block (onnx_ir warns once per shape constant
  that it keeps untyped: noise for the user), and its level is restored after."""
  logger = logging.getLogger(logger_name)
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


def onnx_files(model: Model) -> dict[str, bytes]:
  """{"encoder.onnx": ..., "decoder.onnx": ...}: the ONNX models (batch dimension symbolic,
  alpha fixed), converted by jax2onnx."""
  try:
    from jax2onnx import to_onnx
  except ImportError as e:
    raise ValueError(f"ONNX export needs jax2onnx ({e}): pip install "
                     '"progae_jax[onnx]"') from None
  r, c = model.resolution, model.image_channels
  parts = {"encoder.onnx": (model.encoder_function(), ("batch", r, r, c)),
           "decoder.onnx": (model.decoder_function(), ("batch", model.latent_dim))}
  out = {}
  for name, (fn, shape) in parts.items():
    with _errors_only("onnx_ir"):
      out[name] = to_onnx(fn, [shape], return_mode="proto").SerializeToString()
  return out
