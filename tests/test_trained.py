"""A trained run put to use: `pj.load`, the Model's images, the commands, the export, the
notebook. One tiny run, stopped in the middle of its 8x8 fade, serves every test."""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

import progae_jax as pj
from progae_jax import checkpoint, cli, data, export, train, use_cli
from progae_jax.data import images as image_files
from progae_jax.model import decode

from conftest import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STOP = 96  # 4x4 stable to 64 images, then the 8x8 fade (64 images): stopped halfway.


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory):
  """(workdir, config): checkpoints 64 (end of 4x4, evaluated) and 96 (mid-fade)."""
  workdir = str(tmp_path_factory.mktemp("run"))
  config = tiny_config(data_dir, fade_images=64, stable_images=64)
  train.train_and_evaluate(config, workdir, progress=False, stop_after_images=STOP)
  return workdir, config


@pytest.fixture(scope="module")
def model(run):
  return pj.load(run[0])


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
  """A folder of what a user has: other sizes, RGB, 16-bit, a truncated file, one too small."""
  root = tmp_path_factory.mktemp("pictures")
  rng = np.random.default_rng(0)
  grey = rng.integers(0, 256, (12, 12), np.uint8)
  Image.fromarray(grey).save(root / "grey.png")
  Image.fromarray(grey.astype(np.uint16) * 257).save(root / "grey16.png")
  Image.fromarray(rng.integers(0, 256, (20, 30, 3), np.uint8)).save(root / "rgb_20x30.png")
  (root / "sub").mkdir()
  Image.fromarray(rng.integers(0, 256, (16, 16), np.uint8)).save(root / "sub" / "b.png")
  (root / "cut.png").write_bytes((root / "grey.png").read_bytes()[:60])
  Image.fromarray(grey[:3, :3]).save(root / "tiny.png")
  return root


def _last_eval_psnr(workdir, images_seen):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  return [r for r in records if r["kind"] == "eval" and r["images_seen"] == images_seen][-1]


def test_a_run_stopped_mid_fade_loads_at_its_alpha(run, model):
  workdir, config = run
  assert str(model.stage) == "8x8 fade" and model.images_seen == STOP
  assert model.alpha == pytest.approx(0.5) and model.weights == "ema"
  assert "alpha 0.500" in model.note and "8x8 fade" in str(model)
  # The numbers of pj.apply on the whole restored state, at the checkpoint's alpha.
  state, meta = checkpoint.restore(workdir)
  images = data.eval_images("digits", resolution=8, count=5, data_dir=config.data_dir)
  recon, latent = jax.jit(pj.apply, static_argnums=0)(config.model, state["ema"], images,
                                                       meta["alpha"])
  np.testing.assert_allclose(model.encode(images), latent, atol=1e-6)
  np.testing.assert_allclose(model.reconstruct(images), recon, atol=1e-6)


def test_encode_then_decode_is_reconstruct_and_the_logged_psnr_comes_back(run, model):
  workdir, config = run
  full = data.eval_images("digits", resolution=8, count=config.eval_images,
                          data_dir=config.data_dir)
  np.testing.assert_allclose(model.decode(model.encode(full)), model.reconstruct(full),
                             atol=1e-5)
  best = pj.load(workdir, best=True)  # The evaluated checkpoint: the end of 4x4.
  assert str(best.stage) == "4x4 stable" and best.images_seen == 64
  logged = _last_eval_psnr(workdir, 64)["psnr"]
  # The run's held-out images at 8x8, brought to 4x4 by Model.images, as the run did.
  recon = np.clip(best.reconstruct(full), 0, 1)
  mse = np.mean((recon - best.images(full)) ** 2, axis=(1, 2, 3))
  assert np.mean(-10 * np.log10(np.maximum(mse, 1e-10))) == pytest.approx(logged, abs=0.01)


def test_loading_reads_the_weights_only(run, tmp_path):
  """An optimizer state that no longer matches its checksum breaks a full restore, not load."""
  copy = tmp_path / "run"
  shutil.copytree(run[0], copy)
  meta_file = copy / "checkpoints" / str(STOP) / "meta" / "metadata"
  meta = json.loads(meta_file.read_text())
  name = next(k for k in meta["checksums"] if k.startswith("opt_state/"))
  meta["checksums"][name] = "00000000"
  meta_file.write_text(json.dumps(meta))
  with pytest.raises(checkpoint.CheckpointError, match="opt_state"):
    checkpoint.restore(str(copy))
  assert str(pj.load(str(copy)).stage) == "8x8 fade"


def _damaged(run, tmp_path, change):
  copy = tmp_path / "run"
  shutil.copytree(run[0], copy)
  meta_file = copy / "checkpoints" / str(STOP) / "meta" / "metadata"
  meta = json.loads(meta_file.read_text())
  change(meta)
  meta_file.write_text(json.dumps(meta))
  return str(copy)


