"""A folder of images as a dataset: prepared from the photographs that ship with scikit-image,
saved as the files a user has (odd sizes, PNG and JPEG, grey, RGBA, palette, 16-bit, broken)."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import skimage.data
import tensorflow_datasets as tfds
from PIL import Image

from progae_jax import cli, data, plots, train
from progae_jax.config import ModelConfig
from progae_jax.schedule import StageSchedule, TrainConfig
from progae_jax.data import folder
from conftest import tiny_run

R = 16  # The resolution the folders are prepared at: small, so the tests are fast.
BROKEN = {"broken/truncated.jpg", "broken/text.jpg", "broken/empty.png"}


def _score(path):
  """The held-out rule, written out again: sha1 of the relative path, as a fraction."""
  return int(hashlib.sha1(path.encode()).hexdigest()[:15], 16) / 16**15


def _photo_crops(count, seed):
  """`count` RGB crops of odd sizes (at least R / 2 on the short side) of two photographs."""
  rng = np.random.default_rng(seed)
  photos = [skimage.data.astronaut(), skimage.data.chelsea()]
  out = []
  for i in range(count):
    photo = photos[i % 2]
    h, w = rng.integers(R // 2 + 1, 90, size=2)
    y, x = rng.integers(0, photo.shape[0] - h), rng.integers(0, photo.shape[1] - w)
    out.append(photo[y:y + h, x:x + w])
  return out


def _write_photos(root, count, seed, prefix="photos"):
  """PNG and JPEG crops in two nested class folders; returns their relative paths."""
  paths = []
  for i, crop in enumerate(_photo_crops(count, seed)):
    rel = f"{prefix}/{['cats', 'dogs/small'][i % 2]}/{seed}_{i}.{['png', 'jpg'][i % 3 == 0]}"
    os.makedirs(os.path.dirname(root / rel), exist_ok=True)
    Image.fromarray(crop).save(root / rel, quality=92)
    paths.append(rel)
  return paths


def _write_special(root):
  """One file of each kind Pillow hands over in another mode, with known pixels."""
  os.makedirs(root / "special")
  Image.new("L", (40, 23), 90).save(root / "special/grey.png")
  rgba = np.zeros((30, 30, 4), np.uint8)
  rgba[..., :3], rgba[..., 3] = 255, 128  # Half-transparent white: 128 on black.
  Image.fromarray(rgba, "RGBA").save(root / "special/rgba.png")
  Image.new("RGB", (24, 24), (200, 30, 60)).quantize(8).save(root / "special/palette.gif")
  sixteen = np.full((20, 33), 51400, np.uint16)  # 51400 / 257 = 200
  Image.fromarray(sixteen).save(root / "special/sixteen.png")
  Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(root / "special/cmyk.jpg", quality=100)
  checker = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
  Image.fromarray(checker).save(root / "special/checker.png")  # 1-pixel squares
  coarse = (np.indices((4 * R, 4 * R)) // 4).sum(0) % 2 * 255
  Image.fromarray(coarse.astype(np.uint8)).save(root / "special/coarse.jpg", quality=100)
  wide = np.zeros((32, 96, 3), np.uint8)
  wide[:, 32:64] = (0, 255, 0)  # Green in the centre square, black on both sides.
  Image.fromarray(wide).save(root / "special/wide.png")
  return {"grey": "special/grey.png", "rgba": "special/rgba.png",
          "palette": "special/palette.gif", "sixteen": "special/sixteen.png",
          "cmyk": "special/cmyk.jpg", "checker": "special/checker.png",
          "coarse": "special/coarse.jpg",
          "wide": "special/wide.png"}


def _write_broken(root):
  os.makedirs(root / "broken")
  jpeg = root / "broken/whole.jpg"
  Image.fromarray(_photo_crops(1, 9)[0]).save(jpeg)
  (root / "broken/truncated.jpg").write_bytes(jpeg.read_bytes()[:300])
  jpeg.unlink()
  (root / "broken/text.jpg").write_text("not a picture")
  (root / "broken/empty.png").write_bytes(b"")


def _make_folder(root, photos=40, seed=0):
  root.mkdir(parents=True, exist_ok=True)
  good = _write_photos(root, photos, seed)
  special = _write_special(root)
  _write_broken(root)
  (root / "notes.txt").write_text("ignored: not an image")
  os.makedirs(root / ".thumbnails")
  Image.new("RGB", (20, 20)).save(root / ".thumbnails/hidden.png")
  Image.new("RGB", (20, 20)).save(root / ".hidden.png")
  return good + list(special.values()), special


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """A folder prepared once (RGB, R x R): its root, data_dir, usable files, report."""
  base = tmp_path_factory.mktemp("folder")
  root, data_dir = base / "photos_of_mine", base / "tfds"
  usable, special = _make_folder(root)
  assert any(_score(p) < 0.05 for p in usable)  # Not the at-least-one fallback case.
  path = data.prepare(str(root), data_dir=str(data_dir), data_resolution=R)
  return root, str(data_dir), usable, special, path


def _records(path, split):
  """{relative path: stored uint8 image} of a prepared split, read by plain tfds."""
  source = tfds.builder_from_directory(path).as_data_source(split)
  out = {}
  for i in range(len(source)):
    record = source[i]
    name = record["path"]
    out[name.decode() if isinstance(name, bytes) else name] = record["image"]
  return out


# --- What is prepared ---------------------------------------------------------------------


def test_counts_per_split_are_the_usable_images(prepared):
  root, data_dir, usable, _, path = prepared
  spec = data.dataset_info(str(root), data_dir=data_dir, data_resolution=R)
  assert spec.num_train + spec.num_test == len(usable)
  assert (spec.native_resolution, spec.channels, spec.resolutions) == (R, 3, (4, 8, 16))
  train, test = _records(path, "train"), _records(path, "test")
  assert set(train) | set(test) == set(usable)  # No hidden file, no .txt, nothing broken.
  assert (len(train), len(test)) == (spec.num_train, spec.num_test)


def test_held_out_files_are_those_whose_path_hashes_low_and_never_in_train(prepared):
  _, _, usable, _, path = prepared
  train, test = _records(path, "train"), _records(path, "test")
  assert set(test) == {p for p in usable if _score(p) < 0.05}
  assert not set(test) & set(train)


def test_undecodable_files_are_skipped_and_reported_by_name(prepared):
  _, _, _, _, path = prepared
  lines = (open(os.path.join(path, "skipped.txt")).read().strip().split("\n"))
  reasons = dict(line.split("\t") for line in lines)
  assert set(reasons) == BROKEN
  assert reasons["broken/empty.png"] == "empty file"
  assert "truncated" in reasons["broken/truncated.jpg"].lower()
  report = open(os.path.join(path, "report.txt")).read()
  for name in BROKEN:
    assert name in report
  assert "Skipped 3" in report and "skipped.txt" in report


def test_every_file_kind_becomes_the_right_rgb(prepared):
  _, _, _, special, path = prepared
  images = {**_records(path, "train"), **_records(path, "test")}
  at = {kind: images[rel].astype(int) for kind, rel in special.items()}
  assert all(x.shape == (R, R, 3) and x.dtype == np.uint8 for x in images.values())
  assert (at["grey"] == 90).all()
  assert (np.abs(at["rgba"] - 128) <= 1).all()  # Composited on black.
  assert (np.abs(at["palette"] - [200, 30, 60]) <= 8).all()
  assert (at["sixteen"] == 200).all()  # 16 bits scaled, not clipped.
  assert (np.abs(at["cmyk"] - [255, 0, 0]) <= 3).all()
  # Antialiased: 1-pixel black and white squares average to grey (sampling would not).
  assert (np.abs(at["checker"] - 127.5) < 10).all()
  # A JPEG decoded at a reduced scale (draft) still has every one of the R x R pixels.
  assert at["coarse"].std() > 100
  # Centre-cropped: the black sides are gone.
  assert (np.abs(at["wide"] - [0, 255, 0]) <= 2).all()


def test_grayscale_option_stores_one_channel(prepared, tmp_path):
  root, _, usable, special, _ = prepared
  path = data.prepare(str(root), data_dir=str(tmp_path), data_resolution=8, channels=1)
  images = {**_records(path, "train"), **_records(path, "test")}
  assert len(images) == len(usable)
  assert all(x.shape == (8, 8, 1) for x in images.values())
  assert (np.abs(images[special["cmyk"]].astype(int) - 76) <= 3).all()  # Red's luma.
  assert (images[special["grey"]] == 90).all()


def test_batches_and_held_out_images_come_through_the_pipeline(prepared):
  root, data_dir, _, _, _ = prepared
  spec = data.dataset_info(str(root), data_dir=data_dir, data_resolution=R)
  it = data.batches(str(root), resolution=8, batch_size=8, data_dir=data_dir,
                    data_resolution=R, shard_index=0, shard_count=1)
  batch = next(it)
  assert batch.shape == (8, 8, 8, 3) and batch.dtype == np.float32
  held_out = data.eval_images(str(root), resolution=R, data_dir=data_dir, data_resolution=R)
  assert held_out.shape == (spec.num_test, R, R, 3) and 0 <= held_out.min() <= held_out.max() <= 1


def test_prepared_data_is_read_not_prepared_again(prepared, monkeypatch):
  root, data_dir, _, _, path = prepared

  def fail(*args, **kwargs):
    raise AssertionError("a prepared folder was decoded again")
  monkeypatch.setattr(folder.images.Loader, "__call__", fail)
  assert data.prepare(str(root), data_dir=data_dir, data_resolution=R) == path


# --- A folder that changes ----------------------------------------------------------------


def _copy(prepared, tmp_path):
  root = tmp_path / "copy"
  shutil.copytree(prepared[0], root)
  return root


def test_adding_files_changes_the_split_only_by_the_new_files(prepared, tmp_path, capsys):
  root, data_dir = _copy(prepared, tmp_path), str(tmp_path / "tfds")
  before = data.prepare(str(root), data_dir=data_dir, data_resolution=R)
  train0, test0 = set(_records(before, "train")), set(_records(before, "test"))
  added = set(_write_photos(root, 30, seed=1, prefix="more"))
  capsys.readouterr()
  after = data.prepare(str(root), data_dir=data_dir, data_resolution=R)
  assert "changed since it was prepared (30 added, 0 removed, 0 modified)" in (
      capsys.readouterr().out)
  train1, test1 = set(_records(after, "train")), set(_records(after, "test"))
  assert train0 <= train1 and test0 <= test1
  assert (train1 - train0) | (test1 - test0) == added
  assert test1 - test0  # The new files reached the held-out split too.
  assert not os.path.exists(before)  # The stale copy is gone.


def test_a_changed_file_is_detected_and_prepared_again(prepared, tmp_path, capsys):
  root, data_dir = _copy(prepared, tmp_path), str(tmp_path / "tfds")
  grey = prepared[3]["grey"]
  data.dataset_info(str(root), data_dir=data_dir, data_resolution=R)
  size = os.path.getsize(root / grey)
  Image.new("L", (40, 23), 170).save(root / grey)
  assert os.path.getsize(root / grey) == size  # Only the modification time tells.
  capsys.readouterr()
  data.dataset_info(str(root), data_dir=data_dir, data_resolution=R)
  assert "(0 added, 0 removed, 1 modified): preparing it again" in capsys.readouterr().out
  path = data.prepare(str(root), data_dir=data_dir, data_resolution=R)
  images = {**_records(path, "train"), **_records(path, "test")}
  assert (images[grey] == 170).all()
  (root / "broken/text.jpg").unlink()
  capsys.readouterr()
  spec = data.dataset_info(str(root), data_dir=data_dir, data_resolution=R)
  assert "(0 added, 1 removed, 0 modified): preparing it again" in capsys.readouterr().out
  assert spec.num_train + spec.num_test == len(prepared[2])


# --- How the split is made ----------------------------------------------------------------


def test_train_and_val_subfolders_are_the_splits(tmp_path):
  root = tmp_path / "split"
  train = _write_photos(root, 6, seed=2, prefix="train")
  val = _write_photos(root, 3, seed=3, prefix="val")
  _write_photos(root, 2, seed=4, prefix="extra")
  path = data.prepare(str(root), data_dir=str(tmp_path / "tfds"), data_resolution=8)
  assert set(_records(path, "train")) == set(train)
  assert set(_records(path, "test")) == set(val)
  assert "2 image files outside those subfolders were left out" in open(
      os.path.join(path, "report.txt")).read()


def test_a_small_folder_holds_out_its_lowest_hash_that_decodes(tmp_path):
  root = tmp_path / "few"
  root.mkdir()
  names = [n for n in (f"img{i}.png" for i in range(100)) if _score(n) >= 0.05][:4]
  for name, crop in zip(names, _photo_crops(4, 5)):
    Image.fromarray(crop).save(root / name)
  lowest, second = sorted(names, key=_score)[:2]
  path = data.prepare(str(root), data_dir=str(tmp_path / "a"), data_resolution=8)
  assert set(_records(path, "test")) == {lowest}
  (root / lowest).write_bytes(b"")  # Now it cannot be decoded: the next one is held out.
  path = data.prepare(str(root), data_dir=str(tmp_path / "b"), data_resolution=8)
  assert set(_records(path, "test")) == {second}
  assert set(_records(path, "train")) == set(names) - {lowest, second}


# --- Bad input: one line that names the folder and what to do ------------------------------


def _refusal(match, name, **kwargs):
  with pytest.raises(data.DataError, match=match) as e:
    data.dataset_info(name, **kwargs)
  assert "\n" not in str(e.value)
  return str(e.value)


def test_what_names_a_folder(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "digits").mkdir()
  (tmp_path / "photos").mkdir()
  assert data.is_folder("photos") and data.is_folder("./nowhere") and data.is_folder("~/x")
  assert not data.is_folder("mnist") and not data.is_folder("celeb_a/1.0.0")
  spec = data.dataset_info("digits", data_dir=str(tmp_path / "tfds"))  # Built in wins.
  assert spec.num_train == 1500


def test_bad_folders_are_refused_in_one_line(tmp_path):
  kwargs = dict(data_dir=str(tmp_path / "tfds"))
  _refusal(f"{tmp_path}/missing does not exist: give a folder", str(tmp_path / "missing"),
           **kwargs)
  (tmp_path / "a.png").write_bytes(b"")
  _refusal("a.png is a file, not a folder: give the folder", str(tmp_path / "a.png"), **kwargs)
  (tmp_path / "text").mkdir()
  (tmp_path / "text/readme.txt").write_text("hello")
  _refusal("text holds no image files .*: put images in it", str(tmp_path / "text"), **kwargs)
  (tmp_path / "broken").mkdir()
  (tmp_path / "broken/x.jpg").write_text("hello")
  _refusal("no image in .*broken could be used .*x.jpg", str(tmp_path / "broken"), **kwargs)
  (tmp_path / "one").mkdir()
  Image.new("RGB", (20, 20)).save(tmp_path / "one/a.png")
  _refusal("one has only 1 usable image.*at least 2 are needed", str(tmp_path / "one"),
           data_resolution=8, **kwargs)


def test_bad_resolutions_and_batches_are_refused_in_one_line(prepared):
  root, data_dir, _, _, _ = prepared
  _refusal(f"resolution 48 for the images of {root} is not a power of two", str(root),
           data_dir=data_dir, data_resolution=48)
  # The largest crop's short side is under 90 px: more than 2x upsampling above 128.
  _refusal(f"every image in {root} is smaller than 512 / 2 .*choose a resolution of 128 or "
           "less", str(root), data_dir=data_dir, data_resolution=512)
  spec = data.dataset_info(str(root), data_dir=data_dir, data_resolution=R)
  with pytest.raises(data.DataError, match=f"batch_size {spec.num_train + 1} is larger than "
                     f".*{root}.*use a batch size of at most {spec.num_train}"):
    data.batches(str(root), resolution=R, batch_size=spec.num_train + 1, data_dir=data_dir,
                 data_resolution=R)
  with pytest.raises(data.DataError, match="apply only to a folder of images, and 'digits'"):
    data.dataset_info("digits", data_dir=data_dir, channels=1)


# --- Processes and the command line -------------------------------------------------------


_PREPARE_WHEN_TOLD = """
import os, sys, time
from progae_jax import data
from progae_jax.data import images
decode = images.Loader.__call__
def slow(self, path):  # Long enough for the two processes to meet.
  time.sleep(0.02)
  return decode(self, path)
