import os

# Tests run on the CPU; keep XLA from grabbing every core for itself in parallel compiles.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """One tfds data directory for the whole session: built-in datasets prepare once, offline."""
  return str(tmp_path_factory.mktemp("tfds"))
