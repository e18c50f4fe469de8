"""Tiny custom envs as Python objects for tests/test_own_env.py (envs/objects.py).

`PointLine` (gymnax-style) and `BraxPoint` (brax-style): move a point on a line towards 0;
`make_point_gym` a Gymnasium factory, `make_pixel_gym` one that is observed as its picture.
Each draws itself with its own `render`.
"""
import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class PointState:
    x: jax.Array
    time: jax.Array


@flax.struct.dataclass
class PointParams:
    max_steps_in_episode: int = 50


@dataclasses.dataclass(frozen=True)
class Box:
    low: float
    high: float
    shape: tuple


def _picture(x, size=32):
    img = np.full((size, size, 3), 255, np.uint8)
    img[:, int(np.clip((float(x) + 2) / 4 * (size - 1), 0, size - 1))] = 0
    return img


class PointLine:
    """gymnax's Environment API (reset/step with params, auto-reset, final_observation)."""

    @property
    def default_params(self):
        return PointParams()

    def action_space(self, params):
        return Box(-1.0, 1.0, (1,))

    def observation_space(self, params):
        return Box(-2.0, 2.0, (2,))

    def _obs(self, state):
        return jnp.stack([state.x, state.time / 50.0]).astype(jnp.float32)

    def reset(self, key, params):
        state = PointState(jax.random.uniform(key, (), minval=-1.5, maxval=1.5),
                           jnp.zeros((), jnp.int32))
        return self._obs(state), state

    def step(self, key, state, action, params):
        x = jnp.clip(state.x + 0.1 * action[0], -2.0, 2.0)
        stepped = PointState(x, state.time + 1)
        reward = -jnp.abs(x)
        truncated = stepped.time >= params.max_steps_in_episode
        final_obs = self._obs(stepped)
        obs_reset, state_reset = self.reset(key, params)
        state = jax.tree_util.tree_map(lambda a, b: jnp.where(truncated, a, b), state_reset,
                                       stepped)
        obs = jnp.where(truncated, obs_reset, final_obs)
        return obs, state, reward, jnp.bool_(False), truncated, {"final_observation": final_obs}

    def render(self, state, params):
        return _picture(state.x)


@flax.struct.dataclass
class BraxState:
    pipeline_state: jax.Array
    obs: jax.Array
    reward: jax.Array
    done: jax.Array
    metrics: dict = flax.struct.field(default_factory=dict)
    info: dict = flax.struct.field(default_factory=dict)


class BraxPoint:
    """brax's Env API (reset(rng), step(state, action), action_size, observation_size)."""

    action_size = 1
    observation_size = 2

    def reset(self, rng):
        x = jax.random.uniform(rng, (1,), minval=-1.5, maxval=1.5)
        return BraxState(x, jnp.concatenate([x, -x]), jnp.zeros(()), jnp.zeros(()))

    def step(self, state, action):
        x = jnp.clip(state.pipeline_state + 0.1 * action, -2.0, 2.0)
        return BraxState(x, jnp.concatenate([x, -x]), -jnp.abs(x[0]), jnp.zeros(()))

    def render(self, trajectory, height=32, width=32):
        return [_picture(np.asarray(s)[0], height) for s in trajectory]


def make_point_gym(render_mode=None):
    from tiny_point_env import PointEnv  # tests/data is on sys.path (see test_own_env.py)

    return PointEnv(render_mode=render_mode)


def make_pixel_gym(render_mode=None):
    from tiny_point_env import PixelPointEnv

    return PixelPointEnv(render_mode=render_mode)
