"""Env registry: names, aliases and the original's `--environment 0..6` indices.

Names pick the backend: gymnax names (`pendulum`, `mountaincar`, and their Gymnasium ids by
default), brax/MJX names (`hopper`, `humanoid`, ...), and any other Gymnasium id with a `-v`
(`Hopper-v5`, `LunarLanderContinuous-v3`, `CarRacing-v3`, ...) on the Gymnasium host backend.
`backend="gymnasium"` forces the original Gymnasium env for the gymnax twins.
"""

from __future__ import annotations

from protosac_jax.envs.names import BRAX_ENVS, GYMNAX_ENVS, EnvError

# The env classes import JAX: they load on first use (module __getattr__, PEP 562), so names
# resolve and bad flags fail without it.
_LAZY = {"EnvSpec": "protosac_jax.envs.base", "StepResult": "protosac_jax.envs.base",
         "GymnaxEnv": "protosac_jax.envs.gymnax_envs"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

# The original ProtoSAC's --environment indices.
ORIGINAL_INDICES = {
    0: "Pendulum-v1",
    1: "LunarLanderContinuous-v3",
    2: "MountainCarContinuous-v0",
    3: "HalfCheetah-v5",
    4: "Humanoid-v5",
    5: "Hopper-v5",
    6: "CarRacing-v3",
}

ALIASES = {
    "pendulum": "pendulum",
    "pendulum-v1": "pendulum",
    "mountaincar": "mountaincar",
    "mountaincarcontinuous": "mountaincar",
    "mountaincarcontinuous-v0": "mountaincar",
}

# brax's envs less "fast" (its test env), as help lists them
MJX_NAMES = tuple(name for name in BRAX_ENVS if name != "fast")
GYMNASIUM_IDS = ("LunarLanderContinuous-v3", "HalfCheetah-v5", "Humanoid-v5", "Hopper-v5",
                 "CarRacing-v3", "BipedalWalker-v3", "Walker2d-v5", "Ant-v5")
BACKENDS = ("auto", "gymnasium")

SUPPORTED = tuple(GYMNAX_ENVS)


def env_help() -> str:
    return ("pendulum (Pendulum-v1, gymnax), mountaincar (MountainCarContinuous-v0, gymnax); "
            "MJX locomotion via brax.envs: " + ", ".join(MJX_NAMES) + " (any brax env name); "
            "Gymnasium host envs: any id with a Box action space, e.g. "
            + ", ".join(GYMNASIUM_IDS))


def resolve_name(name: str, backend: str = "auto") -> str:
    """Canonical env name, or EnvError with a one-line reason."""
    if backend not in BACKENDS:
        raise EnvError(f"--backend must be auto or gymnasium (got {backend!r})")
    canonical = ALIASES.get(name.lower())
    if canonical is not None:
        return GYMNAX_ENVS[canonical][0] if backend == "gymnasium" else canonical
    if ":" in name:  # Gymnasium's convention for your own envs: "my_pkg.envs:MyEnv-v0"
        return _own_gym_id(name)
    if "-v" in name:
        from protosac_jax.envs.gym_envs import gym_ids

        if name not in gym_ids():
            close = [i for i in gym_ids() if i.lower() == name.lower()]
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise EnvError(f"unknown Gymnasium id {name!r}{hint}")
        return name
    if backend == "gymnasium":
        raise EnvError(f"--backend gymnasium needs a Gymnasium id (e.g. Hopper-v5), got {name!r}")
    if name.lower() in BRAX_ENVS:
        return name.lower()
    raise EnvError(f"unknown env {name!r}; available: {', '.join(SUPPORTED)} (gymnax), "
                   f"{', '.join(BRAX_ENVS)} (MJX), or a Gymnasium id such as Hopper-v5")


def _own_gym_id(name: str) -> str:
    """`module:EnvId`: import the module (which registers the id, as gymnasium.make does)
    and check the id; the whole string is the run's env name, so resume, load and viz.py
    import the module again."""
    from protosac_jax.envs import objects
    from protosac_jax.envs.gym_envs import gym_ids

    module, _, env_id = name.partition(":")
    if not module or not env_id:
        raise EnvError(f"--env {name!r}: expected MODULE:ENV_ID (e.g. my_pkg.envs:MyEnv-v0)")
    objects.import_module_of(name)
    if env_id in gym_ids():
        return name
    if objects.is_reference(name):  # a class, factory or instance in the module
        objects.kind(name)  # validates now: one line if it is not an env
        return name
    raise EnvError(f"--env {name}: importing {module} registered no Gymnasium id "
                   f"{env_id!r}")


def resolve_index(index: int, backend: str = "auto") -> str:
    if index not in ORIGINAL_INDICES:
        raise EnvError(f"--environment must be 0..6 (got {index})")
    return resolve_name(ORIGINAL_INDICES[index], backend)


# The exact Gymnasium ids of the gymnax twins: what `resolve_name(..., "gymnasium")` returns
# and what config.json stores for `--backend gymnasium` runs.
TWIN_IDS = tuple(gym_id for gym_id, _ in GYMNAX_ENVS.values())


def canonical_name(name: str) -> str:
    """Like `resolve_name(name)`, except that the exact twin ids ("Pendulum-v1") stay the
    Gymnasium env: they are the canonical names of `--backend gymnasium` runs."""
    return name if name in TWIN_IDS else resolve_name(name)


def object_kind(name: str) -> str | None:
    """gymnasium | gymnax | brax for a `MODULE:NAME` env object (envs/objects.py), else None
    (our names, Gymnasium ids, and `MODULE:ID` Gymnasium ids)."""
    from protosac_jax.envs import objects

    return objects.kind(name) if objects.is_object(name) else None


def is_gymnasium(name: str) -> bool:
    kind = object_kind(name) if ":" in name else None
    if kind is not None:
        return kind == "gymnasium"
    return "-v" in name and (name in TWIN_IDS or ALIASES.get(name.lower()) is None)


def make_env(name: str, frame_stack: int = 1, action_repeat: int = 1):
    """The env for a canonical name (from `resolve_name` or a config): a device env
    (gymnax/MJX) or a GymEnv. The exact twin ids ("Pendulum-v1") are the Gymnasium envs;
    the lower-case aliases ("pendulum", "pendulum-v1") the gymnax ones."""
    canonical = canonical_name(name)
    kind = object_kind(canonical) if ":" in canonical else None
    if kind is not None and kind != "gymnasium":
        if frame_stack != 1 or action_repeat != 1:
            raise EnvError("--frame-stack/--action-repeat apply to Gymnasium envs only")
        from protosac_jax.envs import objects

        return objects.make(canonical)
    if is_gymnasium(canonical):
        from protosac_jax.envs.gym_envs import GymEnv

        env = GymEnv(canonical, frame_stack, action_repeat)
        env.spec  # noqa: B018 - validates now: unknown extra, Discrete actions -> EnvError
        return env
    if frame_stack != 1 or action_repeat != 1:
        raise EnvError("--frame-stack/--action-repeat apply to Gymnasium envs only")
    if canonical in GYMNAX_ENVS:
        from protosac_jax.envs.gymnax_envs import GymnaxEnv

        return GymnaxEnv(canonical)
    from protosac_jax.envs.mjx_envs import MjxEnv

    return MjxEnv(canonical)


def make_env_for(cfg):
    """The env of a TrainConfig."""
    return make_env(cfg.env, cfg.frame_stack, cfg.action_repeat)


def is_mjx(name: str) -> bool:
    canonical = canonical_name(name)
    return canonical not in GYMNAX_ENVS and not is_gymnasium(canonical)


__all__ = ["EnvError", "EnvSpec", "StepResult", "make_env", "make_env_for", "resolve_name",
           "resolve_index",
           "ORIGINAL_INDICES", "env_help"]
