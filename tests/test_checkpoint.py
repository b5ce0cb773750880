"""Checkpoints a user can trust: exact resume, kill safety, clear errors, inspection.

The runs here are real `progae train` processes on the digits (4x4 -> 8x8, 512 images):

    4x4 stable [0, 128)  ->  8x8 fade [128, 384)  ->  8x8 stable [384, 512)

with a checkpoint every 64 images and at each phase end. They share the session's persistent
XLA compilation cache, so only the first one pays for compiling (the cache stores the very
executables a fresh compile makes, so the bits are the same).
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from progae_jax import checkpoint, cli, count_params, data, train
from progae_jax.checkpoint import CheckpointError
from progae_jax.config import ModelConfig
from progae_jax.schedule import StageSchedule, TrainConfig

from conftest import tiny_run

N = 512  # Images of the whole run.
CONFIG = tiny_run(
    stages={"4": {"fade_images": 0, "stable_images": 128, "batch_size": 32,
                  "learning_rate": 0.002},
            "8": {"fade_images": 256, "stable_images": 128, "batch_size": 32,
                  "learning_rate": 0.001}},
    eval_every_images=128, log_every_steps=3, checkpoint_every_images=64,
    # The learning rate anneals from 192 images on: the resumes mid-fade restart inside it.
    anneal_images=320)

# Runs `progae` with Orbax's last act of one save (the rename that makes the checkpoint) held
# back: forever (the test then kills it mid-save, every time), for a few seconds, or until a
# file MARKER.release appears.
HANG_DRIVER = '''
import asyncio, os, sys, time
from orbax.checkpoint._src.path import async_path

HANG_AT, MARKER = os.environ["PROGAE_HANG_AT"], os.environ["PROGAE_HANG_MARKER"]
SECONDS = float(os.environ.get("PROGAE_HANG_SECONDS", "3600"))
_rename = async_path.rename

async def rename(src, dst, *args, **kwargs):
  if os.path.basename(str(dst)) == HANG_AT and ".orbax-checkpoint-tmp" in str(src):
    with open(MARKER, "w") as f:
      f.write(str(src))
    deadline = time.monotonic() + SECONDS
    while time.monotonic() < deadline and not os.path.exists(MARKER + ".release"):
      await asyncio.sleep(0.02)
  return await _rename(src, dst, *args, **kwargs)

async_path.rename = rename
from progae_jax import cli
sys.exit(cli.main(sys.argv[1:]))
'''

# Runs `progae` with every array read but the first held in flight (in a thread, as a busy
# machine holds tensorstore's reads) when the first one fails, and says at exit how many of
# them never ended: a process that leaves reads behind could print their failures, or not.
SLOW_READS_DRIVER = '''
import asyncio, atexit, os, sys, time
from orbax.checkpoint._src.serialization import serialization

DELAY = float(os.environ["PROGAE_SLOW_READS"])
_deserialize, started, ended = serialization.async_deserialize, [], []

async def slow_after_first(*args, **kwargs):
  started.append(None)
  try:
    if len(started) > 1:
      await asyncio.to_thread(time.sleep, DELAY)
    return await _deserialize(*args, **kwargs)
  finally:
    ended.append(None)

@atexit.register
def report():
  if len(ended) != len(started):
    print(f"{len(started) - len(ended)} of {len(started)} reads never ended", file=sys.stderr)

serialization.async_deserialize = slow_after_first
from progae_jax import cli
sys.exit(cli.main(sys.argv[1:]))
'''


# ---------------------------------------------------------------------------------------------
# Helpers


class Runner:
  """`progae train` in fresh processes sharing one data directory and compilation cache."""

  def __init__(self, base, data_dir):
    self.base, self.data_dir = base, data_dir
    self.config = os.path.join(base, "config.json")
    with open(self.config, "w") as f:
      json.dump(CONFIG, f)
    self.driver = os.path.join(base, "hang_driver.py")
    with open(self.driver, "w") as f:
      f.write(HANG_DRIVER)
    self.slow_reads_driver = os.path.join(base, "slow_reads_driver.py")
    with open(self.slow_reads_driver, "w") as f:
      f.write(SLOW_READS_DRIVER)
    # The session's compilation cache (conftest) comes with os.environ: the tiny model's
    # steps compiled by any test's `progae train` process are loaded, not compiled, here.
    self.env = dict(os.environ, JAX_PLATFORMS="cpu", TFDS_DATA_DIR=data_dir)

  def argv(self, workdir, *extra):
    return ["train", "--preset", "digits", "--config", self.config, "--data-dir",
            self.data_dir, "--workdir", workdir, "--quiet", *extra]

  def driver_for(self, directory, source):
    path = os.path.join(str(directory), "driver.py")
    with open(path, "w") as f:
      f.write(source)
    return path

  def train(self, workdir, *extra, expect=0, program=None, **env):
    program = program or ["-m", "progae_jax"]
    proc = subprocess.run([sys.executable, *program, *self.argv(workdir, *extra)],
                          capture_output=True, text=True, timeout=300,
                          env=dict(self.env, **env))
    assert proc.returncode == expect, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc

  def start(self, workdir, *extra):
    """Starts a run in the background; its stdout and stderr go to files (`proc.out`,
    `proc.err`), never to a pipe that could fill and stall it."""
    out, err = (os.path.join(self.base, f"{os.path.basename(workdir)}.{k}") for k in ("out",
                                                                                     "err"))
    with open(out, "w") as o, open(err, "w") as e:
      proc = subprocess.Popen([sys.executable, "-m", "progae_jax", *self.argv(workdir, *extra)],
                              stdout=o, stderr=e, env=self.env)
    proc.out, proc.err = out, err
    return proc

  def hanging(self, workdir, hang_at, *extra, seconds=None):
    """Starts a run whose save of checkpoint `hang_at` stalls before its commit."""
    marker = os.path.join(self.base, f"marker_{os.path.basename(workdir)}_{hang_at}")
    env = dict(self.env, PROGAE_HANG_AT=str(hang_at), PROGAE_HANG_MARKER=marker)
    if seconds is not None:
      env["PROGAE_HANG_SECONDS"] = str(seconds)
    log = marker + ".log"  # A file, not a pipe: a full pipe would stall the run itself.
    with open(log, "w") as out:
      proc = subprocess.Popen([sys.executable, self.driver, *self.argv(workdir, *extra)],
                              stdout=out, stderr=subprocess.STDOUT, env=env)
    proc.log = log
    return proc, marker


def _leaves(state):
  return {jax.tree_util.keystr(p): np.asarray(x)
          for p, x in jax.tree_util.tree_flatten_with_path(state)[0]}


def assert_bit_identical(a, b):
  la, lb = _leaves(a), _leaves(b)
  assert la.keys() == lb.keys()
  differ = [k for k in la if la[k].dtype != lb[k].dtype or not np.array_equal(la[k], lb[k])]
  assert not differ, f"{len(differ)} of {len(la)} leaves differ, e.g. {differ[:5]}"


def _records(workdir):
  """metrics.jsonl without the wall-clock speed: what must repeat exactly."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return [{k: v for k, v in r.items() if k not in ("images_per_s", "train_seconds")}
          for r in rows]


