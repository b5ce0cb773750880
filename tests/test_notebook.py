"""experiments/inspect_growth.ipynb runs top to bottom, in a kernel of this very Python."""

import json
import os
import re
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = os.path.join(os.path.dirname(__file__), os.pardir, "experiments",
                        "inspect_growth.ipynb")


def _kernel_manager(tmp_path):
  """A kernel spec for sys.executable: whatever `python3` kernels this machine has installed,
  the notebook runs with the interpreter (and packages) running the tests."""
  from jupyter_client.kernelspec import KernelSpecManager
  from jupyter_client.manager import KernelManager
  spec_dir = tmp_path / "kernels" / "progae-test"
  spec_dir.mkdir(parents=True)
  (spec_dir / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "progae_jax tests", "language": "python"}))
  specs = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
  return KernelManager(kernel_name="progae-test", kernel_spec_manager=specs)


def _text(cell) -> str:
  """A cell's printed text as printed (the kernel may send one print's words in two stream
  messages), then its displayed values, one per line."""
  printed = "".join(o.get("text", "") for o in cell.get("outputs", []))
  shown = [str(v) for o in cell.get("outputs", [])
           for k, v in o.get("data", {}).items() if k.startswith("text/")]
  return "\n".join([printed, *shown])


def test_inspect_growth_notebook_runs(data_dir, tmp_path):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(nb, km=_kernel_manager(tmp_path), timeout=300,
                                   resources={"metadata": {"path": str(tmp_path)}})
  env = dict(os.environ, JAX_PLATFORMS="cpu", TFDS_DATA_DIR=data_dir,
             PROGAE_NOTEBOOK_WORKDIR=str(tmp_path / "run"))
  client.execute(env=env)  # Raises CellExecutionError, with the cell, if any cell fails.

  code = [c for c in nb.cells if c.cell_type == "code"]
  text = "\n".join(_text(c) for c in code)
  # The tree diffs: 4x4 -> 8x8 adds block_8 and the 8x8 adapters (12 leaves), finishing a
  # fade drops the old adapters (4 leaves), and growth to 16x16 does it again.
  assert text.count("new: 12 leaves") >= 2 and text.count("dropped: 4 leaves") >= 2
  assert "+ encoder/block_16/conv1/kernel" in text and "- encoder/from_image_8/conv/kernel" in text
  assert "leaves kept unchanged" in text
  gap = re.search(r"max \|new - upsample\(old\)\| at alpha=0: (\S+)", text)
  assert gap and float(gap.group(1)) < 1e-5
  # The run stopped mid-fade, and its checkpoint came back with its stage and alpha.
  assert "stopped at 4608 images" in text
  assert "4608 images seen, 8x8 fade, alpha 0.50" in text
  assert os.path.isdir(tmp_path / "run" / "checkpoints" / "4608")
  kinds = {k for c in code for o in c.get("outputs", []) for k in o.get("data", {})}
  assert {"text/html", "image/png"} <= kinds  # Tables, treescope, the reconstructions.
  assert any("treescope" in str(o.get("data", {}).get("text/html", ""))
             for c in code for o in c.get("outputs", []))
