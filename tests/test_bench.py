"""`progae bench` end to end on a tiny model (1 step per window, a stand-in for the reference),
both sides of `--vs-torch` as workers, and the PyTorch reference itself against the library's
model, stage by stage, with its choice of device."""

import importlib.util
import json
import subprocess
import sys

import jax
import pytest

from progae_jax import bench, bench_workers, count_params, init_params
from progae_jax.config import ModelConfig
from progae_jax.cpu import MALLOC_TUNABLES

TINY = ModelConfig(image_channels=1, max_resolution=8, channels={4: 4, 8: 4}, latent_dim=4)

# Speaks the real reference's --worker protocol, and echoes what it was given.
FAKE_TORCH = """
import json, os, sys
args = dict(zip(sys.argv[2::2], sys.argv[3::2]))
print("some warning on stdout")
print(json.dumps({"ready": True, "device": "fake", "args": args, "max_rss_bytes": 123456789,
                  "tunables": os.environ.get("GLIBC_TUNABLES")}), flush=True)
for line in sys.stdin:
  if json.loads(line)["op"] == "quit":
    break
  print(json.dumps({"img_per_s": 100.0, "max_rss_bytes": 123456789}), flush=True)
"""


@pytest.fixture
def fake_torch(tmp_path):
  path = tmp_path / "fake_torch_ref.py"
  path.write_text(FAKE_TORCH)
  return str(path)


def test_vs_torch_runs_both_sides_as_workers_in_rotating_order(fake_torch):
  batch = 2 * len(jax.devices())
  records = bench.run_bench((8,), phases=("fade",), model_config=TINY, batch=batch, rounds=2,
                            steps=1, vs_torch=fake_torch, cpu_devices="0", malloc=False)
  [r] = records
  assert (r["resolution"], r["phase"], r["alpha"]) == (8, "fade", 0.5)
  # Each round one window per side; the order alternates, so each goes first once.
  assert r["round_orders"] == [["jax", "eager_fp32"], ["eager_fp32", "jax"]]
  assert len(r["jax_img_per_s_runs"]) == 2 and r["jax_img_per_s"] > 0
  assert r["torch_img_per_s_runs"] == [100.0, 100.0]
  assert r["ratio"] == pytest.approx(r["jax_img_per_s"] / 100.0, rel=1e-2)
  assert set(r["ratio_by_order"]) == {"jax_first", "jax_after"}
  # The JAX worker's compile and memory, apart from the windows; the reference's own memory.
  assert r["compile_s"] > 0 and r["peak_mem_bytes"] > 0 and r["flops_per_step"] > 0
  assert r["torch"]["eager_fp32"]["max_rss_bytes"] == 123456789
  assert r["torch"]["eager_fp32"]["device"] == "fake"
  table = bench.format_table(records)
  assert "JAX/eager_fp32" in table and "8x8" in table and "with JAX first" in table
  s = bench.summary(records, target=1.2)
  assert s["stages"] == 1 and s["min_ratio"] == r["ratio"]


