"""`progae bench` end to end on a tiny model (1 step per window, a stand-in for the reference),
and the PyTorch reference itself against the library's model, stage by stage."""

import importlib.util
import json
import subprocess
import sys

import jax
import pytest

from progae_jax import bench, count_params, init_params
from progae_jax.config import ModelConfig
from progae_jax.cpu import MALLOC_TUNABLES

TINY = ModelConfig(image_channels=1, max_resolution=8, channels={4: 4, 8: 4}, latent_dim=4)

# Prints what the real reference prints, and echoes what it was given.
FAKE_TORCH = """
import json, os, sys
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
print("some warning on stdout")
print(json.dumps({"impl": "torch", "img_per_s": 100.0, "max_rss_bytes": 123456789,
                  "args": args, "tunables": os.environ.get("GLIBC_TUNABLES")}))
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
    assert r["torch_max_rss_bytes"] == 123456789  # what the reference reports of itself
  # The reference is asked for the same model, batch and alpha.
  cmd = bench.torch_command(fake_torch, TINY, 8, batch, 0.5, 1)
  args = dict(zip(cmd[2::2], cmd[3::2]))
  assert args == {"--res": "8", "--batch": str(batch), "--steps": "1", "--alpha": "0.5",
                  "--channels": "1", "--ch": "4:4,8:4", "--latent": "4"}
  table = bench.format_table(records)
  assert "JAX/torch" in table and "8x8" in table and "118" in table  # RSS in MB
  s = bench.summary(records, target=1.2)
  assert s["stages"] == 1 and s["min_ratio"] == min(r["ratio"] for r in records)


def test_the_reference_gets_this_process_malloc_settings_when_asked(fake_torch):
  cmd = [sys.executable, fake_torch]
  assert MALLOC_TUNABLES in bench.run_torch(cmd, same_malloc=True)["tunables"]
  assert MALLOC_TUNABLES not in (bench.run_torch(cmd)["tunables"] or "")
  assert bench.malloc_note(True, True) is None and bench.malloc_note(False, False) is None
  assert "not like for like" in bench.malloc_note(True, False)


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
  # Like for like by default: neither side tuned here, so the reference is not either.
  assert records[0]["malloc_tuned"] is False and records[0]["torch_malloc_tuned"] is False
  assert records[1]["resolution"] == 8 and records[1]["phase"] == "stable"
  assert "JAX img/s" in out and "not like for like" not in out
  assert [json.loads(l) for l in out_file.read_text().splitlines()] == records


def test_main_rejects_a_missing_reference(capsys, monkeypatch, tmp_path):
  code = bench.main(["--resolutions", "8", "--vs-torch", "/nonexistent/torch_ref.py",
                     "--cpu-devices", "0", "--no-malloc-tuning"])
  assert code == 2
  assert "no such file" in capsys.readouterr().err
  # Without a path: the repository's reference, and a clear line where it is missing.
  assert bench.build_parser().parse_args(["--vs-torch"]).vs_torch == bench.REFERENCE
  monkeypatch.setattr(bench, "REFERENCE", str(tmp_path / "torch_reference.py"))
  code = bench.main(["--resolutions", "8", "--vs-torch", "--cpu-devices", "0",
                     "--no-malloc-tuning"])
  assert code == 2
  assert "comes with the repository" in capsys.readouterr().err


def _torch_reference():
  spec = importlib.util.spec_from_file_location("torch_reference", bench.REFERENCE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _jax_count(config, resolution, fading):
  shapes = jax.eval_shape(lambda: init_params(config, resolution, jax.random.key(0),
                                              fading=fading))
  return count_params(shapes)


def test_the_torch_reference_is_the_default_model_stage_by_stage():
  pytest.importorskip("torch")
  ref = _torch_reference()
  config = ModelConfig(max_resolution=64)
  stages = [(r, f) for r in config.resolutions for f in (False, True) if not (f and r == 4)]
  counts = {s: ref.count_params(ref.build(*s)) for s in stages}
  assert counts == {s: _jax_count(config, *s) for s in stages}
  assert counts[(32, True)] == 1_689_606  # both adapters of the fading stage included
  # Run as `progae bench` runs it, for another model: it builds the model it is asked for.
  batch = 2 * len(jax.devices())
  record = bench.run_torch(bench.torch_command(bench.REFERENCE, TINY, 8, batch, 0.5, 1))
  assert record["img_per_s"] > 0 and record["params"] == _jax_count(TINY, 8, True)
  # Its own memory (torch's libraries), read in the child, not the pages of this process.
  assert 1 << 24 < record["max_rss_bytes"] < 1 << 32


def test_malloc_tuning_is_accepted_by_glibc():
  # Process-wide and irreversible: checked in a child process, not in the test session.
  if not sys.platform.startswith("linux"):
    pytest.skip("glibc only")
  code = "from progae_jax.cpu import tune_malloc; print(tune_malloc())"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
  assert out.stdout.strip() == "True", out.stderr
