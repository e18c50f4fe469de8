"""What the env registry needs without JAX: the gymnax names and the env error.

`protosac_jax.envs` resolves names with these alone, so a command with a bad flag or env
name answers before JAX is imported (train.py, tests/test_cli.py).
"""

from __future__ import annotations


# brax.envs' registry (tests/test_envs.py checks it is still brax's list): an unknown name
# is answered without importing brax (~3 s).
BRAX_ENVS = ("ant", "fast", "halfcheetah", "hopper", "humanoid", "humanoidstandup",
             "inverted_double_pendulum", "inverted_pendulum", "pusher", "reacher", "swimmer",
             "walker2d")


class EnvError(ValueError):
    """An env name/index that cannot be used (the CLI turns this into one line, exit 2)."""


# name -> (gymnax id, render-state field names in order)
GYMNAX_ENVS = {
    "pendulum": ("Pendulum-v1", ("theta", "theta_dot", "last_u")),
    "mountaincar": ("MountainCarContinuous-v0", ("position", "velocity")),
}
