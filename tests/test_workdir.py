"""The work directory's lock and checks, and metrics.jsonl's tolerance of a torn last line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from progae_jax import metrics_log, workdir
from progae_jax.workdir import WorkdirError


def test_a_second_lock_on_a_workdir_is_refused_naming_the_holder(tmp_path):
  first = workdir.Lock(str(tmp_path))
  with pytest.raises(WorkdirError, match=f"{tmp_path} is in use by process {os.getpid()}"):
    workdir.Lock(str(tmp_path))
  first.release()
  workdir.Lock(str(tmp_path)).release()  # Free again once released.


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from progae_jax import workdir; "
       f"workdir.Lock({str(tmp_path)!r}); print('locked', flush=True); time.sleep(600)"],
      stdout=subprocess.PIPE, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(WorkdirError, match=f"in use by process {holder.pid}"):
      workdir.Lock(str(tmp_path))
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
  finally:
    if holder.poll() is None:
      holder.kill()
  assert os.path.exists(tmp_path / workdir.LOCK_FILE)  # Left behind, and harmless:
  workdir.Lock(str(tmp_path)).release()


def test_paths_that_cannot_be_a_workdir_are_refused(tmp_path):
  a_file = tmp_path / "file"
  a_file.write_text("x")
  with pytest.raises(WorkdirError, match="is a file, not a folder"):
    workdir.check(str(a_file))
  with pytest.raises(WorkdirError, match="--workdir is empty"):
    workdir.check("")
  workdir.check(str(tmp_path / "new" / "deeper"))  # Creatable: fine.


def test_remove_if_unused_keeps_a_workdir_with_anything_in_it(tmp_path):
  empty, used = tmp_path / "empty", tmp_path / "used"
  for d in (empty, used):
    os.makedirs(d / "checkpoints")
    (d / "metrics.jsonl").write_text("")
  (used / "metrics.jsonl").write_text('{"kind": "train"}\n')
  workdir.remove_if_unused(str(empty))
  workdir.remove_if_unused(str(used))
  assert not empty.exists() and used.exists()


def _write(path, lines):
  with open(path, "w") as f:
    f.write("".join(lines))


def test_a_torn_last_metrics_line_is_dropped_with_a_warning(tmp_path):
  path = str(tmp_path / "metrics.jsonl")
  good = [json.dumps({"kind": "train", "images_seen": i}) + "\n" for i in (32, 64)]
  _write(path, good + ['{"kind": "train", "images_se'])
  warnings = []
  assert metrics_log.read_metrics(path, warn=warnings.append) == [
      {"kind": "train", "images_seen": 32}, {"kind": "train", "images_seen": 64}]
  assert len(warnings) == 1 and f"{path}:3: dropping its last line" in warnings[0]


def test_a_bad_metrics_line_before_the_last_names_file_and_line(tmp_path):
  path = str(tmp_path / "metrics.jsonl")
  good = json.dumps({"kind": "train", "images_seen": 32}) + "\n"
  _write(path, [good, "garbage\n", good])
  with pytest.raises(metrics_log.MetricsError, match=f"{path}:2: not a metrics record"):
    metrics_log.read_metrics(path)


def test_resuming_rewrites_metrics_through_a_new_file(tmp_path, monkeypatch):
  path = tmp_path / "metrics.jsonl"
  _write(path, [json.dumps({"kind": "train", "images_seen": i}) + "\n" for i in (32, 64, 96)]
         + ['{"tor'])
  inode = os.stat(path).st_ino
  replaced = []
  real_replace = os.replace
  monkeypatch.setattr(os, "replace", lambda a, b: (replaced.append((a, b)), real_replace(a, b)))
  log = metrics_log.MetricsLog(str(tmp_path), resume_at=64)
  assert replaced == [(f"{path}.tmp", str(path))] and os.stat(path).st_ino != inode
  assert [r["images_seen"] for r in log.read()] == [32, 64]
