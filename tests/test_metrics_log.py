"""metrics.jsonl: written line by line, cut back to the checkpoint a run resumes from."""

import json

from progae_jax.metrics_log import MetricsLog, read_metrics


def _seen(records):
  return [r["images_seen"] for r in records]


def test_a_resumed_log_keeps_only_what_came_up_to_its_checkpoint(tmp_path):
  log = MetricsLog(str(tmp_path))
  for seen in (32, 64, 96, 128):
    log.write({"kind": "train", "images_seen": seen, "loss": 1.0 / seen})
  with open(log.path) as f:
    assert [json.loads(line)["images_seen"] for line in f] == [32, 64, 96, 128]
  # A crashed run logged past its last checkpoint (64): the resumed run drops those lines.
  resumed = MetricsLog(str(tmp_path), resume_at=64)
  assert _seen(resumed.read()) == [32, 64]
  resumed.write({"kind": "train", "images_seen": 96, "loss": 0.5})
  assert _seen(read_metrics(log.path)) == [32, 64, 96]
  # A fresh run starts an empty file; an absent file reads as no records.
  assert MetricsLog(str(tmp_path)).read() == []
  assert read_metrics(str(tmp_path / "absent.jsonl")) == []
