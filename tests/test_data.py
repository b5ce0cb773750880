"""Tests of progae_jax.data: built-in and by-name datasets, resolutions, the grain pipeline."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from progae_jax import data
from progae_jax.data import builtin, convert, sources
from progae_jax.ops import downsample

from conftest import TEST_LARGE_PATCH_COUNTS


@pytest.fixture
def mock_tfds():
  """Makes a context in which tfds serves fake datasets (random images) offline."""
  def mock(num_examples=64, **kwargs):
    return tfds.testing.mock_data(num_examples=num_examples,
                                  policy=tfds.testing.MockPolicy.USE_CODE, **kwargs)
  return mock


def _take(it, n):
  return [next(it) for _ in range(n)]


def _hashes(images):
  return [hashlib.sha1(np.ascontiguousarray(x).tobytes()).hexdigest() for x in images]


def _stored_split(name, split, data_dir):
  """A built-in split read by plain tfds, without this library's code."""
  builder = tfds.builder_from_directory(os.path.join(data_dir, name, "1.0.0"))
  return builder.as_data_source(split)


def _all_stored(name, split, data_dir):
  """Every stored image of a built-in split, as uint8, in file order."""
  source = _stored_split(name, split, data_dir)
  return np.stack([source[i]["image"] for i in range(len(source))])


# --- Built-in datasets --------------------------------------------------------------------


EXPECTED = {"digits": (8, 1, 1500, 297), "image_patches": (64, 3, 20_000, 2_000),
            "image_patches_128": (128, 3, 70, 20)}  # Prepared small here (conftest.py).


@pytest.mark.parametrize("name", data.BUILTIN_DATASETS)
def test_builtin_loads_at_every_resolution(name, data_dir):
  spec = data.dataset_info(name, data_dir=data_dir)
  assert (spec.native_resolution, spec.channels, spec.num_train, spec.num_test) == EXPECTED[name]
  assert spec.resolutions[0] == 4 and spec.resolutions[-1] == spec.native_resolution
  for r in spec.resolutions:
    batch = next(data.batches(name, resolution=r, batch_size=16, data_dir=data_dir))
    assert batch.shape == (16, r, r, spec.channels) and batch.dtype == np.float32
    assert 0.0 <= batch.min() and batch.max() <= 1.0 and batch.max() > 0.5
    held_out = data.eval_images(name, resolution=r, count=10, data_dir=data_dir)
    assert held_out.shape == (10, r, r, spec.channels) and held_out.dtype == np.float32
    assert 0.0 <= held_out.min() and held_out.max() <= 1.0


def test_builtin_files_are_array_record_tensors(data_dir):
  path = os.path.join(data_dir, "image_patches", "1.0.0")
  files = os.listdir(path)
  assert any(f.startswith("image_patches-train.array_record") for f in files)
  assert any(f.startswith("image_patches-test.array_record") for f in files)
  features = json.dumps(json.load(open(os.path.join(path, "features.json"))))
  assert "Tensor" in features and "Image" not in features


def test_builtin_is_read_not_rebuilt(data_dir, monkeypatch):
  def fail(split):
    raise AssertionError("prepared data must be read, not generated again")
  monkeypatch.setattr(builtin, "_patch_examples", fail)
  monkeypatch.setattr(builtin, "_digit_examples", fail)
  for name in data.BUILTIN_DATASETS:
    data.dataset_info(name, data_dir=data_dir)


