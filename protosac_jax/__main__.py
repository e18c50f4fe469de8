"""`python -m protosac_jax ...` is train.py (`python -m protosac_jax --help`)."""

import sys

from protosac_jax.cli import main

if __name__ == "__main__":
    sys.exit(main())
