import os

# Tests run on the CPU; keep XLA from grabbing every core for itself in parallel compiles.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
