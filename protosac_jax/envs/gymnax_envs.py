"""Pure-JAX classic control (gymnax): Pendulum-v1, MountainCarContinuous-v0.

One env = pure functions `reset(key)` and `step(key, state, action)` on a single, unbatched
env; the loop vmaps them over `--num-envs`. Actions arrive in [-1, 1] and are rescaled to the
env's Box bounds here, so the actor never needs to know them.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np

from protosac_jax.envs.base import EnvSpec, StepResult
from protosac_jax.envs.names import GYMNAX_ENVS


class _Deferred(types.ModuleType):
    """Stands in for a module while gymnax imports; the real one is imported on first use."""

    def __getattr__(self, attr):
        return getattr(importlib.import_module(self.__name__), attr)


def import_gymnax():
    """`import gymnax`, ~1-2 s faster on 2 CPU cores (benchmarks/RESULTS.md, "Test suite").

    gymnax's package __init__ imports every env it has; two of them (bsuite/misc rendering)
    import seaborn, which pulls in pandas and scipy.stats, and only their render functions use
    it. While gymnax imports, `seaborn` is a stand-in that imports the real seaborn when one of
    those functions first touches it; afterwards the stand-in leaves sys.modules, so a later
    `import seaborn` anywhere gets the real module.
    """
    if "gymnax" in sys.modules or "seaborn" in sys.modules:
        import gymnax
        return gymnax
    sys.modules["seaborn"] = _Deferred("seaborn")
    try:
        import gymnax
    finally:
        if isinstance(sys.modules.get("seaborn"), _Deferred):
            del sys.modules["seaborn"]
    return gymnax


@functools.lru_cache(maxsize=None)
def _make(env_id: str):
    gymnax = import_gymnax()  # imported lazily: only the gymnax backend needs it

    with jax.ensure_compile_time_eval():  # may first run inside a jit trace
        env, params = gymnax.make(env_id)
    if env_id == "MountainCarContinuous-v0":
        env = _mountain_car_matching_gymnasium()
    return env, params


def _mountain_car_matching_gymnasium():
    """gymnax 1.0.1's MountainCarContinuous zeroes negative velocity at the *goal*; Gymnasium
    zeroes it at the *left wall* (position == min_position). We follow Gymnasium so results
    transfer (tests/test_envs.py checks step-by-step agreement)."""
    from gymnax.environments.classic_control.continuous_mountain_car import (
        ContinuousMountainCar, EnvState)

    class GymnasiumMountainCar(ContinuousMountainCar):
        def step_env(self, key, state, action, params):
            force = jnp.clip(action, params.min_action, params.max_action)
            velocity = (state.velocity + force * params.power
                        - jnp.cos(3 * state.position) * params.gravity)
            velocity = jnp.clip(velocity, -params.max_speed, params.max_speed)
            position = jnp.clip(state.position + velocity, params.min_position,
                                params.max_position)
            velocity = jnp.where((position <= params.min_position) & (velocity < 0), 0.0,
                                 velocity)
            goal = (position >= params.goal_position) & (velocity >= params.goal_velocity)
            reward = (-0.1 * action**2 + 100.0 * goal).squeeze()
            state = EnvState(position=position.squeeze(), velocity=velocity.squeeze(),
                             time=state.time + 1)
            return (self.get_obs(state), state, reward, self.is_terminal(state, params),
                    {"discount": self.discount(state, params)})

    return GymnasiumMountainCar()


@functools.lru_cache(maxsize=None)
def _spec(name: str) -> EnvSpec:
    env_id, render_fields = GYMNAX_ENVS[name]
    env, params = _make(env_id)
    space = env.action_space(params)
    with jax.ensure_compile_time_eval():  # spec may first be asked for inside a trace
        low = np.broadcast_to(np.asarray(space.low, np.float32), space.shape)
        high = np.broadcast_to(np.asarray(space.high, np.float32), space.shape)
    return EnvSpec(
        name=name, env_id=env_id, backend="gymnax",
        obs_shape=tuple(env.observation_space(params).shape),
        action_dim=int(space.shape[0]),
        action_low=tuple(float(x) for x in low), action_high=tuple(float(x) for x in high),
        episode_length=int(params.max_steps_in_episode), render_dim=len(render_fields),
    )


@dataclasses.dataclass(frozen=True)
class GymnaxEnv:
    """A gymnax env behind the device-env interface (see envs/base.py)."""

    name: str

    @property
    def env_id(self) -> str:
        return GYMNAX_ENVS[self.name][0]

    @property
    def render_fields(self) -> tuple[str, ...]:
        return GYMNAX_ENVS[self.name][1]

    @property
    def _env(self):
        return _make(self.env_id)[0]

    @property
    def params(self):
        return _make(self.env_id)[1]

    @property
    def spec(self) -> EnvSpec:
        return _spec(self.name)

    def render_state(self, env_state) -> jax.Array:
        """The fields a renderer needs to draw this state, as a float32 vector."""
        return jnp.stack([jnp.asarray(getattr(env_state, f), jnp.float32)
                          for f in self.render_fields])

    def reset(self, key):
        obs, state = self._env.reset(key, self.params)
        return state, obs.astype(jnp.float32)

    def step(self, key, env_state, action) -> StepResult:
        spec = self.spec
        low, high = jnp.asarray(spec.action_low), jnp.asarray(spec.action_high)
        scaled = low + (jnp.clip(action, -1.0, 1.0) + 1.0) * 0.5 * (high - low)
        obs, state, reward, terminated, truncated, info = self._env.step(
            key, env_state, scaled, self.params)
        return StepResult(
            env_state=state,
            obs=obs.astype(jnp.float32),
            reward=jnp.asarray(reward, jnp.float32).reshape(()),
            terminated=jnp.asarray(terminated).reshape(()),
            truncated=jnp.logical_and(truncated, jnp.logical_not(terminated)).reshape(()),
            final_obs=info["final_observation"].astype(jnp.float32),
        )
