import sys

from progae_jax.cli import main

sys.exit(main())
