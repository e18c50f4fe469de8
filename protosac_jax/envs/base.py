"""The env interface every backend presents to the training loop."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax


class EnvError(ValueError):
    """An env name/index that cannot be used (the CLI turns this into one line, exit 2)."""


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    name: str  # our name, e.g. "pendulum"
    env_id: str  # the upstream id, e.g. "Pendulum-v1"
    backend: str  # gymnax | mjx | gymnasium
    obs_shape: tuple[int, ...]
    action_dim: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    episode_length: int  # time limit (truncation)
    render_dim: int  # length of the render-state vector kept for provenance


@flax.struct.dataclass
class StepResult:
    """One env step. After a terminal or truncated step the env has already been reset:
    `obs` is the first obs of the new episode and `final_obs` the true last obs, which is the
    `next_obs` to learn from."""

    env_state: Any
    obs: jax.Array
    reward: jax.Array
    terminated: jax.Array  # reached a terminal state: do not bootstrap
    truncated: jax.Array  # hit the time limit (and did not terminate): bootstrap
    final_obs: jax.Array
