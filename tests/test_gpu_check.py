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


OPTIONAL = {"wandb"}  # Imported only for --wandb, which the GPU check never gives.


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


def _defined_tests(path: str) -> set[str]:
  with open(os.path.join(ROOT, path)) as f:
    tree = ast.parse(f.read())
  return {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}


def test_every_quick_test_exists():
  assert len(SMOKE) >= 6
  for node in SMOKE:
    path, _, name = node.split("[")[0].partition("::")
    assert name in _defined_tests(path), f"smoke_tests.txt: {node} is not a test any more"


def test_the_script_parses():
  script = os.path.join(ROOT, "experiments", "gpu_check.sh")
  assert subprocess.run(["bash", "-n", script], capture_output=True).returncode == 0


def test_report_tables(tmp_path):
  stage = lambda res, phase, b, dt, ips, **kw: {
      "kind": "stage", "resolution": res, "phase": phase, "batch": b, "compute_dtype": dt,
      "jax_img_per_s": ips, "torch_img_per_s": None, "flops_per_step": 2e9,
      "tflops": 0.5, "mfu": None, **kw}
  bench = [stage(32, "stable", 64, "float32", 1000.0),
           stage(32, "stable", 64, "bfloat16", 1500.0, mfu=0.0123),
           stage(32, "stable", 64, "float32", 900.0, torch_img_per_s=450.0, ratio=2.0)]
  (tmp_path / "bench.jsonl").write_text("\n".join(map(json.dumps, bench)))
  (tmp_path / "train_float32.jsonl").write_text("\n".join(map(json.dumps, [
      {"kind": "train", "images_per_s": 5000.0},
      {"kind": "eval", "psnr": 27.5, "ssim": 0.9, "images_seen": 166400}])))
  (tmp_path / "smoke.txt").write_text("...\n9 passed in 50.0s\n")
  timings = tmp_path / "timings.tsv"
  timings.write_text("smoke\t180\t50.0\t0\ntrain_float32\t150\t61.2\t0\n"
                     "train_bfloat16\t150\t-\tskipped\n")
  text = report.report(str(tmp_path), str(timings), cpu_sizes=False)
  assert "| 32x32 stable | 1,000 | 1,500 | 1.50 |" in text  # bf16 / float32 = 1.5
  assert "| 32x32 stable | 64 | bfloat16 | 2.00 | 0.5 | 1.2% |" in text
  assert "| 32x32 stable | 64 | 900 | 450 | 2.00 |" in text
  assert "| float32 | 61.2 | 5,000 | 27.50 | 0.900 | 166,400 |" in text
  assert "| bfloat16 | - (skipped, over budget) |" in text
  assert "| train_bfloat16 | 150 | - | skipped, over budget |" in text
  assert "9 passed in 50.0s" in text and "Steps total: 111 s" in text
