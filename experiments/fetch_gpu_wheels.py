"""Downloads the wheels the lent GPU machine lacks, so that the GPU check needs no index there.

    python experiments/fetch_gpu_wheels.py            # -> .whl/ (ignored by git), prints MiB

The machine (experiments/gpu/machine_packages.txt) reaches no package index, and its Python is
3.12 with its own JAX. Everything progae_jax needs beyond its packages is listed, pinned, in
experiments/gpu/wheels.txt; this script fetches each one for CPython 3.12 on manylinux x86_64,
without dependencies (`pip download --no-deps --only-binary=:all:`). A pure-Python package
published only as a source archive is built here into a `py3-none-any` wheel instead.

Then it checks what it fetched:

    every wheel's own requirements (Requires-Dist, markers read for Python 3.12 on Linux)
        are on the machine or in the list            -> else exit 1, naming them
    one wheel per name, nothing else in .whl/        -> stale ones are deleted
    all of it under 40 MiB                           -> else exit 1 (it travels with the tree)

experiments/gpu_check.sh installs the folder there with `pip install --no-deps --target`.
"""

from __future__ import annotations

import argparse
import email.parser
import os
import re
import subprocess
import sys
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
WHEELS_TXT = os.path.join(HERE, "gpu", "wheels.txt")
MACHINE_TXT = os.path.join(HERE, "gpu", "machine_packages.txt")
LIMIT_MIB = 40  # The working tree that travels may hold 64 MiB in all.
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"]
# The machine's interpreter, for reading requirement markers.
MACHINE_ENV = {"python_version": "3.12", "python_full_version": "3.12.3",
               "sys_platform": "linux", "platform_system": "Linux",
               "platform_machine": "x86_64", "os_name": "posix",
               "implementation_name": "cpython", "platform_python_implementation": "CPython",
               "extra": ""}


def normalize(name: str) -> str:
  """PEP 503: the one spelling of a distribution name."""
  return re.sub(r"[-_.]+", "-", name).lower()


def read_names(path: str) -> list[str]:
  """Non-comment lines of a list file, whatever follows the name on them dropped."""
  with open(path) as f:
    return [line.split("#")[0].strip() for line in f if line.split("#")[0].strip()]


def read_pins(path: str = WHEELS_TXT) -> dict[str, str]:
  """wheels.txt as {normalised name: version}; every line must be NAME==VERSION."""
  pins = {}
  for line in read_names(path):
    name, sep, version = line.partition("==")
    if not sep or not version.strip():
      raise ValueError(f"{path}: {line!r} is not pinned as NAME==VERSION")
    if normalize(name) in pins:
      raise ValueError(f"{path}: {name} is listed twice")
    pins[normalize(name)] = version.strip()
  return pins


def machine_packages(path: str = MACHINE_TXT) -> set[str]:
  return {normalize(n) for n in read_names(path)}


def wheel_name(filename: str) -> tuple[str, str]:
  """(normalised distribution name, version) of a wheel's file name."""
  parts = os.path.basename(filename).split("-")
  return normalize(parts[0]), parts[1]


def _pip(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)


def fetch(name: str, version: str, dest: str) -> None:
  """One pinned wheel into `dest`: the binary for the machine, else a pure wheel built here."""
  spec = f"{name}=={version}"
  platforms = [a for p in PLATFORMS for a in ("--platform", p)]
  got = _pip("download", "--quiet", "--no-deps", "--only-binary=:all:", "--python-version",
             "3.12", "--implementation", "cp", "--abi", "cp312", "--abi", "abi3", "--abi",
             "none", *platforms, "--dest", dest, spec)
  if got.returncode == 0:
    return
  built = _pip("wheel", "--quiet", "--no-deps", "--wheel-dir", dest, spec)
  if built.returncode != 0:
    raise RuntimeError(f"no wheel of {spec} for CPython 3.12 manylinux x86_64, and building "
                       f"one failed:\n{got.stderr[-1500:]}\n{built.stderr[-1500:]}")
  made = [f for f in os.listdir(dest) if wheel_name(f) == (normalize(name), version)]
  if not any(f.endswith("-py3-none-any.whl") or f.endswith("-py2.py3-none-any.whl")
             for f in made):
    raise RuntimeError(f"{spec} has no wheel for the machine, and the one built here is not "
                       f"pure Python ({made}): it would not run there")


def requirements(wheel: str) -> list[str]:
  """The distributions a wheel needs on the machine (its markers read for MACHINE_ENV)."""
  from packaging.requirements import Requirement
  with zipfile.ZipFile(wheel) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    message = email.parser.Parser().parsestr(z.read(meta).decode())
  needed = []
  for text in message.get_all("Requires-Dist") or []:
    req = Requirement(text)
    if req.marker is None or req.marker.evaluate(MACHINE_ENV):
      needed.append(normalize(req.name))
  return needed


def check(dest: str, pins: dict[str, str], machine: set[str]) -> list[str]:
  """Problems with the folder: missing or extra wheels, requirements nobody provides."""
  wheels = {wheel_name(f): f for f in os.listdir(dest) if f.endswith(".whl")}
  problems = [f"{n}=={v} was not fetched" for n, v in pins.items() if (n, v) not in wheels]
  for (name, _), f in sorted(wheels.items()):
    missing = [r for r in requirements(os.path.join(dest, f)) if r not in machine | set(pins)]
    if missing:
      problems.append(f"{f} needs {', '.join(sorted(set(missing)))}: neither on the machine "
                      f"nor in {os.path.relpath(WHEELS_TXT)}")
  return problems


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--dest", default=".whl", help="where the wheels go (default: .whl)")
  args = p.parse_args(argv)
  pins, machine = read_pins(), machine_packages()
  both = sorted(set(pins) & machine)
  if both:  # Two versions of one package stop the whole install there.
    print(f"fetch_gpu_wheels: error: already on the machine: {', '.join(both)}", file=sys.stderr)
    return 1
  os.makedirs(args.dest, exist_ok=True)
  for f in os.listdir(args.dest):  # One version of each, and only what the list names.
    if f.endswith(".whl") and pins.get(wheel_name(f)[0]) != wheel_name(f)[1]:
      os.remove(os.path.join(args.dest, f))
  have = {wheel_name(f) for f in os.listdir(args.dest) if f.endswith(".whl")}
  for name, version in pins.items():
    if (name, version) not in have:
      print(f"fetching {name}=={version}", flush=True)
      fetch(name, version, args.dest)
  problems = check(args.dest, pins, machine)
  size = sum(os.path.getsize(os.path.join(args.dest, f)) for f in os.listdir(args.dest))
  print(f"{len(pins)} wheels in {args.dest}: {size / 2**20:.1f} MiB (limit {LIMIT_MIB} MiB)")
  if size > LIMIT_MIB * 2**20:
    problems.append(f"{size / 2**20:.1f} MiB is over the {LIMIT_MIB} MiB limit")
  for problem in problems:
    print(f"fetch_gpu_wheels: error: {problem}", file=sys.stderr)
  return 1 if problems else 0


if __name__ == "__main__":
  sys.exit(main())
