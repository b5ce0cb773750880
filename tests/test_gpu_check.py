"""The GPU check's lists: the wheels cover what the lent machine lacks; the quick tests exist.

experiments/gpu/machine_packages.txt   what the machine has (from the workplace's notes)
experiments/gpu/wheels.txt             what travels to it as wheels, pinned
experiments/gpu/smoke_tests.txt        the tests it runs first
Offline and fast: imports are read from the source (ast), distributions from this Python's
installed metadata, requirement markers as the machine's Python 3.12 on Linux reads them.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(path: str):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3],
                                                os.path.join(ROOT, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


fetch = _load("experiments/fetch_gpu_wheels.py")
report = _load("experiments/gpu/report.py")
SMOKE = fetch.read_names(os.path.join(ROOT, "experiments", "gpu", "smoke_tests.txt"))


def _imports(path: str) -> set[str]:
  """Top-level names of every module a file imports, wherever the import statement is."""
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names |= {a.name.split(".")[0] for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      names.add(node.module.split(".")[0])
  return names


# Imported only for --wandb and `progae export --onnx` (the extra `onnx`), which the GPU check
# never runs; torch only by the tests of the PyTorch reference, which skip without it (the GPU
# machine has it: machine_packages.txt).
OPTIONAL = {"wandb", "jax2onnx", "onnx", "onnxruntime", "torch"}


def _scanned_files() -> list[str]:
  """The package, and the test files the machine runs (with their conftest)."""
  package = os.path.join(ROOT, "progae_jax")
  files = sorted(os.path.join(d, f) for d, _, names in os.walk(package)
                 for f in names if f.endswith(".py"))
  tests = sorted({node.split("::")[0] for node in SMOKE} | {"tests/conftest.py"})
  return files + [os.path.join(ROOT, t) for t in tests]


def _distributions_imported() -> dict[str, set[str]]:
  """{distribution: files importing it} for every third-party import of the scanned files."""
  owners = importlib.metadata.packages_distributions()
  found: dict[str, set[str]] = {}
  local = {"progae_jax", "__future__"} | {  # The test files' own helpers (conftest).
      os.path.splitext(f)[0] for f in os.listdir(os.path.join(ROOT, "tests"))}
  local |= OPTIONAL  # Imported only when a run asks for it; maybe not installed here either.
  for path in _scanned_files():
    for name in _imports(path) - set(sys.stdlib_module_names) - local:
      if name not in owners:
        raise AssertionError(f"{os.path.relpath(path, ROOT)} imports {name}, which no "
                             "installed distribution provides: install it here first")
      for dist in owners[name]:
        found.setdefault(fetch.normalize(dist), set()).add(os.path.relpath(path, ROOT))
  return found


def test_the_wheels_cover_every_import_the_machine_lacks():
  machine, pins = fetch.machine_packages(), fetch.read_pins()
  imported = _distributions_imported()
  assert {"jax", "flax", "tensorflow-datasets", "grain"} <= set(imported)  # The scan works.
  missing = {d: sorted(files) for d, files in imported.items() if d not in machine | set(pins)}
  assert not missing, f"imported, not on the machine, not in wheels.txt: {missing}"


def test_the_wheels_bring_what_they_need_and_nothing_the_machine_has():
  from packaging.requirements import Requirement
  machine, pins = fetch.machine_packages(), fetch.read_pins()
  assert not set(pins) & machine  # Two versions of a package stop the install there.
  unmet = {}
  for dist in pins:
    for text in importlib.metadata.requires(dist) or []:
      req = Requirement(text)
      if req.marker is None or req.marker.evaluate(fetch.MACHINE_ENV):
        if fetch.normalize(req.name) not in machine | set(pins):
          unmet.setdefault(dist, []).append(req.name)
  assert not unmet, f"needed by a wheel, neither on the machine nor in wheels.txt: {unmet}"


def test_the_machine_list_is_dated_and_holds_its_jax():
  with open(fetch.MACHINE_TXT) as f:
    head = f.read(600)
  assert "2026-11-17" in head  # The day the list was read off the machine.
  assert {"jax", "jaxlib", "jax-cuda13-plugin", "flax", "optax",
          "orbax-checkpoint"} <= fetch.machine_packages()


def _wheel(tmp_path, name: str, version: str, requires: list[str]) -> str:
  path = tmp_path / f"{name}-{version}-py3-none-any.whl"
  meta = "\n".join([f"Name: {name}", f"Version: {version}"]
                   + [f"Requires-Dist: {r}" for r in requires])
  with zipfile.ZipFile(path, "w") as z:
    z.writestr(f"{name}-{version}.dist-info/METADATA", meta + "\n")
  return str(path)


def test_fetch_check_names_an_unmet_requirement_and_a_missing_wheel(tmp_path):
  _wheel(tmp_path, "alpha", "1.0", ["beta>=2", "gamma; python_version < '3.9'",
                                    "delta; extra == 'docs'", "numpy"])
  pins = {"alpha": "1.0", "zeta": "3.0"}
  problems = fetch.check(str(tmp_path), pins, machine={"numpy"})
  assert problems == ["zeta==3.0 was not fetched",
                      "alpha-1.0-py3-none-any.whl needs beta: neither on the machine nor in "
                      f"{os.path.relpath(fetch.WHEELS_TXT)}"]
  assert fetch.check(str(tmp_path), {"alpha": "1.0"}, machine={"numpy", "beta"}) == []


def test_wheels_txt_must_pin_every_line(tmp_path):
  bad = tmp_path / "wheels.txt"
  bad.write_text("# comment\ngrain==0.2.18\ndm-pix\n")
  with pytest.raises(ValueError, match="'dm-pix' is not pinned"):
    fetch.read_pins(str(bad))


def test_every_quick_test_is_collected_by_pytest():
  """The ids as pytest itself collects them (parametrised ones included), not names read off
  the source: an id that no longer exists makes pytest's collection fail."""
  assert len(SMOKE) >= 6 and len(set(SMOKE)) == len(SMOKE)
  out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                        "-p", "no:cacheprovider", "-p", "no:randomly", *SMOKE],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
  collected = [line for line in out.stdout.splitlines() if "::" in line]
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
  assert sorted(collected) == sorted(SMOKE), set(SMOKE) ^ set(collected)