images.Loader.__call__ = slow
print("ready", flush=True)
while not os.path.exists(sys.argv[3]):
  time.sleep(0.01)
print(data.dataset_info(sys.argv[1], data_dir=sys.argv[2], data_resolution=8))
"""


def test_processes_preparing_one_folder_at_once_take_turns(tmp_path):
  root, go = tmp_path / "shared", tmp_path / "go"
  _write_photos(root, 60, seed=6)
  procs = [subprocess.Popen([sys.executable, "-c", _PREPARE_WHEN_TOLD, str(root),
                             str(tmp_path / "tfds"), str(go)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for _ in range(2)]
  for proc in procs:
    assert proc.stdout.readline().strip() == "ready"
  go.write_text("")  # Both start preparing now.
  outs = []
  for proc in procs:
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-2000:]
    outs.append(out)
  assert sum(out.count("Prepared ") for out in outs) == 1
  assert all("num_train=" in out for out in outs)


def test_progae_prepare_prints_the_report_and_refuses_bad_input(prepared, capsys):
  root, data_dir, _, _, path = prepared
  assert cli.main(["prepare", str(root), "--data-dir", data_dir, "--data-resolution",
                   str(R)]) == 0
  out = capsys.readouterr().out
  assert "Already prepared: Prepared" in out and "broken/text.jpg" in out and path in out
  assert cli.main(["prepare", str(root), "--data-dir", data_dir, "--data-resolution",
                   "12"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "progae prepare: error: resolution 12" in err


def test_progae_train_on_a_folder_runs_two_stages_and_writes_pictures(tmp_path, monkeypatch):
  root, workdir = tmp_path / "mine", tmp_path / "run"
  _write_photos(root, 24, seed=7)
  (root / "bad.jpg").write_text("oops")
  Image.new("RGB", (20, 20), (10, 200, 30)).save(root / "plain.png")
  os.rename(root / "plain.png", os.path.join(os.fsencode(root), b"caf\xe9.png"))  # Not UTF-8.
  proc = subprocess.run(
      [sys.executable, "-m", "progae_jax", "train", "--dataset", str(root), "--data-dir",
       str(tmp_path / "tfds"), "--max-resolution", "8", "--batch-size", "4",
       "--fade-images", "8", "--stable-images", "8", "--eval-every-images", "1000",
       "--workdir", str(workdir), "--quiet"],
      capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "Prepared " in proc.stdout and "bad.jpg" in proc.stdout and "8x8 RGB" in proc.stdout
  assert "final held-out PSNR" in proc.stdout and "at 8x8" in proc.stdout
  # The main preset anneals over 25,600 images, far more than this run: its last phase.
  assert ("anneal_images=25,600 is longer than this run (24 images): the learning rate "
          "anneals over the run's last phase (8 images) instead") in proc.stdout
  pictures = sorted(os.listdir(workdir / "pictures"))
  assert any("4x4" in p for p in pictures) and any("8x8" in p for p in pictures), pictures
  out = tmp_path / "recon.png"
  assert cli.main(["reconstruct", str(workdir), "--out", str(out), "--count", "2"]) == 0
  assert Image.open(out).size[0] > 0
  # By default as many held-out images as there are, up to 16; more than there are: refused.
  held_out = data.dataset_info(str(root), data_dir=str(tmp_path / "tfds"),
                               data_resolution=8).num_test
  assert held_out < 16
  shown = []
  monkeypatch.setattr(plots, "save_reconstructions",
                      lambda path, originals, *a, **k: shown.append(len(originals)))
  assert cli.main(["reconstruct", str(workdir), "--out", str(tmp_path / "every.png")]) == 0
  assert shown == [held_out]
  assert cli.main(["reconstruct", str(workdir), "--out", str(out), "--count", "16"]) == 2


def test_a_library_run_stores_the_folder_as_its_model_takes_it(prepared, tmp_path):
  """No dataset options: the folder is stored at the model's resolution and channels (here
  8x8 grayscale), as `progae train` stores it, not at the data layer's 32x32 RGB."""
  root, data_dir = prepared[0], str(tmp_path / "tfds")
  config = TrainConfig(
      model=ModelConfig(image_channels=1, max_resolution=8, channels={4: 8, 8: 8},
                        latent_dim=8),
      dataset=str(root), data_dir=data_dir, eval_images=2,
      default_stage=StageSchedule(fade_images=4, stable_images=4, batch_size=4))
  result = train.train_and_evaluate(config, str(tmp_path / "run"), progress=False,
                                    stop_after_images=4)
  assert result.images_seen == 4
  with open(tmp_path / "run" / "config.json") as f:
    options = json.load(f)["dataset_options"]
  assert options == {"data_resolution": 8, "channels": 1}
  assert data.dataset_info(str(root), data_dir=data_dir, **options).image_shape == (8, 8, 1)


