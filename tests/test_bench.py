"""`progae bench` end to end on a tiny model: 1 step per window, a stand-in for the reference."""

import json
import subprocess
import sys

import jax
import pytest

from progae_jax import bench
from progae_jax.config import ModelConfig

TINY = ModelConfig(image_channels=1, max_resolution=8, channels={4: 4, 8: 4}, latent_dim=4)

# Prints what the real reference prints, and echoes the arguments it was given.
FAKE_TORCH = """
import json, sys, time
time.sleep(0.2)  # long enough for the bench to sample its memory
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
print("some warning on stdout")
print(json.dumps({"impl": "torch", "img_per_s": 100.0, "args": args}))
"""


@pytest.fixture
def fake_torch(tmp_path):
  path = tmp_path / "fake_torch_ref.py"
  path.write_text(FAKE_TORCH)
  return str(path)


def test_run_bench_alternates_with_the_reference(fake_torch):
  batch = 2 * len(jax.devices())
  records = bench.run_bench((8,), batch=batch, phases=("fade",), rounds=2, steps=1,
                            vs_torch=fake_torch, model_config=TINY)
  assert [(r["resolution"], r["phase"], r["alpha"]) for r in records] == [(8, "fade", 0.5)]
  for r in records:
    assert len(r["jax_img_per_s_runs"]) == 2 and r["jax_img_per_s"] > 0
    assert r["torch_img_per_s_runs"] == [100.0, 100.0]
    assert r["ratio"] == pytest.approx(r["jax_img_per_s"] / 100.0, rel=1e-2)
    assert r["compile_s"] > 0 and r["peak_mem_bytes"] > 0
    # The child's own memory (a bare Python), not the pages it shared with this process.
    assert 1 << 20 < r["torch_max_rss_bytes"] < 1 << 28
  # The reference is asked for the same model, batch and alpha.
  cmd = bench.torch_command(fake_torch, TINY, 8, batch, 0.5, 1)
  args = dict(zip(cmd[2::2], cmd[3::2]))
  assert args == {"--res": "8", "--batch": str(batch), "--steps": "1", "--alpha": "0.5",
                  "--channels": "1", "--ch": "4:4,8:4", "--latent": "4"}
  table = bench.format_table(records)
  assert "JAX/torch" in table and "8x8" in table
  s = bench.summary(records, target=1.2)
  assert s["stages"] == 1 and s["min_ratio"] == min(r["ratio"] for r in records)


def test_main_prints_json_lines_and_a_table(fake_torch, tmp_path, capsys):
  out_file = tmp_path / "bench.jsonl"
  batch = 2 * len(jax.devices())
  code = bench.main(["--resolutions", "8", "--phases", "stable", "--batch", str(batch),
                     "--rounds", "1", "--steps", "1", "--image-channels", "1",
                     "--vs-torch", fake_torch, "--cpu-devices", "0", "--no-malloc-tuning",
                     "--json", str(out_file)])
  assert code == 0
  out = capsys.readouterr().out
  records = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
  assert [r["kind"] for r in records] == ["meta", "stage", "summary"]
  assert records[1]["resolution"] == 8 and records[1]["phase"] == "stable"
  assert "JAX img/s" in out
  assert [json.loads(l) for l in out_file.read_text().splitlines()] == records


def test_main_rejects_a_missing_reference(capsys):
  code = bench.main(["--resolutions", "8", "--vs-torch", "/nonexistent/torch_ref.py",
                     "--cpu-devices", "0", "--no-malloc-tuning"])
  assert code == 2
  assert "no such file" in capsys.readouterr().err


def test_malloc_tuning_is_accepted_by_glibc():
  # Process-wide and irreversible: checked in a child process, not in the test session.
  if not sys.platform.startswith("linux"):
    pytest.skip("glibc only")
  code = "from progae_jax.bench import tune_malloc; print(tune_malloc())"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
  assert out.stdout.strip() == "True", out.stderr