def test_the_script_parses():
  script = os.path.join(ROOT, "experiments", "gpu_check.sh")
  assert subprocess.run(["bash", "-n", script], capture_output=True).returncode == 0


def _stage(res, **kw):
  return {"kind": "stage", "resolution": res, "phase": "stable", "batch": 256,
          "compute_dtype": "bfloat16", "jax_img_per_s": 1000.0, "flops_per_step": 6.25e13,
          "tflops": 250.0, "mfu": 0.3165, "mfu_datasheet": 0.2527, "peak_source": "measured",
          "peak_tflops": 790.0, "compile_s": 21.3, "peak_mem_bytes": 40 * 2**30, **kw}


def test_report_tables(tmp_path):
  torch = {"eager_bf16": {"img_per_s": 800.0, "ratio": 1.25},
           "compile_bf16": {"img_per_s": 1000.0, "ratio": 1.0}}
  large = [{"kind": "meta"}, _stage(128, torch=torch, ratio_by_order={"jax_first": 1.24,
                                                                      "jax_after": 1.26}),
           {"kind": "max_batch", "resolution": 128, "estimate": 1100,
            "limit_bytes_per_device": 132 * 2**30, "largest_that_ran": 1096,
            "tried": [{"batch": 1096, "ran": True}]}]
  (tmp_path / "large.jsonl").write_text("\n".join(map(json.dumps, large)))
  (tmp_path / "train_main.jsonl").write_text("\n".join(map(json.dumps, [
      {"kind": "train", "images_per_s": 5000.0},
      {"kind": "eval", "psnr": 27.5, "ssim": 0.9, "images_seen": 108800}])))
  (tmp_path / "smoke.txt").write_text("...\n10 passed in 50.0s\n")
  timings = tmp_path / "timings.tsv"
  timings.write_text("large\t150\t120.0\t0\ntrain\t90\t61.2\t0\n"
                     "max_batch\t60\t-\tskipped\n")
  text = report.report(str(tmp_path), str(timings), cpu_sizes=False)
  assert ("| 128x128 stable | 256 | 1,000 | 250 | 31.6% | 25.3% | 21.3 | 40.0 | 800 | 1.25 "
          "| 1,000 | 1.00 | 1.24 / 1.26 |") in text
  assert "790 TFLOP/s" in text and "largest that ran: 1096" in text
  assert "| 61.2 | 5,000 | 27.50 | 0.900 | 108,800 |" in text
  assert "| max_batch | 60 | - | skipped, over budget |" in text
  assert "10 passed in 50.0s" in text and "Steps total: 181 s" in text


