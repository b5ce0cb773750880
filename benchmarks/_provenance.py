"""What every benchmark result records about how it was made: command, machine, versions,
date (experiments/render_results.py and its test read these four keys)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys


def provenance() -> dict:
  import jax

  import progae_jax
  device = jax.devices()[0]
  return {"command": " ".join(["python", os.path.relpath(sys.argv[0])] + sys.argv[1:]),
          "date": datetime.date.today().isoformat(),
          "machine": {"platform": device.platform, "device_kind": device.device_kind,
                      "devices": jax.device_count(), "cpu_count": os.cpu_count(),
                      "processor": platform.processor() or platform.machine()},
          "versions": {"progae_jax": progae_jax.__version__, "jax": jax.__version__,
                       "python": platform.python_version()}}


def write(path: str | None, record: dict) -> None:
  """`record` as JSON in `path` (its folder made), if a path is given."""
  if path:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
      json.dump(record, f, indent=1)
    print(f"wrote {path}")