def test_the_reference_worker_is_asked_for_the_same_model(fake_torch):
  cmd = bench_workers.torch_worker_command(fake_torch, TINY, 8, 4, 0.5, "eager_bf16")
  worker = bench_workers.Worker("fake", cmd, bench_workers.worker_env(same_malloc=True))
  try:
    ready = worker.wait_ready(60)
  finally:
    worker.close()
  assert ready["args"] == {"--mode": "eager_bf16", "--device": "auto", "--res": "8",
                           "--batch": "4", "--alpha": "0.5", "--channels": "1",
                           "--ch": "4:4,8:4", "--latent": "4"}
  assert MALLOC_TUNABLES in ready["tunables"]  # Like for like: this process's malloc.
  assert MALLOC_TUNABLES not in (bench_workers.worker_env(False).get("GLIBC_TUNABLES") or "")
  assert bench_workers.worker_env(False)["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
  assert bench.malloc_note(True, True) is None and bench.malloc_note(False, False) is None
  assert "not like for like" in bench.malloc_note(True, False)


def test_order_statistics_and_rotation():
  assert bench_workers.rotation(["jax", "a", "b"], 4) == ["a", "b", "jax"]
  rounds = [{"order": ["jax", "a"], "jax": 10.0, "a": 5.0},
            {"order": ["a", "jax"], "jax": 9.0, "a": 6.0}]
  assert bench_workers.ratio_by_order(rounds, "a") == {"jax_first": 2.0, "jax_after": 1.5}


def test_main_prints_json_lines_and_a_table(tmp_path, capsys):
  out_file = tmp_path / "bench.jsonl"
  batch = 2 * len(jax.devices())
  code = bench.main(["--resolutions", "8", "--phases", "stable", "--batch", str(batch),
                     "--rounds", "2", "--steps", "1", "--image-channels", "1",
                     "--stage-budget", "0.001", "--peak-tflops", "1.0", "--cpu-devices", "0",
                     "--no-malloc-tuning", "--json", str(out_file)])
  assert code == 0
  out = capsys.readouterr().out
  records = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
  assert [r["kind"] for r in records] == ["meta", "stage", "summary"]
  meta, stage = records[0], records[1]
  assert meta["command"].startswith("progae bench --resolutions 8") and meta["date"]
  assert stage["resolution"] == 8 and stage["phase"] == "stable"
  assert stage["rounds_done"] == 1  # The stage's budget ran out after the first round.
  assert stage["mfu"] == pytest.approx(stage["tflops"] / 1.0, rel=1e-3)
  assert stage["flops_per_image"] == pytest.approx(stage["flops_per_step"] / batch)
  assert "JAX img/s" in out and "MFU" in out
  assert [json.loads(l) for l in out_file.read_text().splitlines()] == records


def test_largest_batch_is_estimated_from_the_buffers_and_checked():
  memory = {"total": 1000 + 64 * 10, "temporaries": 64 * 8}  # state 1000, 10 bytes an image
  assert bench.largest_batch_estimate(memory, 64, 64 * 2, limit=1000 + 10 * 500) == 500
  record = {"batch": 2, "devices": 1, "xla_memory_per_device": {}, "device_bytes_limit": None}
  assert bench.largest_batch(TINY, 8, record, bench.Settings())["estimate"] is None


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
  # ... and the large preset's model, at its widths and latent.
  large = bench.preset_train_config("large").model
  ch = dict(large.channels)
  for s in ((64, True), (128, False)):
    assert ref.count_params(ref.build(*s, 3, ch, large.latent_dim)) == _jax_count(large, *s)


def test_the_torch_reference_chooses_its_device():
  pytest.importorskip("torch")
  ref = _torch_reference()
  assert ref.choose_device("auto", cuda_available=True) == "cuda"
  assert ref.choose_device("auto", cuda_available=False) == "cpu"
  assert ref.choose_device("cpu", cuda_available=True) == "cpu"
  with pytest.raises(ValueError, match="no CUDA device"):
    ref.choose_device("cuda", cuda_available=False)
  # Run as `progae bench` runs it, for another model: it says where it ran, and on the CPU
  # here (on a GPU machine, CUDA: experiments/gpu_check.sh runs this test there).
  import torch
  cmd = [sys.executable, bench.REFERENCE, "--res", "8", "--batch", "2", "--steps", "1",
         "--warmup", "1", "--channels", "1", "--ch", "4:4,8:4", "--latent", "4"]
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
  record = json.loads(out.stdout.splitlines()[-1])
  assert record["device"].startswith("cuda" if torch.cuda.is_available() else "cpu")
  assert record["img_per_s"] > 0 and record["params"] == _jax_count(TINY, 8, True)
  bad = subprocess.run(cmd + ["--device", "tpu"], capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2 and "choose from auto, cuda, cpu" in bad.stderr


def test_malloc_tuning_is_accepted_by_glibc():
  # Process-wide and irreversible: checked in a child process, not in the test session.
  if not sys.platform.startswith("linux"):
    pytest.skip("glibc only")
  code = "from progae_jax.cpu import tune_malloc; print(tune_malloc())"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
  assert out.stdout.strip() == "True", out.stderr
