"""Scale-out: data parallel over devices, two processes over jax.distributed, bf16.

What is proved here, on CPU:

* 4 CPU devices (`--xla_force_host_platform_device_count=4`, in a subprocess, since this
  process's JAX already has 1 device) train through a growth to the same parameters as
  1 device; growth re-shards on the devices with host transfers forbidden; a batch that does
  not split over the devices is an error naming both numbers; the FSDP switch
  (`parallel.state_shardings(..., shard_min_size)`) trains to the same numbers.
* Two processes over loopback (`jax.distributed`, coordinator 127.0.0.1), 2 CPU devices each,
  started through the real CLI (`progae train --coordinator --num-processes --process-id`,
  then the JAX_* environment variables on resume) train through a growth, stop mid-fade with
  a checkpoint, resume from it, and end where the single-process run ends. Their global batch
  is the single-process batch; only process 0 writes metrics and pictures and prints.
* bfloat16 compute trains and stays close to float32 over the first steps.
* The data layer's shards concatenate to the single-process batches (no JAX needed).

This file is also the subprocesses' program: `python tests/test_parallel.py ROLE ...`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from conftest import tiny_run

HERE = os.path.abspath(__file__)
REPO = os.path.dirname(os.path.dirname(HERE))

# The run every topology trains: digits, 4x4 (3 steps) -> 8x8 fade (3 steps) -> 8x8 stable (2).
STOP_AT = 80  # Mid-fade: 48 images at 4x4, then 2 of the 3 fade steps.
CONFIG_JSON = tiny_run(
    stages={"4": {"fade_images": 0, "stable_images": 48, "batch_size": 16,
                  "learning_rate": 0.003},
            "8": {"fade_images": 48, "stable_images": 32, "batch_size": 16,
                  "learning_rate": 0.002}},
    eval_images=16, log_every_steps=2)
TOTAL_IMAGES = 128


def train_argv(config_path: str, data_dir: str, workdir: str, *extra: str) -> list[str]:
  return ["train", "--preset", "digits", "--config", config_path, "--data-dir", data_dir,
          "--workdir", workdir, *extra]


def config_of(config_path: str, data_dir: str):
  """The TrainConfig that `progae train` with `train_argv` trains (nothing is run)."""
  from progae_jax import cli
  return cli.train_config(train_argv(config_path, data_dir, "unused")[1:])


def flat_params(tree) -> dict:
  import jax
  import numpy as np
  return {jax.tree_util.keystr(p): np.asarray(jax.device_get(x))
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


# ---------------------------------------------------------------------------------------------
# Subprocess roles (run as `python tests/test_parallel.py ROLE ...`)


def role_four_devices(config_path: str, data_dir: str, out: str) -> None:
  """One process, 4 CPU devices: train, grow on device, batch-size error."""
  import dataclasses

  import jax
  import numpy as np

  from progae_jax import optim, parallel, train, train_state
  from progae_jax.schedule import StageSchedule

  assert jax.device_count() == 4, jax.devices()
  report = {}
  config = config_of(config_path, data_dir)
  mesh = parallel.make_mesh()
  report["mesh"] = parallel.mesh_summary(mesh)
  report["mesh_of_2"] = parallel.make_mesh(2).devices.size
  try:
    parallel.make_mesh(5)
  except ValueError as e:
    report["too_many_devices"] = str(e)

  # A global batch that does not split over the devices: refused before any work.
  bad = dataclasses.replace(config, stages={}, default_stage=StageSchedule(
      fade_images=12, stable_images=12, batch_size=6))
  try:
    train.train_and_evaluate(bad, os.path.join(out, "bad"), mesh=mesh, progress=False)
  except ValueError as e:
    report["indivisible_error"] = str(e)

  # The whole run on 4 devices.
  result = train.train_and_evaluate(config, os.path.join(out, "w4"), mesh=mesh, progress=False)
  leaves = jax.tree_util.tree_leaves(result.state)
  report["state_replicated_on_4"] = all(
      x.sharding.is_equivalent_to(parallel.replicated(mesh), x.ndim)
      and len(x.sharding.device_set) == 4 for x in leaves)
  report["images_seen"] = result.images_seen
  np.savez(os.path.join(out, "params4.npz"), **flat_params(result.state["params"]))

  # Growth makes the new tree on the devices, already placed: no host transfer at all.
  optimizer = optim.make_optimizer(1e-3)
  state = train_state.init_state(config, optimizer, mesh)
  jax.block_until_ready(state)
  with jax.transfer_guard("disallow"):
    grown = train_state.advance_state(state, config, optimizer, mesh)
    stable = train_state.advance_state(grown, config, optimizer, mesh)
    jax.block_until_ready(stable)
  report["grown_leaves"] = [len(jax.tree_util.tree_leaves(t["params"]))
                            for t in (grown, stable)]
  report["grown_replicated_on_4"] = all(
      x.sharding.is_equivalent_to(parallel.replicated(mesh), x.ndim)
      and len(x.sharding.device_set) == 4
      for t in (grown, stable) for x in jax.tree_util.tree_leaves(t))

  report["eval_padding"] = _eval_on_4_and_on_1(result.state, config, data_dir, mesh)

  with open(os.path.join(out, "four_devices.json"), "w") as f:
    json.dump(report, f)


def _eval_on_4_and_on_1(state, config, data_dir: str, mesh) -> dict:
  """Held-out sets of 1 and 5 images (neither splits over 4 devices), evaluated on the
  4 devices and on 1: {count: (PSNR on 4, PSNR on 1, reconstructions on 4) or the error}."""
  import jax

  from progae_jax import data, parallel, steps, train

  params = jax.device_get(state["ema"] if "ema" in state else state["params"])
  images = data.eval_images("digits", resolution=8, count=5, data_dir=data_dir)
  one = parallel.make_mesh(1)

  def evaluate(count, on):
    batch = train._eval_batch(images[:count], on)
    return train._held_out_metrics(steps.make_eval_step(config, on), params, batch, count, 1.0)

  out = {}
  for count in (1, 5):
    try:
      (on4, recon), (on1, _) = evaluate(count, mesh), evaluate(count, one)
      out[count] = (on4["psnr"], on1["psnr"], len(recon))
    except Exception as e:  # noqa: BLE001 - reported to the test, which names it.
      out[count] = f"{type(e).__name__}: {e}"
  return out


def role_process(config_path: str, data_dir: str, workdir: str, out: str, process_id: str,
                 port: str, launch: str) -> None:
  """One of two processes. `first`: CLI flags, stop mid-fade. `resume`: JAX_* variables."""
  import numpy as np

  from progae_jax import cli

  extra = []
  if launch == "first":
    extra = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id",
             process_id, "--stop-after-images", str(STOP_AT), "--quiet"]
  rc = cli.main(train_argv(config_path, data_dir, workdir, *extra))
  if rc != 0:
    raise SystemExit(f"progae train returned {rc}")

  import jax
  from jax.experimental import multihost_utils

  from progae_jax import data, parallel
  report = {"process_count": jax.process_count(), "device_count": jax.device_count(),
            "local_device_count": jax.local_device_count()}
  if launch == "first":
    # This process's rows, glued into the global batch, gathered: the single-process batch?
    mesh = parallel.make_mesh()
    report["mesh_processes"] = [d.process_index for d in mesh.devices.flat]
    mine = data.batches("digits", resolution=8, batch_size=16, seed=5, data_dir=data_dir)
    whole = data.batches("digits", resolution=8, batch_size=16, seed=5, data_dir=data_dir,
                         shard_index=0, shard_count=1)
    diffs = []
    for _ in range(3):
      local = next(mine)
      report["local_rows"] = local.shape[0]
      gathered = multihost_utils.process_allgather(parallel.global_batch(local, mesh),
                                                   tiled=True)
      diffs.append(float(np.max(np.abs(np.asarray(gathered) - next(whole)))))
    report["global_batch_max_diff"] = max(diffs)
  with open(os.path.join(out, f"process{process_id}_{launch}.json"), "w") as f:
    json.dump(report, f)


# ---------------------------------------------------------------------------------------------
# Subprocess handling: time limits, SIGKILL on failure (JAX's preemption notifier catches
# SIGTERM), nothing left behind.


class Launcher:
  def __init__(self, log_dir: str):
    self.log_dir, self.procs = log_dir, []

  def start(self, name: str, args: list[str], env: dict) -> subprocess.Popen:
    log = open(os.path.join(self.log_dir, f"{name}.log"), "w")
    p = subprocess.Popen([sys.executable, HERE, *args], cwd=REPO, env=env, stdout=log,
                         stderr=subprocess.STDOUT, start_new_session=True)
    p.name, p.log = name, log
    self.procs.append(p)
    return p

  def log(self, name: str) -> str:
    with open(os.path.join(self.log_dir, f"{name}.log")) as f:
      return f.read()

  def wait(self, procs, deadline: float) -> None:
    """Waits for `procs`; on a failure or past `deadline` kills everything and raises."""
    pending = list(procs)
    while pending:
      for p in list(pending):
        if p.poll() is not None:
          pending.remove(p)
          if p.returncode != 0:
            self.kill_all()
            raise AssertionError(f"{p.name} exited with {p.returncode}:\n{self.tail(p.name)}")
      if pending and time.monotonic() > deadline:
        self.kill_all()
        raise AssertionError("timed out waiting for " + ", ".join(p.name for p in pending) +
                             "".join(f"\n--- {p.name}:\n{self.tail(p.name)}" for p in pending))
      time.sleep(0.2)

  def tail(self, name: str, n: int = 4000) -> str:
    return self.log(name)[-n:]

  def kill_all(self) -> None:
    for p in self.procs:
      if p.poll() is None:
        try:
          os.killpg(p.pid, signal.SIGKILL)  # Its own session: the process and its children.
        except ProcessLookupError:
          pass
        p.wait(timeout=30)
      p.log.close()


def _env(num_devices: int, cache_dir: str, **extra) -> dict:
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
                              "SLURM_", "OMPI_"))}
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count="
             f"{num_devices}", PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="3",
             # Both launches of the two processes compile the same programs: compile once.
             JAX_COMPILATION_CACHE_DIR=cache_dir, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  env.update(extra)
  return env


# ---------------------------------------------------------------------------------------------
# Tests

if __name__ != "__main__":
  import jax
  import jax.numpy as jnp
  import numpy as np
  import pytest

  from progae_jax import checkpoint, data, optim, parallel, steps, train, train_state

  @pytest.fixture(scope="module")
  def runs(tmp_path_factory, data_dir):
    """Every topology's run of the same config: 1 device here, while in subprocesses
    1 process x 4 devices and 2 processes x 2 devices (first launch, then resume)."""
    root = tmp_path_factory.mktemp("parallel")
    out, cache = str(root / "out"), str(root / "jax_cache")
    os.makedirs(out)
    config_path = str(root / "config.json")
    with open(config_path, "w") as f:
      json.dump(CONFIG_JSON, f)
    import portpicker
    port = str(portpicker.pick_unused_port())
    dist_workdir = str(root / "w2x2")
    launcher = Launcher(out)
    deadline = time.monotonic() + 420
    try:
      four = launcher.start("four_devices", ["four", config_path, data_dir, out],
                            _env(4, cache))
      first = [launcher.start(f"p{i}_first", ["process", config_path, data_dir, dist_workdir,
                                               out, str(i), port, "first"], _env(2, cache))
               for i in range(2)]
      # The single-process, single-device reference, meanwhile, in this process.
      config = config_of(config_path, data_dir)
      ref = train.train_and_evaluate(config, str(root / "w1"), mesh=parallel.make_mesh(),
                                     progress=False)
      launcher.wait(first, deadline)
      port = str(portpicker.pick_unused_port())
      resume = [launcher.start(f"p{i}_resume", ["process", config_path, data_dir,
                                                dist_workdir, out, str(i), port, "resume"],
                               _env(2, cache, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                                    JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)))
                for i in range(2)]
      launcher.wait(resume + [four], deadline)
    finally:
      launcher.kill_all()
    reports = {}
    for name in ("four_devices", "process0_first", "process1_first", "process0_resume",
                 "process1_resume"):
      with open(os.path.join(out, f"{name}.json")) as f:
        reports[name] = json.load(f)
    return {"ref": ref, "config": config, "reports": reports, "out": out,
            "dist_workdir": dist_workdir, "logs": {p.name: launcher.log(p.name)
                                                    for p in launcher.procs}}

  def assert_params_close(actual: dict, expected: dict, rtol=1e-5, atol=1e-6):
    assert sorted(actual) == sorted(expected)
    for k in expected:
      np.testing.assert_allclose(actual[k], expected[k], rtol=rtol, atol=atol, err_msg=k)

  # ------------------------------------------------------------------------- data layer

  @pytest.mark.parametrize("shard_count", [2, 4])
  def test_data_shards_concatenate_to_the_single_process_batches(data_dir, shard_count):
    """Per-process rows, concatenated in process order, are the one-process global batch,
    across an epoch boundary (1,500 train digits, 64 per batch: the 24th batch crosses)."""
    kw = dict(resolution=8, batch_size=64, seed=11, data_dir=data_dir)
    whole = data.batches("digits", shard_index=0, shard_count=1, **kw)
    shards = [data.batches("digits", shard_index=i, shard_count=shard_count, **kw)
              for i in range(shard_count)]
    for _ in range(26):
      parts = [next(s) for s in shards]
      assert all(p.shape == (64 // shard_count, 8, 8, 1) for p in parts)
      np.testing.assert_array_equal(np.concatenate(parts), next(whole))

  # -------------------------------------------------------------------- one process, 4 devices

  def test_four_devices_match_one_device_across_growth(runs):
    r = runs["reports"]["four_devices"]
    assert r["mesh"] == "4 cpu devices"
    assert r["images_seen"] == runs["ref"].images_seen == TOTAL_IMAGES
    assert r["state_replicated_on_4"]
    four = dict(np.load(os.path.join(runs["out"], "params4.npz")))
    assert_params_close(four, flat_params(runs["ref"].state["params"]))

  def test_every_held_out_image_counts_once_on_four_devices(runs):
    """1 and 5 held-out images on 4 devices: the batch is padded and the padding masked, so
    the PSNR is the 1-device PSNR and there is one reconstruction per image."""
    for count, got in runs["reports"]["four_devices"]["eval_padding"].items():
      assert not isinstance(got, str), got
      on4, on1, recons = got
      assert recons == int(count) and on4 == pytest.approx(on1, abs=1e-4), (count, got)

  def test_growth_reshards_on_the_devices_without_host_transfers(runs):
    r = runs["reports"]["four_devices"]
    assert r["grown_replicated_on_4"]
    assert r["grown_leaves"][0] > r["grown_leaves"][1]  # fade tree, then adapters dropped

  def test_indivisible_global_batch_is_an_error_naming_both_numbers(runs):
    msg = runs["reports"]["four_devices"]["indivisible_error"]
    assert "global batch size 6" in msg and "4 devices" in msg, msg

  def test_mesh_takes_devices_per_process(runs):
    r = runs["reports"]["four_devices"]
    assert r["mesh_of_2"] == 2
    assert "asked for 5 devices per process" in r["too_many_devices"]

  # ----------------------------------------------------------------- two processes, 2 each

  def test_two_processes_match_single_process_through_growth_checkpoint_restore(runs):
    reports = runs["reports"]
    for i in range(2):
      for launch in ("first", "resume"):
        r = reports[f"process{i}_{launch}"]
        assert (r["process_count"], r["device_count"], r["local_device_count"]) == (2, 4, 2)
    steps = checkpoint.Checkpointer(os.path.join(runs["dist_workdir"], "checkpoints"),
                                    read_only=True, asynchronous=False)
    try:
      assert max(steps.steps()) == TOTAL_IMAGES
    finally:
      steps.close()
    # Process 0 said it resumed mid-fade; the data iterator positions were saved per process.
    assert f"resuming {runs['dist_workdir']} at {STOP_AT}" in runs["logs"]["p0_resume"]
    final = os.path.join(runs["dist_workdir"], "checkpoints", str(TOTAL_IMAGES))
    assert sorted(os.listdir(os.path.join(final, "data"))) == [
        "commit_success.txt", "process_0-of-2.json", "process_1-of-2.json"]
    # Saved by two processes on four devices, restored here on one device (the state item,
    # into an abstract target with shardings): the single-process run's numbers.
    import orbax.checkpoint as ocp
    from progae_jax.model import stage_of
    config = runs["config"]
    abstract = train_state.abstract_state(config, stage_of(runs["ref"].state["params"]),
                                          optim.make_optimizer(), parallel.make_mesh())
    with ocp.StandardCheckpointer() as ckptr:
      state = ckptr.restore(os.path.join(final, "state"), abstract)
    assert int(state["step"]) == int(runs["ref"].state["step"]) == 8
    assert_params_close(flat_params(state["params"]), flat_params(runs["ref"].state["params"]))
    assert_params_close(flat_params(state["ema"]), flat_params(runs["ref"].state["ema"]))

  def test_inspect_reads_a_checkpoint_written_by_two_processes(runs):
    state, meta = checkpoint.restore(runs["dist_workdir"])
    assert meta["images_seen"] == TOTAL_IMAGES
    assert_params_close(flat_params(state["params"]), flat_params(runs["ref"].state["params"]))

  def test_two_processes_read_their_rows_of_the_same_global_batches(runs):
    for i in range(2):
      r = runs["reports"][f"process{i}_first"]
      assert r["mesh_processes"] == [0, 0, 1, 1]
      assert r["local_rows"] == 8
      assert r["global_batch_max_diff"] == 0.0

  def test_only_process_zero_prints_and_writes(runs):
    logs, workdir = runs["logs"], runs["dist_workdir"]
    assert "final held-out PSNR" in logs["p0_resume"]
    for name in ("p1_first", "p1_resume"):
      assert "PSNR" not in logs[name] and "resuming" not in logs[name] and "img/s" not in \
          logs[name], logs[name][-2000:]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      records = [json.loads(line) for line in f]
    keys = [(r["kind"], r.get("step"), r["images_seen"]) for r in records]
    assert len(keys) == len(set(keys)), "a record was written twice: not only process 0 writes"
    assert sorted(r["step"] for r in records if r["kind"] == "train") == list(range(1, 9))
    assert len(os.listdir(os.path.join(workdir, "pictures"))) == 3  # one per phase
    assert os.path.exists(os.path.join(workdir, "curves.png"))

  # ----------------------------------------------------------------------------- bfloat16

  def test_bfloat16_trains_and_stays_close_to_float32(data_dir, tmp_path):
    import dataclasses
    base = config_of(str(_write_config(tmp_path)), data_dir)
    mesh = parallel.make_mesh()
    it = data.batches("digits", resolution=4, batch_size=32, seed=7, data_dir=data_dir)
    batches = [next(it) for _ in range(40)]
    losses = {}
    for dtype in ("float32", "bfloat16"):
      config = dataclasses.replace(base, compute_dtype=dtype)
      optimizer = optim.make_optimizer(3e-3)
      state = train_state.init_state(config, optimizer, mesh)
      step = steps.make_train_step(config, optimizer, mesh)
      hlo = step.lower(state, parallel.global_batch(batches[0], mesh), np.float32(1)).as_text()
      assert ("bf16" in hlo) == (dtype == "bfloat16")  # The convolutions really are bf16.
      out = []
      for b in batches:
        state, metrics = step(state, parallel.global_batch(b, mesh), np.float32(1.0))
        out.append(metrics["loss"])
      losses[dtype] = np.array(jax.device_get(out))
      # Parameters and optimizer state stay float32 whatever the compute dtype.
      assert {x.dtype for x in jax.tree_util.tree_leaves(state["params"])} == {
          jnp.dtype("float32")}
      assert {x.dtype for x in jax.tree_util.tree_leaves(state["opt_state"])
              if jnp.issubdtype(x.dtype, jnp.floating)} == {jnp.dtype("float32")}
    f32, bf16 = losses["float32"], losses["bfloat16"]
    assert np.all(np.isfinite(bf16))
    assert bf16[-5:].mean() < 0.5 * bf16[:5].mean()  # It trains.
    rel = np.abs(bf16 - f32) / f32
    assert rel[:10].max() < 0.01, rel  # Close to float32 over the first steps (0.3% here)...
    assert rel.max() < 0.05, rel  # ...and still near it later.

  def _write_config(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(CONFIG_JSON))
    return path

  # ------------------------------------------------------------------------ launch settings

  def test_initialize_distributed_needs_all_three_settings(monkeypatch):
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_JOB_ID",
              "OMPI_COMM_WORLD_SIZE"):
      monkeypatch.delenv(k, raising=False)
    assert parallel.initialize_distributed() is False  # One process: nothing to do.
    with pytest.raises(ValueError, match="--num-processes N, --process-id I"):
      parallel.initialize_distributed("127.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "2")
    with pytest.raises(ValueError, match=r"process id 2 is not in \[0, 2\)"):
      parallel.initialize_distributed("127.0.0.1:1234")
    monkeypatch.setenv("JAX_PROCESS_ID", "x")
    with pytest.raises(ValueError, match="JAX_PROCESS_ID='x' is not an integer"):
      parallel.initialize_distributed()

  def test_launcher_detection(monkeypatch):
    for k in ("SLURM_JOB_ID", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_NPROCS",
              "OMPI_COMM_WORLD_SIZE", "OMPI_MCA_orte_hnp_uri"):
      monkeypatch.delenv(k, raising=False)
    assert parallel.launcher_detected() is None
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert parallel.launcher_detected() is None  # An interactive one-task allocation.
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert parallel.launcher_detected() == "SLURM"

  def test_global_batch_on_one_device_is_the_batch(data_dir):
    mesh = parallel.make_mesh()
    x = np.arange(2 * 4 * 4 * 1, dtype=np.float32).reshape(2, 4, 4, 1)
    g = parallel.global_batch(x, mesh)
    assert g.sharding == parallel.data_sharding(mesh)
    np.testing.assert_array_equal(np.asarray(g), x)
    parallel.check_batch_size(3, mesh)  # Anything divides over one device.


if __name__ == "__main__":
  role, args = sys.argv[1], sys.argv[2:]
  if role == "four":
    role_four_devices(*args)
  elif role == "process":
    role_process(*args)
  else:
    raise SystemExit(f"unknown role {role!r}")
