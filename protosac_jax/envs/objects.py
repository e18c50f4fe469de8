"""Your own env as a Python object: `--env my_pkg.envs:make_env` (or `train(cfg, env=...)`).

A reference `MODULE:NAME` names a class, a zero-argument factory or a module-level instance;
what it gives is one of:
  - a Gymnasium `Env` (from a class or factory: one env per `--num-envs`), stepped on the host;
  - a gymnax-style env (`reset(key, params)`, `step(key, state, action, params)`,
    `default_params`, `action_space(params)`, `observation_space(params)`), vmapped on device;
  - a brax-style env (`reset(rng)`, `step(state, action)`, `action_size`, `observation_size`,
    actions in [-1, 1]), vmapped on device with the MJX backend's auto-reset.
The reference is the run's env name in config.json, so resume, `load` and viz.py import it
again. Device envs store their state (gymnax) or pipeline state (brax) flattened as each
transition's render vector; viz.py redraws a prototype with the env's own `render`:
gymnax-style `render(state, params) -> [H, W, 3]`, brax-style `render([pipeline_state],
height=, width=) -> [frame]`.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import sys

import jax
import jax.numpy as jnp
import numpy as np

from protosac_jax.envs.base import EnvError, EnvSpec

KINDS = ("gymnasium", "gymnax", "brax")


def is_reference(name: str) -> bool:
    """`MODULE:NAME` where NAME is a Python identifier path (a Gymnasium id has a `-v`)."""
    module, sep, attr = name.partition(":")
    return bool(sep and module and attr) and all(p.isidentifier() for p in attr.split("."))


def import_module_of(ref: str):
    """Import MODULE of `MODULE:...` (which registers its Gymnasium ids, if it has any); any
    failure of the user's module is one EnvError line."""
    module = ref.partition(":")[0]
    try:
        return importlib.import_module(module)
    except Exception as err:  # noqa: BLE001 - any failure of the user's module: one line
        raise EnvError(f"--env {ref}: cannot import {module} ({type(err).__name__}: "
                       f"{err})") from None


def is_object(name: str) -> bool:
    """`MODULE:NAME` naming a Python object, not a Gymnasium id that MODULE registers
    (imports MODULE)."""
    if not is_reference(name):
        return False
    import_module_of(name)
    from protosac_jax.envs.gym_envs import gym_ids

    return name.partition(":")[2] not in gym_ids()


@functools.lru_cache(maxsize=None)
def target(ref: str):
    """The object `MODULE:NAME` names (imported once)."""
    module, _, attr = ref.partition(":")
    obj = import_module_of(ref)
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise EnvError(f"--env {ref}: {module} has no {attr!r} (neither a registered "
                           "Gymnasium id nor a Python name)")
        obj = getattr(obj, part)
    return obj


def _kind_of(obj) -> str | None:
    try:
        import gymnasium

        if isinstance(obj, gymnasium.Env):
            return "gymnasium"
    except ImportError:  # pragma: no cover - gymnasium is a dependency
        pass
    if all(hasattr(obj, a) for a in ("reset", "step", "default_params", "action_space",
                                     "observation_space")):
        return "gymnax"
    if all(hasattr(obj, a) for a in ("reset", "step", "action_size", "observation_size")):
        return "brax"
    return None


@functools.lru_cache(maxsize=None)
def instance(ref: str):
    """(kind, env): the env a reference gives (a class or factory is called once here)."""
    obj = target(ref)
    kind = None if inspect.isclass(obj) else _kind_of(obj)
    if kind is None and callable(obj):
        try:
            with jax.ensure_compile_time_eval():
                made = obj()
        except Exception as err:  # noqa: BLE001 - the user's constructor: one line
            raise EnvError(f"--env {ref}: calling it with no arguments failed "
                           f"({type(err).__name__}: {err})") from None
        kind = _kind_of(made)
        if kind is None:
            raise EnvError(f"--env {ref}: gave a {type(made).__name__}, not a Gymnasium, "
                           "gymnax-style or brax-style env")
        return kind, made
    if kind is None:
        raise EnvError(f"--env {ref}: a {type(obj).__name__} is not a Gymnasium, gymnax-style "
                       "or brax-style env (nor a class or factory of one)")
    if kind == "gymnasium":
        raise EnvError(f"--env {ref}: a Gymnasium env instance cannot be copied for each of "
                       "--num-envs; name its class or a factory")
    return kind, obj


def kind(ref: str) -> str:
    return instance(ref)[0]


def reference_of(env) -> str:
    """`MODULE:NAME` for an env object passed to `train(cfg, env=...)`: its class or factory
    (or a module-level instance), so that the run can be rebuilt from config.json."""
    if isinstance(env, str):
        return env
    if inspect.isclass(env) or inspect.isfunction(env):
        module, name = env.__module__, env.__qualname__
    else:
        module, name = type(env).__module__, None
        found = [k for k, v in vars(sys.modules[module]).items() if v is env] \
            if module in sys.modules else []
        if found:
            name = found[0]
    if name is None or "<" in name or module == "__main__":
        raise EnvError(
            f"env={env!r}: pass a Gymnasium id, or the class or zero-argument factory of your "
            "env defined in an importable module (not __main__ or a local function): the run "
            "records it as MODULE:NAME so that resume, load and viz.py can rebuild it")
    ref = f"{module}:{name}"
    if target(ref) is not env:
        raise EnvError(f"env={env!r}: {ref} does not name this object")
    return ref