def test_default_data_dir_is_tfds_data_dir_env(tmp_path, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
  assert data.dataset_info("digits").data_dir == str(tmp_path)
  assert os.path.isdir(tmp_path / "digits" / "1.0.0")


def test_resolutions_are_repeated_downsample(data_dir):
  """A stage's images are the next stage's, box-filtered: what the model's skip path sees."""
  full = data.eval_images("image_patches", resolution=64, count=32, data_dir=data_dir)
  stored = _all_stored("image_patches", "test", data_dir)[:32]
  np.testing.assert_array_equal(full, stored.astype(np.float32) / np.float32(255))
  x = full
  for r in (32, 16, 8, 4):
    x = downsample(x)
    np.testing.assert_allclose(
        data.eval_images("image_patches", resolution=r, count=32, data_dir=data_dir), x,
        rtol=0, atol=1e-6)
  kwargs = dict(batch_size=32, seed=3, data_dir=data_dir, shard_index=0, shard_count=1)
  at8 = next(data.batches("image_patches", resolution=8, **kwargs))
  at16 = next(data.batches("image_patches", resolution=16, **kwargs))
  np.testing.assert_allclose(at8, downsample(at16), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", data.BUILTIN_DATASETS)
def test_train_and_test_do_not_overlap(name, data_dir):
  train = set(_hashes(_all_stored(name, "train", data_dir)))
  test = set(_hashes(_all_stored(name, "test", data_dir)))
  assert len(test) > 0 and not train & test


def test_image_patches_test_photos_are_unseen_in_train(data_dir):
  def sources(split):
    source = _stored_split("image_patches", split, data_dir)
    return {int(source[i]["source"]) for i in range(len(source))}
  train, test = sources("train"), sources("test")
  assert len(train) == 7 and len(test) == 2 and not train & test
  assert {data.PATCH_PHOTOS[i] for i in test} == {"coffee", "china"}


def test_image_patches_are_deterministic(data_dir):
  regenerated = [example["image"] for _, example in builtin._patch_examples("test")]
  assert sorted(_hashes(regenerated)) == sorted(_hashes(_all_stored("image_patches", "test",
                                                                    data_dir)))
  # The large preset's crops: 128 pixels wide, from the same photographs.
  large = [example["image"] for _, example in builtin._patch_examples(
      "test", 128, TEST_LARGE_PATCH_COUNTS)]
  assert large[0].shape == (128, 128, 3)
  assert sorted(_hashes(large)) == sorted(_hashes(_all_stored("image_patches_128", "test",
                                                              data_dir)))


def test_crash_while_preparing_leaves_nothing_that_reads_as_prepared(tmp_path, monkeypatch):
  real = builtin._digit_examples

  def crash(split):
    for i, example in enumerate(real(split)):
      if i == 100:
        raise RuntimeError("killed midway")
      yield example
  monkeypatch.setattr(builtin, "_digit_examples", crash)
  with pytest.raises(RuntimeError, match="killed midway"):
    data.prepare("digits", data_dir=tmp_path)
  assert not os.path.exists(tmp_path / "digits" / "1.0.0")
  assert not data.Digits(data_dir=str(tmp_path), file_format="array_record").is_prepared()
  monkeypatch.setattr(builtin, "_digit_examples", real)
  assert data.dataset_info("digits", data_dir=tmp_path).num_train == 1500


_PREPARE_AND_HANG = """
import sys, time
from progae_jax import data
from progae_jax.data import builtin
real = builtin._digit_examples
def slow(split):
  for i, example in enumerate(real(split)):
    if i == 100:
      print("writing", flush=True)
      time.sleep(60)
    yield example
builtin._digit_examples = slow
data.prepare("digits", data_dir=sys.argv[1])
"""


def test_killed_while_preparing_leaves_nothing_that_reads_as_prepared(tmp_path):
  proc = subprocess.Popen([sys.executable, "-c", _PREPARE_AND_HANG, str(tmp_path)],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  try:
    assert proc.stdout.readline().strip() == "writing"
  finally:
    proc.kill()
    proc.wait()
  assert any(p.name.startswith("incomplete.") for p in (tmp_path / "digits").iterdir())
  assert not os.path.exists(tmp_path / "digits" / "1.0.0")
  assert data.dataset_info("digits", data_dir=tmp_path).num_test == 297


def test_processes_preparing_at_once_take_turns(tmp_path):
  procs = [subprocess.Popen([sys.executable, "-c", "import sys; from progae_jax import data; "
                             "print(data.dataset_info('digits', data_dir=sys.argv[1]).num_train)",
                             str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for _ in range(2)]
  for proc in procs:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.strip() == "1500"


# --- The pipeline -------------------------------------------------------------------------


def _digits(data_dir, **kwargs):
  kwargs = {"resolution": 8, "batch_size": 300, "seed": 0, "shard_index": 0,
            "shard_count": 1, **kwargs}
  return data.batches("digits", data_dir=data_dir, **kwargs)


def test_same_seed_same_batches_other_seed_other_order(data_dir):
  first = _take(_digits(data_dir, seed=7), 6)
  again = _take(_digits(data_dir, seed=7), 6)
  other = _take(_digits(data_dir, seed=8), 6)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(first[0], other[0])
  # Same images per epoch (1,500 = 5 batches of 300), in another order.
  assert sorted(_hashes(np.concatenate(first[:5]))) == sorted(_hashes(np.concatenate(other[:5])))


def test_each_epoch_is_a_new_order_of_every_image(data_dir):
  batches = _take(_digits(data_dir), 10)
  epoch1, epoch2 = np.concatenate(batches[:5]), np.concatenate(batches[5:])
  everything = sorted(_hashes(data.eval_images("digits", resolution=8, data_dir=data_dir,
                                               test_split="train")))
  assert sorted(_hashes(epoch1)) == everything == sorted(_hashes(epoch2))
  assert not np.array_equal(epoch1, epoch2)


def test_unshuffled_batches_follow_the_file_order(data_dir):
  files = data.eval_images("digits", resolution=8, data_dir=data_dir, test_split="train")
  batches = _take(_digits(data_dir, shuffle=False), 6)
  np.testing.assert_array_equal(np.concatenate(batches[:5]), files)
  np.testing.assert_array_equal(batches[5], files[:300])


def test_restored_state_resumes_at_the_same_batch(data_dir):
  it = _digits(data_dir, batch_size=64)
  _take(it, 30)  # Past the end of the first epoch (23 batches).
  state = json.loads(json.dumps(it.get_state()))  # It survives a trip through JSON.
  expected = _take(it, 5)
  restored = _digits(data_dir, batch_size=64)
  restored.set_state(state)
  for a, b in zip(expected, _take(restored, 5)):
    np.testing.assert_array_equal(a, b)


def test_shards_slice_the_global_batches_disjointly_and_cover_the_epoch(data_dir):
  """Process i's k-th batch is rows [i*b, (i+1)*b) of the one-process k-th batch."""
  whole = _take(_digits(data_dir, seed=5), 5)  # One epoch: 5 global batches of 300.
  for count in (2, 3):
    shards = [_take(_digits(data_dir, seed=5, shard_index=i, shard_count=count), 5)
              for i in range(count)]
    for k in range(5):
      assert shards[0][k].shape == (300 // count, 8, 8, 1)
      np.testing.assert_array_equal(np.concatenate([s[k] for s in shards]), whole[k])
    seen = [set(_hashes(np.concatenate(s))) for s in shards]
    assert sum(len(s) for s in seen) == len(set().union(*seen)) == 1500


def test_default_shard_is_the_jax_process(data_dir):
  batch = next(data.batches("digits", resolution=4, batch_size=20, data_dir=data_dir))
  assert batch.shape == (20, 4, 4, 1)


def test_num_epochs_stops_and_drops_only_the_last_partial_batch(data_dir):
  assert len(list(_digits(data_dir, num_epochs=1))) == 5
  assert len(list(_digits(data_dir, batch_size=400, num_epochs=2))) == 7  # 3000 // 400


def test_cache_and_threads_do_not_change_the_batches(data_dir):
  reference = _take(_digits(data_dir, cache=False, worker_threads=0), 8)
  for kwargs in ({"cache": True}, {"cache": True, "worker_threads": 0},
                 {"cache": False, "worker_threads": 4}):
    for a, b in zip(reference, _take(_digits(data_dir, **kwargs), 8)):
      np.testing.assert_array_equal(a, b)
  kwargs = dict(resolution=16, batch_size=64, data_dir=data_dir, shard_index=0, shard_count=1)
  for a, b in zip(_take(data.batches("image_patches", cache=True, **kwargs), 3),
                  _take(data.batches("image_patches", cache=False, **kwargs), 3)):
    np.testing.assert_array_equal(a, b)


def test_later_stages_reuse_the_stored_images(data_dir, monkeypatch):
  data.clear_cache()
  list(_digits(data_dir, num_epochs=1))  # Reads every training image once, at 8x8.
  reference = _take(_digits(data_dir, resolution=4, cache=False), 5)

  def no_disk(self, indices):
    raise AssertionError("a later stage read the disk again")
  monkeypatch.setattr(sources.Read, "__call__", no_disk)
  for a, b in zip(reference, _take(_digits(data_dir, resolution=4), 5)):
    np.testing.assert_array_equal(a, b)
  data.clear_cache()
  with pytest.raises(AssertionError, match="read the disk again"):
    next(_digits(data_dir, resolution=4))


def test_worker_processes_give_the_same_batches(data_dir):
  kwargs = dict(resolution=8, batch_size=100, seed=1, shard_index=0, shard_count=1)
  reference = _take(data.batches("digits", data_dir=data_dir, **kwargs), 4)
  it = data.batches("digits", data_dir=data_dir, worker_processes=1, **kwargs)
  try:
    for a, b in zip(reference, _take(it, 4)):
      np.testing.assert_array_equal(a, b)
  finally:
    it.close()


# --- Any tfds dataset by name ---------------------------------------------------------------


@pytest.mark.parametrize("name, channels", [("mnist", 1), ("cifar10", 3)])
def test_tfds_dataset_by_name(name, channels, mock_tfds, tmp_path):
  with mock_tfds():
    spec = data.dataset_info(name, data_dir=tmp_path)
    assert (spec.native_resolution, spec.channels) == (32, channels)
    assert spec.resolutions == (4, 8, 16, 32)
    for r in spec.resolutions:
      batch = next(data.batches(name, resolution=r, batch_size=16, data_dir=tmp_path))
      assert batch.shape == (16, r, r, channels) and batch.dtype == np.float32
      assert 0.0 <= batch.min() and batch.max() <= 1.0
    assert data.eval_images(name, resolution=8, count=5, data_dir=tmp_path).shape == (
        5, 8, 8, channels)


def test_mnist_is_padded_or_resized_to_32_as_asked(mock_tfds, tmp_path):
  with mock_tfds():
    padded = data.eval_images("mnist", resolution=32, count=4, data_dir=tmp_path)
    resized = data.eval_images("mnist", resolution=32, count=4, data_dir=tmp_path,
                               fit="resize")
    with pytest.raises(data.DataError, match="28x28.*fit='pad' or fit='resize'"):
      data.dataset_info("mnist", data_dir=tmp_path, fit="error")
  assert (padded[:, :2] == 0).all() and (padded[:, :, -2:] == 0).all()
  assert padded[:, 2:30, 2:30].max() > 0.5 and resized[:, :2].max() > 0.0


def test_resize_is_bilinear_like_jax_image_resize():
  import jax
  images = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 2)).astype(np.uint8)
  ours = convert.Convert("resize", 32, 0)(images)
  theirs = jax.image.resize(images / np.float32(255), (3, 32, 32, 2), "linear", antialias=False)
  np.testing.assert_allclose(ours, np.asarray(theirs), rtol=0, atol=1e-6)


def test_non_square_images_are_centre_cropped(mock_tfds, tmp_path):
  with mock_tfds(num_examples=4):
    spec = data.dataset_info("celeb_a", data_dir=tmp_path, test_split="validation")
    assert spec.image_shape == (218, 178, 3) and spec.native_resolution == 256
    batch = next(data.batches("celeb_a", resolution=16, batch_size=4, data_dir=tmp_path,
                              fit="resize"))
  assert batch.shape == (4, 16, 16, 3)


# --- Bad data and bad requests --------------------------------------------------------------


def test_unknown_dataset_lists_the_builtins(tmp_path):
  with pytest.raises(data.UnknownDatasetError, match="digits, image_patches"):
    data.dataset_info("no_such_dataset_xyz", data_dir=tmp_path)


def test_missing_tfds_dataset_says_how_to_prepare_it(tmp_path):
  for where in (tmp_path, tmp_path / "missing"):
    with pytest.raises(data.DatasetNotPreparedError) as e:
      data.batches("mnist", resolution=8, batch_size=8, data_dir=where)
    assert f"tfds build mnist --file_format=array_record --data_dir {where}" in str(e.value)


def test_damaged_builtin_data_dir_is_refused(tmp_path):
  data.prepare("digits", data_dir=tmp_path)
  path = tmp_path / "digits" / "1.0.0"
  shard = next(p for p in path.iterdir() if "train.array_record" in p.name)
  shard.write_bytes(shard.read_bytes()[:1000])
  with pytest.raises(data.DataError, match=f"delete {path}"):
    data.batches("digits", resolution=8, batch_size=8, data_dir=tmp_path)
  (path / "dataset_info.json").write_text("{not json")
  with pytest.raises(data.DataError, match="delete"):
    data.dataset_info("digits", data_dir=tmp_path)
  a_file = tmp_path / "a_file"
  a_file.write_text("")
  with pytest.raises(data.DataError, match="not a directory"):
    data.dataset_info("digits", data_dir=a_file)


def test_empty_or_unknown_split_is_refused(data_dir):
  with pytest.raises(data.DataError, match="empty"):
    _digits(data_dir, split="train[:0]")
  with pytest.raises(data.DataError, match=r"no split 'validation'.*\['train', 'test'\]"):
    _digits(data_dir, split="validation")


def test_batch_size_larger_than_the_split_is_refused(data_dir):
  with pytest.raises(data.DataError, match=r"batch_size 298 .*\(297 images\)"):
    _digits(data_dir, split="test", batch_size=298)


def test_global_batch_not_divisible_by_shard_count_is_refused(data_dir):
  with pytest.raises(data.DataError, match="batch_size 10 .* shard_count 3"):
    _digits(data_dir, batch_size=10, shard_index=0, shard_count=3)
  with pytest.raises(data.DataError, match="shard_index 2"):
    _digits(data_dir, shard_index=2, shard_count=2)


def test_unreachable_resolution_is_refused(data_dir):
  with pytest.raises(data.DataError, match="resolution 16 is above 'digits'.* 8"):
    _digits(data_dir, resolution=16)
  with pytest.raises(data.DataError, match="resolution 24 cannot be reached .*native "
                     "resolution 64"):
    data.eval_images("image_patches", resolution=24, data_dir=data_dir)


def test_images_of_the_wrong_rank_are_refused(mock_tfds, tmp_path):
  with mock_tfds():
    with pytest.raises(data.DataError, match="rank 2 .* or 3 .*got shape \\(\\)"):
      data.dataset_info("mnist", data_dir=tmp_path, image_key="label")
    with pytest.raises(data.DataError, match="no image feature 'picture'"):
      data.dataset_info("mnist", data_dir=tmp_path, image_key="picture")


def test_images_of_the_wrong_dtype_are_refused(mock_tfds, tmp_path):
  def float_images(builder, split, **kwargs):
    return [{"image": np.zeros((28, 28, 1), np.float32)}] * 10
  with mock_tfds(as_data_source_fn=float_images):
    with pytest.raises(data.DataError, match="uint8 or uint16, got float32"):
      data.batches("mnist", resolution=8, batch_size=4, data_dir=tmp_path)


def test_images_of_varying_size_are_refused(mock_tfds, tmp_path):
  with mock_tfds():
    with pytest.raises(data.DataError, match="vary in size"):
      data.dataset_info("tf_flowers", data_dir=tmp_path)


def test_bad_arguments_are_refused(data_dir):
  with pytest.raises(data.DataError, match="batch_size must be a positive integer"):
    _digits(data_dir, batch_size=0)
  with pytest.raises(data.DataError, match="fit='crop' is not one of"):
    _digits(data_dir, fit="crop")
  with pytest.raises(TypeError, match="unknown dataset options \\['colour'\\]"):
    _digits(data_dir, colour=True)
  with pytest.raises(data.DataError, match="count 300 is larger"):
    data.eval_images("digits", resolution=8, count=300, data_dir=data_dir)
