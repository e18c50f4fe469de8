"""MJX locomotion through `brax.envs` (backend "mjx"): humanoid, hopper, halfcheetah, ...

Same single-env interface as the gymnax backend (the loop vmaps it). Auto-reset follows brax's
training wrapper: each env keeps the first state of its episode stream and returns to it after
a terminal or truncated step (cheaper than a fresh MJX reset every step; every env still starts
from its own random initial state). Time limit = `episode_length` (1000, as brax). brax's
`done` is a true termination (e.g. the hopper fell); hitting the time limit is a truncation.
Render state = concat(qpos, qvel): `mj_forward` on a CPU MjData with it redraws the state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import warnings
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from protosac_jax.envs.base import EnvError, EnvSpec, StepResult

EPISODE_LENGTH = 1000


@functools.lru_cache(maxsize=None)
def _brax_envs():
    # mujoco.mjx prints "Failed to import warp" on stdout; brax warns it is unmaintained
    # (we only use brax.envs). Neither is actionable for users.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from brax import envs as brax_envs
    return brax_envs


def brax_env_names() -> tuple[str, ...]:
    return tuple(sorted(_brax_envs()._envs))


@functools.lru_cache(maxsize=None)
def _make(name: str):
    brax_envs = _brax_envs()
    if name not in brax_envs._envs:
        raise EnvError(f"unknown brax env {name!r}; available: {', '.join(brax_env_names())}")
    # The env may first be asked for inside a jit trace: build it eagerly, or its model arrays
    # would be tracers cached here for good.
    with warnings.catch_warnings(), jax.ensure_compile_time_eval():
        warnings.simplefilter("ignore")
        return brax_envs.get_environment(name, backend="mjx")


_JITTED: dict[int, tuple] = {}  # id(env) -> (env, jitted reset, jitted step); a memo


def _jitted(env):
    """A brax env's (reset, step), each wrapped in jax.jit once per env object.

    A process traces the env's reset three times (the spec, init_state, the evaluation) and its
    step twice (the training iteration, the evaluation), each vmapped over its own batch.
    Nested in jit, the Python of brax/MJX is traced once per process, at one env's shapes, and
    vmap batches that jaxpr; without it, each call site traced it again (humanoid: ~3.5 s less
    CPU tracing and lowering per process start, benchmarks/RESULTS.md). XLA inlines the calls.
    Keyed by identity: a user's brax-style env need not be hashable."""
    if id(env) not in _JITTED:
        _JITTED[id(env)] = (env, jax.jit(env.reset), jax.jit(env.step))
    return _JITTED[id(env)][1:]


@flax.struct.dataclass
class MjxState:
    brax_state: Any  # brax.envs.State of the current episode
    first_state: Any  # the state episodes of this env restart from
    time: jax.Array  # steps in the current episode


@functools.lru_cache(maxsize=None)
def _spec(name: str, episode_length: int) -> EnvSpec:
    env = _make(name)
    # Shapes only: abstract evaluation. (Under ensure_compile_time_eval this ran reset op by
    # op, ~370 tiny compiles, 25 s of every MJX start on this CPU.) Through the jitted reset,
    # so that init_state's and the evaluation's resets reuse this trace.
    state = jax.eval_shape(_jitted(env)[0], jax.ShapeDtypeStruct((2,), jnp.uint32))
    nq = state.pipeline_state.q.shape[-1]
    nv = state.pipeline_state.qd.shape[-1]
    return EnvSpec(
        name=name, env_id=f"brax-mjx/{name}", backend="mjx",
        obs_shape=tuple(state.obs.shape), action_dim=int(env.action_size),
        action_low=(-1.0,) * env.action_size, action_high=(1.0,) * env.action_size,
        episode_length=episode_length, render_dim=nq + nv)


@dataclasses.dataclass(frozen=True)
class MjxEnv:
    """A brax MJX env behind the device-env interface (see envs/base.py)."""

    name: str
    episode_length: int = EPISODE_LENGTH

    @property
    def spec(self) -> EnvSpec:
        return _spec(self.name, self.episode_length)

    @property
    def _env(self):  # the brax env (envs/objects.py's BraxObjectEnv returns the user's)
        return _make(self.name)

    def render_state(self, env_state: MjxState) -> jax.Array:
        pipeline = env_state.brax_state.pipeline_state
        return jnp.concatenate([pipeline.q, pipeline.qd]).astype(jnp.float32)

    def reset(self, key):
        state = _jitted(self._env)[0](key)
        return MjxState(state, state, jnp.zeros((), jnp.int32)), state.obs.astype(jnp.float32)

    def draw_starts(self, env_states: MjxState, key, num: int):
        """(states, obs) of `num` new episodes: `num` distinct ones of the first states of
        the batch `env_states` (each drawn by `reset` with its own key), chosen with `key`.
        The evaluation starts from these, so its program needs no MJX reset of its own
        (loops.episode_starts)."""
        batch = env_states.time.shape[0]
        pick = jax.random.choice(key, batch, (num,), replace=False)
        first = jax.tree_util.tree_map(lambda x: x[pick], env_states.first_state)
        return (MjxState(first, first, jnp.zeros((num,), jnp.int32)),
                first.obs.astype(jnp.float32))

    def step(self, key, env_state: MjxState, action) -> StepResult:
        del key  # brax locomotion steps are deterministic
        # brax actions are in [-1, 1] already (actuator ctrlrange is applied by MJX).
        stepped = _jitted(self._env)[1](env_state.brax_state, jnp.clip(action, -1.0, 1.0))
        time = env_state.time + 1
        terminated = jnp.asarray(stepped.done) > 0.5
        truncated = jnp.logical_and(time >= self.episode_length, jnp.logical_not(terminated))
        done = jnp.logical_or(terminated, truncated)
        first = env_state.first_state
        next_state = jax.tree_util.tree_map(lambda a, b: jnp.where(done, a, b), first, stepped)
        return StepResult(
            env_state=MjxState(next_state, first, jnp.where(done, 0, time)),
            obs=next_state.obs.astype(jnp.float32),
            reward=jnp.asarray(stepped.reward, jnp.float32),
            terminated=terminated,
            truncated=truncated,
            final_obs=stepped.obs.astype(jnp.float32),
        )


