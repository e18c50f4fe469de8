"""The env interface every backend presents to the training loop."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import numpy as np

from protosac_jax.envs.names import EnvError  # noqa: F401 - re-exported


# Frames kept for "frames" envs (Box2D renders are downscaled to this), see gym_envs.py.
FRAME_SHAPE = (96, 144, 3)


def rescale_actions(actions, low, high):
    """[-1, 1] -> [low, high] per dim (clipped first, so float error never leaves the box)."""
    actions = np.clip(np.asarray(actions, np.float64), -1.0, 1.0)
    return np.asarray(low, np.float64) + (actions + 1.0) * 0.5 * (
        np.asarray(high, np.float64) - np.asarray(low, np.float64))


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
    render_dim: int  # length of the render-state vector kept per transition for provenance
    obs_dtype: str = "float32"  # uint8 for pixels (stored as uint8, scaled in the CNN)
    # How a state is redrawn: state (gymnax/MJX render vector) | mujoco (qpos ++ qvel) |
    # pixels (the obs is the picture) | frames (reservoir of captured frames) | none
    render_kind: str = "state"
    # > 0: stacked pixel obs whose last `frame_channels` channels are the newest frame; the
    # buffer then stores only that frame of next_obs (replay.py rebuilds the rest)
    frame_channels: int = 0

    @property
    def uses_reservoir(self) -> bool:
        return self.render_kind == "frames"

    def obs_example(self):
        return np.zeros(self.obs_shape, self.obs_dtype)

    def render_example(self):
        """One provenance render state: a frame for reservoir envs, else the state vector."""
        if self.uses_reservoir:
            return np.zeros(FRAME_SHAPE, np.uint8)
        return np.zeros((self.render_width,), np.float32)

    @property
    def render_width(self) -> int:
        """Stored render-vector length: at least 1 (Orbax cannot save zero-size arrays)."""
        return max(self.render_dim, 1)


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
