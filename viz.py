#!/usr/bin/env python
"""viz.py: export what a trained run's prototypes look like and how they drive the policy.

    python viz.py --ckpt checkpoints/<run> [--out DIR] [--episodes 5] [--top-k 3]
                  [--format png|svg] [--no-video] [--best]

Writes into DIR (default <run>/viz): prototypes.png (grid of the real states the prototypes
were projected onto, with usage and action Gaussians), actions.png (per action dim: each
prototype's Gaussian and the policy's action histogram), episode.mp4 (an evaluation episode
with its top-k prototypes per frame), report.html (self-contained) and viz.json.
The original's `protosac_test.py` flags are accepted: --model_path (= --ckpt),
--save_dir (= --out), --environment (checked against the run's env), --episodes.
"""

import sys

from protosac_jax.viz_cli import main

if __name__ == "__main__":
    sys.exit(main())