def _read(path):
  with open(path) as f:
    return f.read()


def _steps(workdir):
  return checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True).steps()


def _wait_for(path, proc, timeout=240):
  deadline = time.monotonic() + timeout
  while not os.path.exists(path):
    if proc.poll() is not None:
      raise AssertionError(f"the run ended (rc {proc.returncode}) before the save started:\n"
                           + _read(proc.log)[-3000:])
    if time.monotonic() > deadline:
      proc.kill()
      raise AssertionError("the save never started")
    time.sleep(0.05)


# ---------------------------------------------------------------------------------------------
# Runs, shared by the tests below


@pytest.fixture(scope="module")
def runner(tmp_path_factory, data_dir):
  return Runner(str(tmp_path_factory.mktemp("ckpt_runs")), data_dir)


@pytest.fixture(scope="module")
def reference(runner):
  """All N images in one process."""
  workdir = os.path.join(runner.base, "reference")
  runner.train(workdir)
  return workdir


@pytest.fixture(scope="module")
def stopped_and_resumed(runner, reference):
  """Stopped three times, the process exiting each time: mid-phase at 4x4 (96), mid-fade at
  alpha 0.5 (N/2) and mid-fade away from any checkpoint or log step (288); then resumed to N.

  Returns (a copy of the work directory as the stop at N/2 left it, the finished one)."""
  workdir = os.path.join(runner.base, "stops")
  runner.train(workdir, "--stop-after-images", "96")
  second = runner.train(workdir, "--stop-after-images", str(N // 2))
  assert "at 96 images (4x4 stable)" in second.stdout
  assert f"stopped at {N // 2} images" in second.stdout
  stopped = os.path.join(runner.base, "stopped_copy")
  shutil.copytree(workdir, stopped)
  third = runner.train(workdir, "--stop-after-images", "288")
  assert f"resuming {workdir} at {N // 2} images (8x8 fade)" in third.stdout
  last = runner.train(workdir)
  assert "at 288 images (8x8 fade)" in last.stdout
  return stopped, workdir


# ---------------------------------------------------------------------------------------------
# Exact resume


def test_three_stops_then_resumes_in_new_processes_are_bit_identical(reference,
                                                                   stopped_and_resumed):
  stopped, resumed = stopped_and_resumed
  _, meta = checkpoint.restore(stopped)
  assert (meta["images_seen"], meta["resolution"], meta["phase"]) == (N // 2, 8, "fade")
  assert meta["alpha"] == 0.5 and meta["phase_index"] == 1 and meta["data_iterator"]

  want, want_meta = checkpoint.restore(reference)
  got, got_meta = checkpoint.restore(resumed)
  assert want_meta["images_seen"] == got_meta["images_seen"] == N
  # Parameters, Adam's moments and count, the learning rate, EMA, step and RNG: every bit.
  assert_bit_identical(want, got)
  assert int(got["step"]) == N // 32
  # The same losses, step by step, and the same held-out evaluations: the same batches,
  # in the same order, at the same alpha and learning rate.
  assert _records(resumed) == _records(reference)


def test_data_iterator_position_round_trips(data_dir, tmp_path):
  """The saved position gives the very batches the saved iterator would have given next."""
  make = lambda: data.batches("digits", resolution=8, batch_size=32, seed=7, data_dir=data_dir,
                              shard_index=0, shard_count=1)
  it = make()
  for _ in range(50):  # Past the end of the first epoch (1,500 images).
    next(it)
  state = {"w": jnp.arange(3.0)}
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  ckpt.save(50 * 32, state, {"resolution": 8, "phase": "stable", "config": {}}, it)
  expected = [next(it) for _ in range(3)]  # The iterator moves on during the async save.
  ckpt.close()

  restored = checkpoint.Checkpointer(str(tmp_path), read_only=True).restore(
      None, jax.eval_shape(lambda: state))
  fresh = make()
  fresh.set_state(checkpoint.decode_iterator_state(restored.data_state, fresh))
  for want in expected:
    np.testing.assert_array_equal(next(fresh), want)
  assert not np.array_equal(next(make()), expected[0])  # Not the same by accident.


# ---------------------------------------------------------------------------------------------
# Saving: asynchronous, kept, waited for


def test_save_does_not_wait_for_the_write_and_close_waits(tmp_path, monkeypatch):
  from orbax.checkpoint._src.path import async_path
  release, rename = threading.Event(), async_path.rename

  async def held(src, dst, *args, **kwargs):
    if os.path.basename(str(dst)) == "5":
      await asyncio.to_thread(release.wait, 60)
    return await rename(src, dst, *args, **kwargs)

  monkeypatch.setattr(async_path, "rename", held)
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  t = time.perf_counter()
  ckpt.save(5, {"w": jnp.ones(4)}, {"resolution": 4, "phase": "stable", "config": {}})
  assert time.perf_counter() - t < 30  # Returned while the commit is held back...
  assert os.listdir(tmp_path) == ["5.orbax-checkpoint-tmp"]
  assert checkpoint.Checkpointer(str(tmp_path), read_only=True).steps() == []  # ...not listed.
  release.set()
  ckpt.close()  # Waits for the pending save.
  assert sorted(os.listdir(tmp_path)) == ["5"]
  assert checkpoint.Checkpointer(str(tmp_path), read_only=True).steps() == [5]


def _steps_of(directory):
  return checkpoint.Checkpointer(str(directory), read_only=True).steps()


def test_keeps_the_latest_n_and_the_best(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2)
  meta = lambda r: {"resolution": r, "phase": "stable", "config": {}}
  # The best is ranked by resolution first: 40 dB at 4x4 is worth less than 20 dB at 8x8.
  for step, res, psnr in [(1, 4, 40.0), (2, 8, 20.0), (3, 8, 10.0), (4, 8, None), (5, 8, None)]:
    ckpt.save(step, {"w": jnp.full(2, step)}, meta(res), psnr=psnr)
  ckpt.close()
  assert _steps_of(tmp_path) == [2, 4, 5]


def test_the_reference_run_kept_the_latest_and_best_and_nothing_half_written(reference):
  assert _steps(reference) == [448, 512]
  assert not [p for p in os.listdir(os.path.join(reference, "checkpoints")) if "tmp" in p]


# ---------------------------------------------------------------------------------------------
# Kill safety


def test_sigkill_during_an_async_save_resumes_from_the_previous_checkpoint(runner, reference):
  workdir = os.path.join(runner.base, "killed")
  proc, marker = runner.hanging(workdir, 320)
  try:
    _wait_for(marker, proc)  # Every file of checkpoint 320 is written, its commit is not.
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "320.orbax-checkpoint-tmp"))
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL, _read(proc.log)[-3000:]
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  # Saved every 64 images and at the 4x4 -> 8x8 boundary (128, the best: it has a held-out
  # PSNR), keeping the latest two; the interrupted save of 320 is not a checkpoint.
  assert _steps(workdir) == [128, 192, 256], _read(proc.log)[-3000:]

  resumed = runner.train(workdir)
  assert f"resuming {workdir} at 256 images (8x8 fade)" in resumed.stdout, resumed.stdout
  assert _steps(workdir) == [448, 512], resumed.stdout + resumed.stderr[-3000:]
  assert not [p for p in os.listdir(os.path.join(workdir, "checkpoints")) if "tmp" in p]
  # Lost only the work since 256, and redid it exactly.
  assert_bit_identical(checkpoint.restore(reference)[0], checkpoint.restore(workdir)[0])
  assert _records(workdir) == _records(reference)


def test_restart_says_what_it_deletes_and_the_run_waits_for_its_last_save(runner, reference,
                                                                          tmp_path):
  workdir = str(tmp_path / "restarted")
  shutil.copytree(reference, workdir)
  proc, marker = runner.hanging(workdir, 64, "--restart", "--stop-after-images", "64",
                                seconds=3)
  assert proc.wait(timeout=300) == 0, _read(proc.log)[-3000:]
  out = _read(proc.log)
  assert os.path.exists(marker)  # The last save was still being written at the stop...
  assert "--restart: deleting the checkpoints [448, 512]" in out
  assert _steps(workdir) == [64]  # ...and the process exited only once it was complete.
  assert max(r["images_seen"] for r in _records(workdir)) == 64


# ---------------------------------------------------------------------------------------------
# Restoring, and every way it can go wrong


def test_restore_needs_no_knowledge_of_the_stage(reference):
  state, meta = checkpoint.restore(reference)
  assert set(state) == {"params", "opt_state", "ema", "step", "rng"}
  assert meta["version"] and meta["images_seen"] == N and meta["metrics"]["psnr"] > 0
  config = TrainConfig.from_dict(meta["config"])
  assert config.model.latent_dim == 8 and config.stage(8).learning_rate == 0.001
  assert state["params"]["encoder"]["block_8"]["conv1"]["kernel"].shape == (3, 3, 8, 8)
  # An older checkpoint, by step or by its own folder.
  older, older_meta = checkpoint.restore(reference, step=448)
  assert older_meta["images_seen"] == 448 and int(older["step"]) == 448 // 32
  by_folder, _ = checkpoint.restore(os.path.join(reference, "checkpoints", "448"))
  assert_bit_identical(older, by_folder)


def test_restore_never_unpickles(reference, monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError("pickle was used")
  for name in ("load", "loads", "Unpickler"):
    monkeypatch.setattr(pickle, name, refuse)
  state, _ = checkpoint.restore(reference)
  assert int(state["step"]) == N // 32


def test_a_contradicting_config_lists_every_differing_field(reference, data_dir, tmp_path,
                                                            capsys):
  workdir = str(tmp_path / "w")
  shutil.copytree(reference, workdir)
  other = str(tmp_path / "other.json")
  with open(other, "w") as f:
    json.dump(dict(CONFIG, model={"channels": {"4": 16, "8": 8}, "latent_dim": 4}), f)
  assert cli.main(["train", "--preset", "digits", "--config", other, "--data-dir", data_dir,
                   "--workdir", workdir, "--quiet"]) == 2
  err = capsys.readouterr().err
  assert "contradicts this run's config" in err and "Traceback" not in err
  assert "model.channels: checkpoint {'4': 8, '8': 8}, this run {'4': 16, '8': 8}" in err
  assert "model.latent_dim: checkpoint 8, this run 4" in err

  # Image channels and dataset too (an RGB dataset stands in, so nothing is prepared).
  rgb = types.SimpleNamespace(dataset_info=lambda name, **kw: types.SimpleNamespace(
      channels=3, native_resolution=64))
  config = TrainConfig(model=ModelConfig(image_channels=3, max_resolution=8,
                                         channels={4: 16, 8: 8}, latent_dim=4),
                       dataset="rgb_photos", default_stage=StageSchedule(batch_size=32))
  with pytest.raises(CheckpointError) as e:
    train.train_and_evaluate(config, workdir, data_module=rgb, progress=False)
  for field in ("model.image_channels", "model.channels", "model.latent_dim", "dataset"):
    assert field in str(e.value)
  assert _steps(workdir) == [448, 512]  # Nothing was touched.


def test_what_changes_the_optimizer_states_shape_is_named_and_old_configs_read_as_shared():
  saved = TrainConfig().to_dict()
  same = checkpoint.config_differences
  assert same(saved, dict(saved, adam_b2=0.99, clip_grad_norm=None)) == []
  assert same(saved, dict(saved, bias_correction="shared")) == [
      "bias_correction: checkpoint 'per_leaf', this run 'shared'"]
  assert "clipping on and off" in same(saved, dict(saved, clip_grad_norm=1.0))[0]
  assert "a boost on and off" in same(saved, dict(saved, fade_lr_boost=3.0))[0]
  assert same(dict(saved, fade_lr_boost=2.0), dict(saved, fade_lr_boost=3.0)) == []
  model = dict(saved["model"], equalized_lr=True)
  assert same(saved, dict(saved, model=model)) == [
      "model.equalized_lr: checkpoint False, this run True"]
  # A checkpoint written before these fields existed was trained with optax's shared count.
  old = {k: v for k, v in saved.items() if k != "bias_correction"}
  old["model"] = {k: v for k, v in saved["model"].items() if k != "equalized_lr"}
  assert same(old, dict(saved, bias_correction="shared")) == []
  assert same(old, saved) == ["bias_correction: checkpoint 'shared', this run 'per_leaf'"]


def _damage(name):
  """Ways a checkpoint (the latest, 512) can be missing, empty or corrupt."""
  def files(c, sub):
    return [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(c, sub)) for f in fs]

  def scramble(path):
    with open(path, "r+b") as f:
      size = len(f.read())
      f.seek(0)
      f.write(np.random.default_rng(0).bytes(size))

  def truncate(path):
    with open(path, "r+b") as f:
      f.truncate(7)

  def write(path, text):
    with open(path, "w") as f:
      f.write(text)

  def edit(path, old, new):
    with open(path) as f:
      text = f.read()
    assert old in text
    write(path, text.replace(old, new))

  return {
      "array files scrambled": lambda c: [scramble(p) for p in files(c, "state/ocdbt.process_0/d")],
      "array files truncated": lambda c: [truncate(p) for p in files(c, "state/ocdbt.process_0/d")],
      "array files deleted": lambda c: [os.remove(p) for p in files(c, "state/ocdbt.process_0")],
      "array index scrambled": lambda c: scramble(os.path.join(c, "state", "manifest.ocdbt")),
      "state item deleted": lambda c: shutil.rmtree(os.path.join(c, "state")),
      "meta item deleted": lambda c: shutil.rmtree(os.path.join(c, "meta")),
      "meta not JSON": lambda c: write(os.path.join(c, "meta", "metadata"), "\x00{garbage"),
      "meta of another program": lambda c: write(os.path.join(c, "meta", "metadata"),
                                                 '{"epoch": 3}'),
      "meta contradicts arrays": lambda c: edit(os.path.join(c, "meta", "metadata"),
                                                '"latent_dim": 8', '"latent_dim": 6'),
      "data position lost": lambda c: shutil.rmtree(os.path.join(c, "data")),
      "data position not JSON": lambda c: write(
          os.path.join(c, "data", "process_0-of-1.json"), "{{{"),
      "folder emptied": lambda c: [shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
                                   for p in [os.path.join(c, x) for x in os.listdir(c)]],
  }[name]


DAMAGE = {
    "array files scrambled": "could not be restored",
    "array files truncated": "could not be restored",
    "array files deleted": "could not be restored",
    "array index scrambled": "could not be restored",
    "state item deleted": "could not be restored",
    "meta item deleted": "no readable metadata",
    "meta not JSON": "no readable metadata",
    "meta of another program": "is not a progae_jax checkpoint",
    "meta contradicts arrays": "could not be restored",
    "data position lost": "lost its data iterator's position",
    "data position not JSON": "data iterator's position is not JSON",
    "folder emptied": "no readable metadata",
}
RESUME_ONLY = {"data position lost", "data position not JSON"}  # What only a resume reads.


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_checkpoint_gives_a_clear_error(damage, runner, reference, tmp_path, capsys):
  workdir = str(tmp_path / "w")
  shutil.copytree(reference, workdir, ignore=shutil.ignore_patterns("448"))
  _damage(damage)(os.path.join(workdir, "checkpoints", "512"))
  if damage not in RESUME_ONLY:  # `restore` and `inspect` need no data position.
    with pytest.raises(CheckpointError, match=DAMAGE[damage]) as e:
      checkpoint.restore(workdir)
    assert "512" in str(e.value)
    # Raised from None: no chained traceback from inside Orbax.
    assert e.value.__cause__ is None and (e.value.__context__ is None
                                          or e.value.__suppress_context__)
    assert cli.main(["inspect", workdir]) == 2
    err = capsys.readouterr().err
    assert "progae inspect: error:" in err and DAMAGE[damage] in err and "Traceback" not in err
  # Resuming from it (`progae train --workdir`) fails as clearly, before training anything.
  assert cli.main(runner.argv(workdir)) == 2
  err = capsys.readouterr().err
  expected = ("contradicts this run's config" if damage == "meta contradicts arrays"
              else DAMAGE[damage])
  assert "progae train: error:" in err and expected in err and "Traceback" not in err


@pytest.mark.parametrize("damage, slow_reads", [("array files deleted", None),
                                                ("array files deleted", 0.005),
                                                ("array files deleted", 0.3),
                                                ("meta contradicts arrays", None)])
def test_a_damaged_checkpoint_prints_no_traceback_in_a_real_process(damage, slow_reads, runner,
                                                                   reference, tmp_path):
  """Orbax's other reads fail after the first one, in threads: none of it may reach the user.

  With `slow_reads`, every read but the first is still in flight when the first one fails
  (5 ms: ending around the moment the restore gives up; 0.3 s: long after), as on a busy
  machine; the process must have awaited every one of them before it exits.
  """
  workdir = str(tmp_path / "w")
  shutil.copytree(reference, workdir, ignore=shutil.ignore_patterns("448"))
  _damage(damage)(os.path.join(workdir, "checkpoints", "512"))
  program = ["-m", "progae_jax"] if slow_reads is None else [runner.slow_reads_driver]
  env = dict(runner.env, PROGAE_SLOW_READS=str(slow_reads))
  proc = subprocess.run([sys.executable, *program, "inspect", workdir],
                        capture_output=True, text=True, timeout=120, env=env)
  assert proc.returncode == 2
  assert proc.stderr.startswith("progae inspect: error: checkpoint 512"), proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr  # Nothing after the error.


def _count_reads(monkeypatch, delay: float):
  """Orbax's array reads, every one but the first held in flight `delay` seconds (in a
  thread): (started, ended) lists that grow as they start and end."""
  from orbax.checkpoint._src.serialization import serialization
  deserialize, started, ended = serialization.async_deserialize, [], []

  async def slow_after_first(*args, **kwargs):
    started.append(None)
    try:
      if len(started) > 1:  # Still reading, in a thread, when the first read fails.
        await asyncio.to_thread(time.sleep, delay)
      return await deserialize(*args, **kwargs)
    finally:
      ended.append(None)

  monkeypatch.setattr(serialization, "async_deserialize", slow_after_first)
  return started, ended


def test_a_damaged_checkpoint_is_refused_before_orbax_reads_it(reference, tmp_path,
                                                               monkeypatch):
  """The library's restore checks the files first: nothing of Orbax's starts, so nothing is
  left running (and the process's event-loop policy is never needed)."""
  workdir = str(tmp_path / "w")
  shutil.copytree(reference, workdir, ignore=shutil.ignore_patterns("448"))
  _damage("array files deleted")(os.path.join(workdir, "checkpoints", "512"))
  started, _ = _count_reads(monkeypatch, 0.2)
  with pytest.raises(CheckpointError, match="could not be restored .*has no data"):
    checkpoint.restore(workdir)
  assert started == []


def test_in_progae_a_failed_read_leaves_no_read_running(reference, tmp_path, monkeypatch,
                                                        capsys):
  """What the checks cannot see (a chunk that does not decode) fails inside Orbax: under
  `cli.main` the error comes only once every read Orbax started has ended."""
  workdir = str(tmp_path / "w")
  shutil.copytree(reference, workdir, ignore=shutil.ignore_patterns("448"))
  _damage("array files deleted")(os.path.join(workdir, "checkpoints", "512"))
  monkeypatch.setattr(checkpoint, "_check_array_files", lambda *args: None)
  started, ended = _count_reads(monkeypatch, 0.2)
  assert cli.main(["inspect", workdir]) == 2
  assert "could not be restored" in capsys.readouterr().err
  assert len(started) > 1 and len(ended) == len(started)


SIDE_EFFECTS_DRIVER = '''
import asyncio, json, logging, sys
import absl.logging, jax, orbax.checkpoint  # Their own import-time set-up is theirs.
changes, policy = [], asyncio.get_event_loop_policy()
def recording(name, real):
  return lambda *args: (changes.append(f"{name}{args[-1:]}"), real(*args))[1]
asyncio.set_event_loop_policy = recording("set_event_loop_policy", asyncio.set_event_loop_policy)
for name in ("addFilter", "removeFilter", "addHandler", "removeHandler", "setLevel"):
  setattr(logging.Logger, name, recording(name, getattr(logging.Logger, name)))
import progae_jax
from progae_jax import checkpoint
state, meta = checkpoint.restore(sys.argv[1])
filters = {n: len(l.filters) for n, l in logging.Logger.manager.loggerDict.items()
           if isinstance(l, logging.Logger) and l.filters}
print(json.dumps({"changes": changes, "filters": filters, "images": meta["images_seen"],
                  "same_policy": asyncio.get_event_loop_policy() is policy}))
'''


def test_importing_and_restoring_leave_logging_and_asyncio_as_they_were(runner, reference,
                                                                       tmp_path):
  """A library leaves the process as it found it: importing progae_jax and restoring a
  checkpoint add no logging filter or handler, set no logger's level and keep the
  event-loop policy (a fresh process, so the import is the first)."""
  driver = runner.driver_for(tmp_path, SIDE_EFFECTS_DRIVER)
  proc = subprocess.run([sys.executable, driver, reference], capture_output=True, text=True,
                        timeout=120, env=runner.env)
  assert proc.returncode == 0, proc.stderr
  assert proc.stderr == "", proc.stderr  # Nor a warning on a read.
  got = json.loads(proc.stdout.strip().splitlines()[-1])
  assert got == {"changes": [], "filters": {}, "images": N, "same_policy": True}


@pytest.mark.parametrize("where, step, message", [
    ("missing", None, "does not exist"),
    ("a file", None, "is a file"),
    ("empty", None, "no checkpoint in"),
    ("only an interrupted save", None, r"only interrupted saves \(512\.orbax-checkpoint-tmp\)"),
    ("the interrupted save itself", None, "is an interrupted save"),
    ("reference", 7, "no checkpoint 7 in .*; there are \\[448, 512\\]"),
])
def test_missing_and_empty_checkpoints_give_clear_errors(where, step, message, reference,
                                                         tmp_path, capsys):
  path = {"missing": str(tmp_path / "nowhere"), "a file": os.path.join(reference, "curves.png"),
          "empty": str(tmp_path), "reference": reference}.get(where)
  if "interrupted" in where:  # What a save killed before its commit leaves.
    os.makedirs(tmp_path / "checkpoints")
    shutil.copytree(os.path.join(reference, "checkpoints", "512"),
                    tmp_path / "checkpoints" / "512.orbax-checkpoint-tmp")
    path = str(tmp_path) if where.startswith("only") else str(
        tmp_path / "checkpoints" / "512.orbax-checkpoint-tmp")
  with pytest.raises(CheckpointError, match=message):
    checkpoint.restore(path, step)
  argv = ["inspect", path] + ([] if step is None else ["--step", str(step)])
  assert cli.main(argv) == 2
  assert "Traceback" not in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Inspecting


def test_inspect_prints_stage_metrics_and_parameter_table(reference, stopped_and_resumed,
                                                          capsys):
  assert cli.main(["inspect", reference]) == 0
  out = capsys.readouterr().out
  assert "checkpoint: 512 images seen, stage 8x8 stable (alpha 1.000), step 16" in out
  assert "dataset digits" in out and "held-out evaluations:" in out
  assert out.count(" dB  SSIM ") == 4  # Evaluations at 128, 256 (mid-fade), 384 and 512.
  assert "encoder/block_8/conv1/kernel" in out and "(3, 3, 8, 8)" in out
  state, _ = checkpoint.restore(reference)
  assert f"total" in out and f"{count_params(state['params']):,}" in out
  assert "from_image_4" not in out  # The faded-out adapter is gone at 8x8 stable.

  stopped, _ = stopped_and_resumed  # One checkpoint's folder, mid-fade.
  assert cli.main(["inspect", os.path.join(stopped, "checkpoints", "256")]) == 0
  out = capsys.readouterr().out
  assert "256 images seen, stage 8x8 fade (alpha 0.500)" in out
  assert "encoder/from_image_4/conv/kernel" in out  # Both adapters, while fading.


def test_reconstruct_writes_a_grid_of_originals_and_reconstructions(reference,
                                                                    stopped_and_resumed,
                                                                    data_dir, tmp_path, capsys):
  import matplotlib.image
  for path, name in ((reference, "end.png"),
                     (os.path.join(stopped_and_resumed[0], "checkpoints", "256"), "fade.png")):
    out = str(tmp_path / name)
    assert cli.main(["reconstruct", path, "--dataset", "digits", "--data-dir", data_dir,
                     "--out", out, "--count", "8"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    image = matplotlib.image.imread(out)
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 100
  folder = tmp_path / "pictures"  # --out an existing folder: a file in it, named by its step.
  folder.mkdir()
  assert cli.main(["reconstruct", reference, "--data-dir", data_dir, "--out", str(folder)]) == 0
  written = str(folder / "reconstructions_512.png")
  assert f"wrote {written}" in capsys.readouterr().out and os.listdir(folder) == [
      "reconstructions_512.png"]


# ---------------------------------------------------------------------------------------------
# One run per work directory, stopping on signals, failures in one line


def _one_line_error(proc, command="train"):
  """A refusal: status 2, one line on stderr, no traceback."""
  assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"progae {command}: error:"), proc.stderr
  return lines[0]


def _train_here(runner, workdir, *extra, capsys):
  """`progae train` called in this process, for what ends before any array is restored or
  saved (the flags, the work directory, the checkpoints' list and metadata): the user sees the
  same as from a process of its own. What ends later (a NaN, a full disk, damaged arrays) runs
  in real processes, where noise from Orbax's threads at exit would show."""
  try:
    code = cli.main(runner.argv(workdir, *extra))
  except SystemExit as e:  # argparse's refusals exit, as they do in a process of their own.
    code = e.code
  out, err = capsys.readouterr()
  return types.SimpleNamespace(returncode=code, stdout=out, stderr=err)


def _images_logged(workdir):
  try:
    return max(r["images_seen"] for r in _records(workdir))
  except (OSError, ValueError):
    return 0


def test_a_second_run_in_a_workdir_is_refused_and_the_first_finishes_unmixed(runner,
                                                                           reference, capsys):
  workdir = os.path.join(runner.base, "locked")
  first, marker = runner.hanging(workdir, 128, "--stop-after-images", "192", seconds=300)
  try:
    _wait_for(marker, first)  # The first run is writing checkpoint 128 right now.
    line = _one_line_error(_train_here(runner, workdir, "--seed", "7", capsys=capsys))
    assert f"{workdir} is in use by process {first.pid}" in line
    with open(marker + ".release", "w"):
      pass
    assert first.wait(timeout=300) == 0, _read(first.log)[-3000:]
  finally:
    if first.poll() is None:
      first.kill()
  # The refused run touched nothing: not the save in flight, not the metrics.
  assert _steps(workdir) == [128, 192]
  assert _records(workdir) == [r for r in _records(reference) if r["images_seen"] <= 192]


def test_a_signal_mid_fade_saves_where_it_stopped_and_the_resume_is_bit_identical(
    runner, reference):
  """SIGTERM lands at a random moment of the fade; a torn metrics line (a kill mid-write) is
  left for the resume to drop. (SIGINT takes the same path: the next test sees its line in a
  real process, and `test_the_first_signal_...` its status.)"""
  sig = signal.SIGTERM
  workdir = os.path.join(runner.base, f"signalled_{sig.name}")
  moment = int(np.random.default_rng().integers(130, 250))
  proc = runner.start(workdir)
  try:
    deadline = time.monotonic() + 240
    while _images_logged(workdir) < moment:
      assert proc.poll() is None and time.monotonic() < deadline, _read(proc.err)[-3000:]
      time.sleep(0.02)
    proc.send_signal(sig)
    assert proc.wait(timeout=120) == 128 + sig, _read(proc.err)[-3000:]
  finally:
    if proc.poll() is None:
      proc.kill()
  out, err = _read(proc.out), _read(proc.err)
  stopped = int(out.split(f"stopped by {sig.name} at ")[1].split(" images")[0])
  assert "Traceback" not in err and 128 < stopped < 384, (moment, out, err)
  assert max(_steps(workdir)) == stopped  # A checkpoint at the step it stopped at.
  with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
    f.write('{"kind": "train", "step": 99, "ima')
  resumed = runner.train(workdir)
  assert f"at {stopped} images (8x8 fade)" in resumed.stdout
  assert "dropping its last line" in resumed.stderr
  assert_bit_identical(checkpoint.restore(reference)[0], checkpoint.restore(workdir)[0])
  assert _records(workdir) == _records(reference)


def test_a_second_ctrl_c_stops_at_once(runner, tmp_path):
  workdir = str(tmp_path / "w")
  proc = runner.start(workdir)
  try:
    deadline = time.monotonic() + 240
    while _images_logged(workdir) < 32:
      assert proc.poll() is None and time.monotonic() < deadline, _read(proc.err)[-3000:]
      time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    while "SIGINT: saving a checkpoint" not in _read(proc.err):
      assert proc.poll() is None, _read(proc.err)[-3000:]
      time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 3  # Not 130: nothing was saved.
  finally:
    if proc.poll() is None:
      proc.kill()
  last = _read(proc.err).strip().splitlines()[-1]
  steps = _steps(workdir)
  resumes_from = (f"checkpoint {steps[-1]} in {workdir}/checkpoints" if steps
                  else "nothing: there is no checkpoint")
  assert last.startswith("progae train: SIGINT again: stopped at once, nothing saved"), last
  assert f"the same command resumes from {resumes_from}" in last, last


def test_the_first_signal_writes_its_line_in_one_write(monkeypatch):
  """A second signal lands after the first's line is seen: were that line's newline written
  apart, the second's line would run on to it (seen once in CI)."""
  from progae_jax import preemption
  writes = []
  monkeypatch.setattr(sys, "stderr", types.SimpleNamespace(write=writes.append,
                                                           flush=lambda: None))
  signals = preemption.StopSignals()
  signals._handle(signal.SIGINT, None)
  assert len(writes) == 1 and writes[0].endswith(")\n"), writes
  # Ctrl-C, like SIGTERM, stops after the step with a checkpoint, and says which it was.
  assert signals.requested(0) == "SIGINT" and preemption.EXIT_STATUS["SIGINT"] == 130


def test_restart_with_a_bad_flag_changes_nothing(runner, reference, tmp_path, capsys):
  workdir = str(tmp_path / "w")
  shutil.copytree(reference, workdir)
  before = _read(os.path.join(workdir, "metrics.jsonl"))
  proc = _train_here(runner, workdir, "--restart", "--batch-size", "2048", capsys=capsys)
  assert "batch_size 2048" in _one_line_error(proc) and "deleting" not in proc.stdout
  assert _steps(workdir) == [448, 512]
  assert _read(os.path.join(workdir, "metrics.jsonl")) == before


def test_a_damaged_latest_checkpoint_names_the_intact_ones_and_resume_from_one_works(
    runner, reference, tmp_path):
  workdir = str(tmp_path / "w")
  shutil.copytree(reference, workdir)
  _damage("array files scrambled")(os.path.join(workdir, "checkpoints", "512"))
  line = _one_line_error(runner.train(workdir, expect=2))
  assert "checkpoint 512" in line and "the earlier checkpoints [448] are intact" in line
  assert "--resume-from-step 448" in line
  resumed = runner.train(workdir, "--resume-from-step", "448")
  assert "at 448 images (8x8 stable); the later checkpoints [512] are replaced" in resumed.stdout
  assert_bit_identical(checkpoint.restore(reference)[0], checkpoint.restore(workdir)[0])
  assert _records(workdir) == _records(reference)


def _alter_one_array(checkpoint_dir, name):
  """Rewrites one saved array through tensorstore (a valid file, other values): what bytes
  altered inside a compressed chunk that still decompresses look like to a reader."""
  import tensorstore as ts
  store = ts.open({"driver": "zarr", "kvstore": {
      "driver": "ocdbt", "base": "file://" + os.path.join(checkpoint_dir, "state") + "/",
      "path": name}}).result()
  values = store.read().result()
  values.flat[5] = 3e38
  store.write(values).result()


def test_an_altered_array_is_refused_naming_the_leaf(reference, tmp_path, capsys):
  workdir = str(tmp_path / "w")
  shutil.copytree(reference, workdir, ignore=shutil.ignore_patterns("448"))
  _alter_one_array(os.path.join(workdir, "checkpoints", "512"),
                   "opt_state.inner_state.0.mu.encoder.to_latent.kernel")
  with pytest.raises(CheckpointError, match=r"checkpoint 512 .*: array "
                     r"opt_state/inner_state/0/mu/encoder/to_latent/kernel does not match "
                     r"the checksum saved with it"):
    checkpoint.restore(workdir)
  assert cli.main(["inspect", workdir]) == 2
  assert "does not match the checksum" in capsys.readouterr().err


def test_flipped_bytes_in_an_array_file_never_restore_silently(reference, tmp_path):
  """100 bytes flipped at places through the largest array file, one copy each (a quarter,
  half and three quarters in, then others until a flip decompresses): each copy is refused
  (by tensorstore when the chunk no longer decompresses, by the checksums when it does).
  Which places decompress depends on how Orbax laid out that run's file, so the places go on
  until one does (the first three alone were not always enough)."""
  files = os.path.join(reference, "checkpoints", "512", "state", "ocdbt.process_0", "d")
  largest = max(os.listdir(files), key=lambda n: os.path.getsize(os.path.join(files, n)))
  refused_by = []
  for where in [k / 20 for k in range(5, 20, 5)] + [k / 20 for k in range(1, 20) if k % 5]:
    if len(refused_by) >= 3 and "checksum" in refused_by:  # The first three always run.
      break
    workdir = str(tmp_path / f"w{where}")
    shutil.copytree(reference, workdir, ignore=shutil.ignore_patterns("448"))
    path = os.path.join(workdir, "checkpoints", "512", "state", "ocdbt.process_0", "d", largest)
    with open(path, "r+b") as f:
      data = bytearray(f.read())
      start = int(len(data) * where)
      data[start:start + 100] = bytes(b ^ 0xFF for b in data[start:start + 100])
      f.seek(0)
      f.write(data)
    with pytest.raises(CheckpointError) as e:
      checkpoint.restore(workdir)
    refused_by.append("checksum" if "checksum" in str(e.value) else "reader")
  assert "checksum" in refused_by, refused_by  # At least one flip decompressed fine.


def test_resuming_a_finished_run_says_it_is_finished(runner, reference, tmp_path, capsys):
  workdir = str(tmp_path / "w")
  shutil.copytree(reference, workdir)
  proc = _train_here(runner, workdir, capsys=capsys)
  assert proc.returncode == 0
  assert "is already finished: 512 images" in proc.stdout and "--restart" in proc.stdout
  assert _steps(workdir) == [448, 512]


DISK_FULL_DRIVER = """
import errno, os, sys
from orbax.checkpoint._src.path import async_path
_rename = async_path.rename

async def rename(src, dst, *args, **kwargs):
  if os.path.basename(str(dst)) == os.environ["PROGAE_FULL_AT"] and "tmp" in str(src):
    raise OSError(errno.ENOSPC, "No space left on device", str(src))
  return await _rename(src, dst, *args, **kwargs)

async_path.rename = rename
from progae_jax import cli
sys.exit(cli.main(sys.argv[1:]))
"""


def test_a_full_disk_during_a_save_is_one_line(runner, tmp_path):
  """As root, a real full disk (a 300 KiB tmpfs): the first failed write of a save leaves
  the others in flight, and none of them may print anything (without TensorBoard's events,
  a save is what fills it). Else the save's commit fails."""
  workdir = str(tmp_path / "w")
  if os.geteuid() == 0:
    os.makedirs(workdir)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", workdir], check=True)
    try:
      proc = runner.train(workdir, "--no-tensorboard", expect=2)
      steps = _steps(workdir)
    finally:
      subprocess.run(["umount", workdir], check=True)
    line = _one_line_error(proc)
    assert "error: the disk is full: checkpoint" in line and "could not be written" in line
    assert f"the earlier checkpoints {steps} are intact" in line
    return
  proc = runner.train(workdir, expect=2, program=[runner.driver_for(tmp_path, DISK_FULL_DRIVER)],
                      PROGAE_FULL_AT="128")
  line = _one_line_error(proc)
  assert "the disk is full: checkpoint 128 could not be written" in line
  assert "the earlier checkpoints [64] are intact" in line
  assert _steps(workdir) == [64]


NAN_DRIVER = """
import sys
import numpy as np
from progae_jax import cli, data

_batches = data.batches

class Poisoned:
  def __init__(self, inner):
    self.inner = inner
  def __next__(self):
    return next(self.inner) * np.float32("nan")
  def __getattr__(self, name):
    return getattr(self.inner, name)

data.batches = lambda *a, **k: Poisoned(_batches(*a, **k))
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("case", ["workdir is a file", "workdir empty", "workdir read-only",
                                  "non-finite loss", "resume from a missing step"])
def test_failures_are_one_line(case, runner, reference, tmp_path, capsys):
  extra, workdir, program = [], str(tmp_path / "w"), None
  if case == "workdir is a file":
    workdir = os.path.join(reference, "curves.png")
  elif case == "workdir empty":
    workdir = ""
  elif case == "workdir read-only":
    os.makedirs(workdir)
    os.chmod(workdir, 0o555)
    if os.geteuid() == 0:  # Root writes through permissions: a read-only mount it is.
      subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", workdir], check=True)
  elif case == "non-finite loss":  # Every image NaN from the first batch on.
    program = [runner.driver_for(tmp_path, NAN_DRIVER)]
  elif case == "resume from a missing step":
    extra = ["--resume-from-step", "64"]
  try:
    proc = (runner.train(workdir, *extra, expect=2, program=program) if program
            else _train_here(runner, workdir, *extra, capsys=capsys))
    line = _one_line_error(proc)
  finally:
    if case == "workdir read-only" and os.geteuid() == 0:
      subprocess.run(["umount", workdir], check=True)
  expected = {"workdir is a file": "is a file, not a folder",
              "workdir empty": "--workdir is empty",
              "workdir read-only": "cannot write to the work directory",
              "non-finite loss": "non-finite loss",
              "resume from a missing step": "--resume-from-step 64: there is no checkpoint"}
  assert expected[case] in line
  if case == "resume from a missing step":  # Failed before its first step: nothing left.
    assert not os.path.exists(workdir)


def test_a_negative_seed_is_refused_before_the_workdir_exists(runner, tmp_path, capsys):
  workdir = str(tmp_path / "w")
  proc = _train_here(runner, workdir, "--seed", "-5", capsys=capsys)
  assert proc.returncode == 2
  assert "--seed: '-5' must be at least 0" in proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr  # One line, no usage block.
  assert not os.path.exists(workdir)


def test_inspect_shows_a_checkpoint_whatever_its_metrics_file_holds(reference, tmp_path,
                                                                   capsys):
  workdir = str(tmp_path / "w")
  shutil.copytree(reference, workdir)
  with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
    f.write("not json\n" + json.dumps({"kind": "eval"}) + "\n")
  assert cli.main(["inspect", workdir]) == 0
  captured = capsys.readouterr()
  assert "checkpoint: 512 images seen" in captured.out and "parameters:" in captured.out
  assert "metrics not shown" in captured.err and "metrics.jsonl:" in captured.err


def test_a_checkpoint_removed_by_rotation_while_read_is_not_damaged(reference, tmp_path,
                                                                    monkeypatch, capsys):
  """`inspect` during a run: the run's rotation deletes the checkpoint being read after its
  metadata was read. The newest checkpoint still there is read instead; a --step that was
  removed says so, never "damaged"."""
  workdir = str(tmp_path / "w")
  shutil.copytree(reference, workdir)
  read_meta = checkpoint.Checkpointer.read_meta

  def rotated_meanwhile(self, step=None):
    meta = read_meta(self, step)
    if step == 512:  # The run's next save rotates it out right now.
      shutil.rmtree(os.path.join(self.directory, "512"))
    return meta

  monkeypatch.setattr(checkpoint.Checkpointer, "read_meta", rotated_meanwhile)
  assert cli.main(["inspect", workdir]) == 0
  assert capsys.readouterr().out.startswith("checkpoint: 448 images seen")
  shutil.copytree(os.path.join(reference, "checkpoints", "512"),
                  os.path.join(workdir, "checkpoints", "512"))
  assert cli.main(["inspect", workdir, "--step", "512"]) == 2
  err = capsys.readouterr().err
  assert "checkpoint 512 in" in err and "was removed while it was read" in err, err
  assert "there are now [448]" in err and "damaged" not in err, err
