"""Gymnasium host envs (backend "gymnasium"): Box2D, CarRacing pixels, MuJoCo v5, any Box id.

These envs step on the host, so the training loop is the host loop of loops.py: one jitted
call per vector step inserts the transitions, runs the gradient steps and returns the next
actions. This module holds two things:

* `GymEnv`: the static, hashable description (id, spec, wrappers) the loop is compiled for.
  It never holds a live env.
* `GymVectorEnv`: the live `gymnasium.vector.SyncVectorEnv` (SAME_STEP autoreset, so the true
  last observation of an episode arrives in `info["final_obs"]` and is the `next_obs` we learn
  from, never the reset observation), with actions rescaled from [-1, 1] to the env's Box
  bounds and observations cast to float32 (uint8 kept for pixels).

Render kinds (what viz needs to redraw a prototype's state, see `EnvSpec.render_kind`):
  mujoco  qpos ++ qvel per transition (set the state and render it)
  pixels  the observation is the picture (CarRacing): nothing extra stored
  frames  other rendered envs (Box2D): frames captured into a small reservoir during training,
          and projection picks prototype states from that reservoir (loops.py)
  none    the env cannot render rgb_array frames
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import warnings

import numpy as np

from protosac_jax.envs import objects
from protosac_jax.envs.base import FRAME_SHAPE, EnvError, EnvSpec, rescale_actions


def _gym():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Box2D SWIG / pygame deprecation noise
        import gymnasium

        return gymnasium


def gym_ids() -> tuple[str, ...]:
    return tuple(sorted(_gym().envs.registry))


def wrap_action_repeat(env, repeat: int):
    """Repeat each action `repeat` times, summing rewards; stops early at episode end."""
    gym = _gym()

    class ActionRepeat(gym.Wrapper):
        def step(self, action):
            total = 0.0
            for _ in range(repeat):
                obs, reward, terminated, truncated, info = self.env.step(action)
                total += float(reward)
                if terminated or truncated:
                    break
            return obs, total, terminated, truncated, info

    return ActionRepeat(env)


def wrap_frame_stack(env, k: int):
    """Stack the last `k` image frames along the channel axis: [H, W, C] -> [H, W, k*C].

    Channel-last stacking lets the buffer store each transition's *new* frame only: the next
    observation is always the observation shifted by one frame (replay.py rebuilds it).
    """
    gym = _gym()
    space = env.observation_space
    low = np.repeat(space.low, k, axis=-1)
    high = np.repeat(space.high, k, axis=-1)

    class FrameStack(gym.ObservationWrapper):
        def __init__(self, env):
            super().__init__(env)
            self.observation_space = gym.spaces.Box(low, high, dtype=space.dtype)
            self.frames = collections.deque(maxlen=k)

        def reset(self, **kwargs):
            obs, info = self.env.reset(**kwargs)
            for _ in range(k):
                self.frames.append(obs)
            return self.observation(None), info

        def step(self, action):
            obs, reward, terminated, truncated, info = self.env.step(action)
            self.frames.append(obs)
            return self.observation(None), reward, terminated, truncated, info

        def observation(self, observation):
            return np.concatenate(list(self.frames), axis=-1)

    return FrameStack(env)


# Episodes of a referenced env without its own time limit are cut here (as gymnasium.make
# does for registered ids with max_episode_steps)
DEFAULT_TIME_LIMIT = 1000


def _make_reference(env_id: str, kwargs: dict):
    """A Gymnasium env from its class or factory (envs/objects.py), called with `kwargs`."""
    from gymnasium.wrappers import TimeLimit

    env = objects.target(env_id)(**kwargs)
    if env.spec is None or env.spec.max_episode_steps is None:
        env = TimeLimit(env, DEFAULT_TIME_LIMIT)
    return env


def _is_pixels(space) -> bool:
    return space.dtype == np.uint8 and len(space.shape) == 3


@dataclasses.dataclass(frozen=True, eq=False)
class GymEnv:
    """A Gymnasium id plus our wrappers. Hashable by identity: a static jit argument."""

    env_id: str
    frame_stack: int = 1
    action_repeat: int = 1
    on_host = True

    def make(self, render: bool = False, **kwargs):
        """One wrapped env (rgb_array rendering when `render`; kwargs go to gymnasium.make)."""
        gym = _gym()
        if render:
            kwargs["render_mode"] = "rgb_array"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            env = _make_reference(self.env_id, kwargs) if objects.is_object(self.env_id) \
                else gym.make(self.env_id, **kwargs)
        if self.action_repeat > 1:
            env = wrap_action_repeat(env, self.action_repeat)
        if self.frame_stack > 1 and _is_pixels(env.observation_space):
            env = wrap_frame_stack(env, self.frame_stack)
        return env

    @functools.cached_property
    def spec(self) -> EnvSpec:
        return _spec(self.env_id, self.frame_stack, self.action_repeat)


@functools.lru_cache(maxsize=None)
def _spec(env_id: str, frame_stack: int, action_repeat: int) -> EnvSpec:
    gym = _gym()
    registered = env_id
    if ":" in env_id:  # "my_pkg.envs:MyEnv-v0": the module registers the id when imported
        import importlib

        module, _, registered = env_id.partition(":")
        try:
            importlib.import_module(module)
        except Exception as err:  # noqa: BLE001 - the user's module: one line
            raise EnvError(f"cannot import {module} for {env_id} "
                           f"({type(err).__name__}: {err})") from None
    if registered not in gym.envs.registry and not objects.is_object(env_id):
        raise EnvError(f"unknown env {env_id!r} (not a registered Gymnasium id)")
    try:
        env = GymEnv(env_id, frame_stack, action_repeat).make()
    except Exception as err:  # noqa: BLE001 - missing extra (box2d, mujoco, atari ...)
        raise EnvError(f"cannot create Gymnasium env {env_id!r}: "
                       f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                       ) from None
    try:
        action_space, obs_space = env.action_space, env.observation_space
        if not isinstance(action_space, gym.spaces.Box):
            raise EnvError(f"{env_id} has a {type(action_space).__name__} action space; "
                           "ProtoSAC (like SAC) needs continuous Box actions")
        if not isinstance(obs_space, gym.spaces.Box):
            raise EnvError(f"{env_id} has a {type(obs_space).__name__} observation space; "
                           "only Box observations are supported")
        low = np.asarray(action_space.low, np.float64).reshape(-1)
        high = np.asarray(action_space.high, np.float64).reshape(-1)
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
            raise EnvError(f"{env_id} has unbounded actions; a squashed policy needs bounds")
        pixels = _is_pixels(obs_space)
        unwrapped = env.unwrapped
        render_modes = env.metadata.get("render_modes", [])
        if hasattr(unwrapped, "data") and hasattr(unwrapped, "model") and \
                hasattr(unwrapped.data, "qpos"):
            kind, render_dim = "mujoco", int(unwrapped.model.nq + unwrapped.model.nv)
        elif pixels:
            kind, render_dim = "pixels", 0
        elif "rgb_array" in render_modes:
            kind, render_dim = "frames", 0
        else:
            kind, render_dim = "none", 0
        max_steps = env.spec.max_episode_steps if env.spec is not None else None
        episode_length = math.ceil((max_steps or 1000) / action_repeat)
        return EnvSpec(
            name=env_id, env_id=env_id, backend="gymnasium",
            obs_shape=tuple(int(d) for d in obs_space.shape),
            action_dim=int(low.size), action_low=tuple(float(x) for x in low),
            action_high=tuple(float(x) for x in high), episode_length=episode_length,
            render_dim=render_dim, obs_dtype="uint8" if pixels else "float32",
            render_kind=kind, frame_channels=int(obs_space.shape[-1] // frame_stack)
            if pixels and frame_stack > 1 else 0)
    finally:
        env.close()


def downscale(frame: np.ndarray, shape=FRAME_SHAPE) -> np.ndarray:
    """Nearest-neighbour resize of an [H, W, 3] uint8 frame (no extra dependency)."""
    h, w = shape[:2]
    rows = (np.arange(h) * frame.shape[0] / h).astype(int)
    cols = (np.arange(w) * frame.shape[1] / w).astype(int)
    return np.ascontiguousarray(frame[rows][:, cols, :3])


class GymVectorEnv:
    """The live vector env of a run (host side). Numpy in, numpy out."""

    def __init__(self, env: GymEnv, num_envs: int, seed: int, render_first: bool = False):
        gym = _gym()
        from gymnasium.vector import AutoresetMode, SyncVectorEnv

        self.spec = env.spec
        fns = [functools.partial(env.make, render=render_first and i == 0)
               for i in range(num_envs)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.vec = SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
        del gym
        self.low = np.asarray(self.spec.action_low, np.float64)
        self.high = np.asarray(self.spec.action_high, np.float64)
        self.dtype = np.uint8 if self.spec.obs_dtype == "uint8" else np.float32
        self.seed = seed

    @property
    def num_envs(self) -> int:
        return self.vec.num_envs

    def reset(self) -> np.ndarray:
        obs, _ = self.vec.reset(seed=self.seed)
        return obs.astype(self.dtype)

    def step(self, actions):
        """-> (obs, reward, terminated, truncated, final_obs); `obs` is already the reset
        observation where an episode ended, `final_obs` its true last observation."""
        obs, reward, terminated, truncated, info = self.vec.step(
            rescale_actions(actions, self.low, self.high))
        obs = obs.astype(self.dtype)
        final_obs = obs.copy()
        if "final_obs" in info:
            for i in np.flatnonzero(info["_final_obs"]):
                final_obs[i] = np.asarray(info["final_obs"][i]).astype(self.dtype)
        return (obs, reward.astype(np.float32), terminated.astype(bool),
                truncated.astype(bool), final_obs)

    def render_states(self) -> np.ndarray:
        """[N, render_width] float32: MuJoCo qpos ++ qvel of each env's current state (a
        zero placeholder column for other envs)."""
        if self.spec.render_kind != "mujoco":
            return np.zeros((self.num_envs, self.spec.render_width), np.float32)
        return np.stack([np.concatenate([e.unwrapped.data.qpos, e.unwrapped.data.qvel])
                         for e in self.vec.envs]).astype(np.float32)

    def frame(self) -> np.ndarray:
        """Downscaled rgb frame of env 0's current state (needs `render_first`)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return downscale(self.vec.envs[0].render())

    def close(self) -> None:
        self.vec.close()