def test_a_resume_on_a_changed_folder_is_refused_or_continues_when_asked(tmp_path, capsys):
  """The folder's prepared copy and held-out images are pinned to the run: a resume after
  files were added is one line (status 2) naming both ways on; --continue-on-new-data goes on
  from the checkpoint with the old held-out images, and config.json and the log say so."""
  root, workdir = tmp_path / "mine", tmp_path / "run"
  _write_photos(root, 24, seed=7)
  config = tmp_path / "config.json"
  config.write_text(json.dumps(tiny_run(dataset=str(root), eval_images=1)))
  argv = ["train", "--preset", "digits", "--config", str(config), "--data-dir",
          str(tmp_path / "tfds"), "--workdir", str(workdir), "--quiet", "--no-tensorboard",
          "--batch-size", "4", "--fade-images", "0", "--stable-images", "12",
          # 4x4 only: fewer programs to compile.
          "--config.stages.8.stable_images=0", "--config.stages.8.fade_images=0",
          "--config.stages.8.batch_size=4"]
  assert cli.main([*argv, "--stop-after-images", "4"]) == 0  # Mid-phase, as below.
  held_out = np.load(workdir / "held_out.npy")
  _write_photos(root, 4, seed=8, prefix="more")
  capsys.readouterr()
  assert cli.main(argv) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "changed since this run started (4 added, 0 removed" in err[0]
  assert "--restart" in err[0] and "--continue-on-new-data" in err[0], err
  assert cli.main([*argv, "--continue-on-new-data", "--stop-after-images", "8"]) == 0
  assert "continuing at 4 images on the new contents" in capsys.readouterr().out
  np.testing.assert_array_equal(np.load(workdir / "held_out.npy"), held_out)
  change = json.loads((workdir / "config.json").read_text())["data_changes"][0]
  assert change["images_seen"] == 4 and change["changes"].startswith("4 added")
  logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["images_seen"] for r in logged if r["kind"] == "data"] == [4]
  assert cli.train_config(["--config", str(workdir / "config.json")]).dataset == str(root)