# A stand-in for the machine's Python: records every command line, answers as the real
# programs would (in miniature), and runs the real report.
STAND_IN = r"""#!/usr/bin/env bash
all="$*"
echo "$all" >> "$CALLS"
case "$all" in
  -\ *|-) cat > /dev/null; echo "python 3.12.3; backend $BACKEND; devices 1 x stand-in" ;;
  *experiments/gpu/report.py*) exec "$REAL_PYTHON" "$@" ;;
  *progae_jax.bench*--json*)
    json=${all##*--json }; json=${json%% *}
    echo '{"kind": "stage", "resolution": 16, "phase": "stable", "batch": 8,
           "jax_img_per_s": 10.0, "compile_s": 1.0, "peak_mem_bytes": null}' | tr -d '\n' > "$json"
    echo >> "$json" ;;
  *progae_jax\ train*)
    dir=${all##*--workdir }; dir=${dir%% *}; mkdir -p "$dir"
    echo '{"kind": "eval", "psnr": 12.0, "ssim": 0.5, "images_seen": 3584}' > "$dir/metrics.jsonl" ;;
  *pytest*) echo "10 passed in 1.0s" ;;
esac
exit 0
"""


def _run_script(tmp_path, allow_cpu: str, backend: str, **env_vars):
  stand_in = tmp_path / "python"
  stand_in.write_text(STAND_IN)
  stand_in.chmod(0o755)
  out, calls = tmp_path / "out", tmp_path / "calls.txt"
  env = dict(os.environ, PYTHON=str(stand_in), ALLOW_CPU=allow_cpu, BACKEND=backend,
             CALLS=str(calls), REAL_PYTHON=sys.executable, WORK=str(tmp_path / "work"),
             **env_vars)
  env.pop("WHEELS", None)
  done = subprocess.run(["bash", "experiments/gpu_check.sh", str(out)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120)
  return done, out, calls.read_text().splitlines()


def test_the_script_in_cpu_mode_runs_every_step_at_reduced_sizes(tmp_path):
  done, out, calls = _run_script(tmp_path, "1", "cpu")
  assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
  benches = [c for c in calls if "progae_jax.bench" in c]
  assert len(benches) == 3  # large, max_batch, large_small
  for c in benches:
    assert "--preset large" in c and "--width-divisor 32" in c and "--batch 8" in c
  assert "--torch-modes eager_bf16,eager_fp32 --torch-device cpu" in benches[0]
  assert "--max-batch" in benches[1] and "--vs-torch" not in benches[1]
  assert any("--fade-images 512" in c for c in calls if "progae_jax train" in c)
  assert any("bench_loop.py" in c and "--images-scale 0.05" in c for c in calls)
  assert any("pytest" in c and "[3-False]" in c for c in calls)
  # A few files, as a device machine sends back (at most 8).
  assert sorted(os.listdir(out)) == ["env.txt", "gpu_check.md", "large.jsonl", "log.txt",
                                     "smoke.txt", "train_main.jsonl"]
  text = (out / "gpu_check.md").read_text()
  assert "ALLOW_CPU=1" in text and "| 16x16 stable | 8 | 10 |" in text


def test_the_script_on_a_gpu_runs_the_large_preset_beside_every_torch_mode(tmp_path):
  done, out, calls = _run_script(tmp_path, "0", "gpu")
  assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
  benches = [c for c in calls if "progae_jax.bench" in c]
  assert "--resolutions 128,64" in benches[0] and "--resolutions 32,16" in benches[2]
  for c in (benches[0], benches[2]):
    assert ("--torch-modes eager_bf16,compile_bf16,eager_fp32 --torch-device cuda" in c
            and "--stage-budget 70" in c and "--measure-peak" in c)
  assert "--resolutions 128 " in benches[1] and "--max-batch" in benches[1]
  timings = (tmp_path / "work" / "timings.tsv").read_text()
  limits = dict(line.split("\t")[:2] for line in timings.splitlines())
  # Every step under its own limit, and the limits within the 270 s budget's reach.
  assert limits == {"env": "20", "smoke": "150", "data": "90", "large": "150",
                    "train": "90", "large_small": "100", "max_batch": "60", "process": "170",
                    "loop": "70"}
  # The main job as whole processes, and its loop beside its step, on the prepared data.
  assert any("benchmarks/bench_process.py" in c and "--data-dir" in c for c in calls)
  assert any("benchmarks/bench_loop.py --preset main" in c for c in calls)


def test_only_runs_the_steps_asked_for(tmp_path):
  done, out, calls = _run_script(tmp_path, "0", "gpu", ONLY="large_small")
  assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
  runs = [c for c in calls if c.startswith(("-m progae_jax", "-m pytest"))]
  assert len(runs) == 1 and "--resolutions 32,16" in runs[0]
  assert "| large | 150 | - | not asked for (ONLY) |" in (out / "gpu_check.md").read_text()


def test_no_gpu_stops_the_script_unless_allowed(tmp_path):
  done, _, calls = _run_script(tmp_path, "0", "cpu")
  assert done.returncode == 3 and "ALLOW_CPU=1" in done.stdout
  assert not any("progae_jax.bench" in c for c in calls)