def _flat(tree):
    """A pytree as one float32 vector (the render vector of a transition)."""
    leaves = [jnp.ravel(jnp.asarray(x)).astype(jnp.float32)
              for x in jax.tree_util.tree_leaves(tree)]
    return jnp.concatenate(leaves) if leaves else jnp.zeros((0,), jnp.float32)


def _unflat(vector, template):
    """`_flat`'s inverse on a host vector, with the leaves' shapes and dtypes of `template`."""
    leaves, treedef = jax.tree_util.tree_flatten(template)
    out, start = [], 0
    vector = np.asarray(vector)
    for leaf in leaves:
        size = int(np.prod(leaf.shape))
        out.append(vector[start:start + size].reshape(leaf.shape).astype(leaf.dtype))
        start += size
    return jax.tree_util.tree_unflatten(treedef, out)


@functools.lru_cache(maxsize=None)
def gymnax_spec(ref: str) -> EnvSpec:
    env = instance(ref)[1]
    params = env.default_params
    space = env.action_space(params)
    with jax.ensure_compile_time_eval():
        low = np.broadcast_to(np.asarray(space.low, np.float32), space.shape)
        high = np.broadcast_to(np.asarray(space.high, np.float32), space.shape)
        state = jax.eval_shape(lambda k: env.reset(k, params)[1], jax.random.PRNGKey(0))
    return EnvSpec(
        name=ref, env_id=ref, backend="gymnax",
        obs_shape=tuple(env.observation_space(params).shape), action_dim=int(space.shape[0]),
        action_low=tuple(float(x) for x in low), action_high=tuple(float(x) for x in high),
        episode_length=int(getattr(params, "max_steps_in_episode", 1000)),
        render_dim=int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(state))))


@functools.lru_cache(maxsize=None)
def brax_spec(ref: str, episode_length: int) -> EnvSpec:
    from protosac_jax.envs.mjx_envs import _jitted

    env = instance(ref)[1]
    # through the jitted reset the device env uses, as mjx_envs._spec: one trace of it
    state = jax.eval_shape(_jitted(env)[0], jax.random.PRNGKey(0))
    dim = int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(state.pipeline_state)))
    return EnvSpec(
        name=ref, env_id=ref, backend="brax", obs_shape=tuple(state.obs.shape),
        action_dim=int(env.action_size), action_low=(-1.0,) * int(env.action_size),
        action_high=(1.0,) * int(env.action_size), episode_length=episode_length,
        render_dim=dim)


class EnvRenderer:
    """`renderer(render_vector) -> [H, W, 3] uint8` with the env's own `render`."""

    def __init__(self, ref: str, size: int = 160):
        from protosac_jax.render import RenderUnavailable

        self.kind, self.env = instance(ref)
        self.size = size
        if not callable(getattr(self.env, "render", None)):
            raise RenderUnavailable(f"{ref} has no render method")
        if self.kind == "gymnax":
            params = self.env.default_params
            self.template = jax.eval_shape(lambda k: self.env.reset(k, params)[1],
                                           jax.random.PRNGKey(0))
        else:
            self.template = jax.eval_shape(self.env.reset, jax.random.PRNGKey(0)).pipeline_state

    def __call__(self, vector) -> np.ndarray:
        state = _unflat(vector, self.template)
        if self.kind == "gymnax":
            frame = self.env.render(state, self.env.default_params)
        else:
            frame = self.env.render([state], height=self.size, width=self.size)[0]
        frame = np.asarray(frame)
        if frame.dtype != np.uint8:
            frame = np.clip(frame * (255 if frame.max() <= 1.0 else 1), 0, 255).astype(np.uint8)
        return frame[..., :3]

    def close(self):
        pass


def _gymnax_base():
    from protosac_jax.envs.gymnax_envs import GymnaxEnv

    return GymnaxEnv


def _mjx_base():
    from protosac_jax.envs.mjx_envs import MjxEnv

    return MjxEnv


@functools.lru_cache(maxsize=None)
def _classes():
    """The device-env classes for references (built on the gymnax and MJX backends' step
    logic: action rescaling, terminal/truncation flags, auto-reset)."""

    @dataclasses.dataclass(frozen=True)
    class GymnaxObjectEnv(_gymnax_base()):
        """A gymnax-style env object behind the device-env interface."""

        @property
        def env_id(self) -> str:
            return self.name

        @property
        def _env(self):
            return instance(self.name)[1]

        @property
        def params(self):
            return self._env.default_params

        @property
        def spec(self) -> EnvSpec:
            return gymnax_spec(self.name)

        def render_state(self, env_state):
            return _flat(env_state)

    @dataclasses.dataclass(frozen=True)
    class BraxObjectEnv(_mjx_base()):
        """A brax-style env object behind the device-env interface."""

        @property
        def _env(self):
            return instance(self.name)[1]

        @property
        def spec(self) -> EnvSpec:
            return brax_spec(self.name, self.episode_length)

        def render_state(self, env_state):
            return _flat(env_state.brax_state.pipeline_state)

    return GymnaxObjectEnv, BraxObjectEnv


def make(ref: str):
    """The env of a reference: GymEnv (Gymnasium, host) or a device env."""
    kind_ = kind(ref)
    if kind_ == "gymnasium":
        from protosac_jax.envs.gym_envs import GymEnv

        return GymEnv(ref)
    gymnax_cls, brax_cls = _classes()
    return gymnax_cls(ref) if kind_ == "gymnax" else brax_cls(ref)


__all__ = ["KINDS", "is_reference", "import_module_of", "is_object", "target", "instance",
           "kind", "reference_of", "gymnax_spec", "brax_spec", "EnvRenderer", "make"]