def test_any_file_name_unreadable_subfolders_and_a_killed_preparation(tmp_path, monkeypatch):
  """A name that is not UTF-8 is an image like any other (shown with \\x escapes); a subfolder
  that cannot be listed is named in the report; the incomplete.* folder of a preparation
  that was killed is removed by the next one."""
  root, data_dir = tmp_path / "odd", tmp_path / "tfds"
  _write_photos(root, 6, seed=3)
  Image.new("RGB", (20, 20), (10, 200, 30)).save(root / "plain.png")
  os.rename(root / "plain.png", os.path.join(os.fsencode(root), b"caf\xe9.png"))  # Latin-1.
  _write_photos(root, 1, seed=4, prefix="locked")
  listing = os.scandir
  locked = str(root / "locked")

  def scandir(path="."):
    if not isinstance(path, int) and os.fsdecode(path) == locked:  # Root reads through modes.
      raise PermissionError(13, "Permission denied", locked)
    return listing(path)

  monkeypatch.setattr(os, "scandir", scandir)
  where = folder.target(folder.plan(str(root)), str(data_dir), R, 3)
  killed = os.path.join(os.path.dirname(where.path), "incomplete.ABC123_1.0.0")
  os.makedirs(os.path.join(killed, "half_written"))
  path = data.prepare(str(root), data_dir=str(data_dir), data_resolution=R)
  report = open(os.path.join(path, "report.txt")).read()
  assert "7 image files" in report and "Skipped" not in report, report
  assert "1 subfolder(s) could not be read and were left out: locked (Permission denied)" in report
  names = {**_records(path, "train"), **_records(path, "test")}
  assert "caf\\xe9.png" in names
  assert not os.path.exists(killed)
