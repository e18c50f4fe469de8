#!/usr/bin/env python
"""Train ProtoSAC or SAC: `python train.py --env pendulum` (see --help)."""

import sys

from protosac_jax.cli import main

if __name__ == "__main__":
    sys.exit(main())