@pytest.mark.parametrize("change, says", [
    (lambda m: m.update(phase="stable"), "do not form the tree its metadata describes"),
    (lambda m: m["checksums"].update({"params/decoder/to_image_8/conv/bias": "00000000"}),
     "does not match the checksum"),
], ids=["another_stage", "damaged"])
def test_a_wrong_or_damaged_checkpoint_is_one_line(run, tmp_path, capsys, change, says):
  workdir = _damaged(run, tmp_path, change)
  with pytest.raises(checkpoint.CheckpointError, match=says):
    pj.load(workdir)
  assert cli.main(["export", workdir, "--out", str(tmp_path / "x")]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("progae export: error: checkpoint 96") and says in err[0]


def test_images_of_every_kind_are_prepared_as_the_data_layer_does(model, pictures):
  files = lambda *names: [str(pictures / n) for n in names]
  grey, grey16, rgb = model.images(files("grey.png", "grey16.png", "rgb_20x30.png"))
  np.testing.assert_array_equal(grey16, grey)  # 16 bits: / 257, as the data layer reads them.
  # Other sizes: the centre square, Lanczos to the stored side (8), the box filter to the stage.
  rgb_pixels = np.asarray(Image.open(pictures / "rgb_20x30.png"))
  np.testing.assert_array_equal(model.images([rgb_pixels[:, 5:25]])[0], rgb)
  stored = image_files.Loader(8, 1)(str(pictures / "rgb_20x30.png")).image  # The data layer's.
  np.testing.assert_array_equal(rgb, stored / np.float32(255))
  grey_pixels = np.asarray(Image.open(pictures / "grey.png"))
  as_colour = np.repeat(grey_pixels[..., None], 3, axis=-1)  # RGB into grey: luma, (v, v, v) -> v.
  np.testing.assert_array_equal(model.images([as_colour])[0], grey)
  np.testing.assert_array_equal(model.images(grey_pixels[None])[0], grey)  # An array = its file.
  rounds_to_grey = np.clip(grey_pixels - 0.4, 0, None) / 255.0  # Floats: rounded to 8 bits.
  np.testing.assert_array_equal(model.images([rounds_to_grey])[0], grey)
  # Grey into an RGB model: the grey in R, G and B.
  rgb_config = dataclasses.replace(model.config, model=dataclasses.replace(
      model.config.model, image_channels=3))
  rgb_model = dataclasses.replace(model, config=rgb_config, params=jax.eval_shape(
      lambda: pj.init_params(rgb_config.model, 8, jax.random.key(0), fading=True)))
  as_rgb = rgb_model.images(files("grey.png"))[0]
  assert as_rgb.shape == (8, 8, 3)
  np.testing.assert_array_equal(as_rgb, np.repeat(grey, 3, axis=-1))
  # At the stage's shape, taken as it is.
  ready = np.random.default_rng(1).random((2, 8, 8, 1), np.float32)
  np.testing.assert_array_equal(model.images(ready), ready)
  for bad, says in [("cut.png", "truncated"), ("tiny.png", "smaller than 8 / 2")]:
    with pytest.raises(ValueError, match=re.escape(bad) + ".*" + says):
      model.images(files(bad))
  with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
    model.images([np.full((5, 5), 2.0)])


def test_encode_and_decode_commands(run, model, pictures, tmp_path, capsys):
  out = tmp_path / "latents.npz"
  assert cli.main(["encode", run[0], str(pictures), "--out", str(out)]) == 0
  err = capsys.readouterr().err
  assert "alpha 0.500" in err  # The model's note.
  assert "cut.png: OSError" in err and "tiny.png" in err  # Skipped and listed, not fatal.
  saved = np.load(out)
  names = list(saved["names"])
  assert names == ["grey.png", "grey16.png", "rgb_20x30.png", "sub/b.png"]
  np.testing.assert_allclose(saved["latents"], model.encode(
      [str(pictures / n) for n in names]), atol=1e-6)
  assert cli.main(["decode", run[0], str(out), "--out", str(tmp_path / "png")]) == 0
  decoded = np.asarray(Image.open(tmp_path / "png" / "sub" / "b.png"))
  expected = use_cli.to_uint8(model.decode(saved["latents"][3:4]))[0, ..., 0]
  np.testing.assert_array_equal(decoded, expected)
  assert cli.main(["decode", run[0], str(pictures / "grey.png"), "--out", "x"]) == 2
  assert "not a .npz file that progae encode wrote" in capsys.readouterr().err
  assert cli.main(["encode", run[0], str(pictures / "nothing*.png"), "--out", "x"]) == 2


def test_reconstruct_and_interpolate_commands(run, model, pictures, tmp_path, capsys):
  grid = tmp_path / "grid.png"
  assert cli.main(["reconstruct", run[0], "--images", str(pictures / "*.png"),
                   "--out", str(grid)]) == 0
  assert grid.exists()
  strip = tmp_path / "strip.png"
  a, b = str(pictures / "grey.png"), str(pictures / "sub" / "b.png")
  assert cli.main(["interpolate", run[0], a, b, "--steps", "5", "--out", str(strip)]) == 0
  picture = np.asarray(Image.open(strip))
  side = 64  # 8x8 enlarged 8 times: both images and 5 decoded points, 1 pixel between.
  assert picture.shape == (side, 7 * side + 6)
  second = picture[:, side + 1:2 * side + 1]  # The first decoded point is A's reconstruction.
  recon = use_cli.to_uint8(model.reconstruct([a]))[0, ..., 0].repeat(8, 0).repeat(8, 1)
  assert np.abs(second.astype(int) - recon).max() <= 1  # Rounding to 8 bits, at most.
  x, y = 3 * np.array([1.0, 0.0], np.float32), 3 * np.array([0.5, 0.75 ** 0.5], np.float32)
  linear, spherical = (use_cli.latent_path(x, y, 3, s) for s in (False, True))
  np.testing.assert_allclose(linear, [x, (x + y) / 2, y], rtol=1e-6)
  # Along the great circle: the same length all the way, the middle at half the angle (30°).
  np.testing.assert_allclose(spherical, [x, 3 * np.array([0.75 ** 0.5, 0.5]), y], rtol=1e-6)
  capsys.readouterr()


# The loader of docs/using.md runs where progae_jax cannot be imported: the editable
# install's finder and any path entry holding the package are gone before it starts.
_WITHOUT_PROGAE = """
import importlib, importlib.util, os, sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")]
sys.path_hooks[:] = [h for h in sys.path_hooks if "editable" not in getattr(h, "__module__", "")]
sys.path[:] = [p for p in sys.path if not os.path.isdir(os.path.join(p, "progae_jax"))]
sys.path_importer_cache.clear()
importlib.invalidate_caches()
assert importlib.util.find_spec("progae_jax") is None, "progae_jax is importable"
"""


def _docs_loader() -> str:
  with open(os.path.join(REPO, "docs", "using.md")) as f:
    blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
  loader = [b for b in blocks if "jax.export.deserialize" in b]
  assert len(loader) == 1 and len(loader[0].strip().splitlines()) == 5
  return loader[0]


def test_the_export_runs_without_progae_jax_and_matches_the_model(run, model, tmp_path):
  assert cli.main(["export", run[0], "--out", str(tmp_path / "exported")]) == 0
  info = json.loads((tmp_path / "exported" / "model.json").read_text())
  assert info["input_shape"] == ["batch", 8, 8, 1] and info["alpha"] == 0.5
  assert info["stage"] == "8x8 fade" and info["platforms"] == ["cpu", "cuda"]
  assert info["source"]["checkpoint"] == STOP
  script = (_WITHOUT_PROGAE + _docs_loader() + "\nnp.savez('out.npz', images=images, "
            "latents=latents, reconstructions=reconstructions)\n"
            "assert not [m for m in sys.modules if m.startswith('progae_jax')]\n")
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  subprocess.run([sys.executable, "-I", "-c", script], cwd=tmp_path, env=env, check=True,
                 timeout=120)
  got = np.load(tmp_path / "out.npz")
  assert got["images"].shape[0] == 5  # A batch size the export never saw: it is symbolic.
  np.testing.assert_allclose(got["latents"], model.encode(got["images"]), atol=1e-5, rtol=0)
  np.testing.assert_allclose(got["reconstructions"], model.decode(got["latents"]), atol=1e-5,
                             rtol=0)
  # The alpha is fixed in the export: the fading model's output, not the stable path's.
  stable_only = decode(model.config.model, model.params, got["latents"], 1.0)
  assert np.abs(got["reconstructions"] - stable_only).max() > 1e-3


def test_onnx_export_runs_in_onnxruntime(model, tmp_path):
  pytest.importorskip("jax2onnx")
  ort = pytest.importorskip("onnxruntime")
  info = export.export(model, str(tmp_path), onnx=True)
  assert info["onnx"] == ["decoder.onnx", "encoder.onnx"]
  images = np.random.default_rng(2).random((3, 8, 8, 1), np.float32)
  for name, x, want in [("encoder", images, model.encode(images)),
                        ("decoder", model.encode(images), model.decode(model.encode(images)))]:
    session = ort.InferenceSession(str(tmp_path / f"{name}.onnx"))
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_the_notebook_runs(run, tmp_path):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  from test_notebook import _kernel_manager, _text
  nb = nbformat.read(os.path.join(REPO, "experiments", "use_a_trained_model.ipynb"),
                     as_version=4)
  client = nbclient.NotebookClient(nb, km=_kernel_manager(tmp_path), timeout=300,
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute(env=dict(os.environ, JAX_PLATFORMS="cpu", PROGAE_USE_WORKDIR=run[0],
                          TFDS_DATA_DIR=run[1].data_dir))
  text = "\n".join(_text(c) for c in nb.cells if c.cell_type == "code")
  assert "8x8 fade" in text and "alpha 0.500" in text
  assert "'cut_short.png': 'OSError" in text and "latents (6, 8)" in text
  for gap in re.findall(r"max \|[^|]+\|: (\S+)", text):
    assert float(gap) < 1e-5
  assert len(re.findall(r"max \|[^|]+\|: ", text)) == 3
