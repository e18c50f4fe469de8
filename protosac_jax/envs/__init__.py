"""Env registry: names, aliases and the original's `--environment 0..6` indices."""

from __future__ import annotations

from protosac_jax.envs.base import EnvError, EnvSpec, StepResult
from protosac_jax.envs.gymnax_envs import GYMNAX_ENVS, GymnaxEnv

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

MJX_NAMES = ("ant", "halfcheetah", "hopper", "humanoid", "humanoidstandup", "inverted_pendulum",
             "inverted_double_pendulum", "pusher", "reacher", "swimmer", "walker2d")
GYMNASIUM_IDS = ("LunarLanderContinuous-v3", "HalfCheetah-v5", "Humanoid-v5", "Hopper-v5",
                 "CarRacing-v3", "BipedalWalker-v3", "Walker2d-v5", "Ant-v5")

SUPPORTED = tuple(GYMNAX_ENVS)


def env_help() -> str:
    return ("pendulum (Pendulum-v1, gymnax), mountaincar (MountainCarContinuous-v0, gymnax); "
            "MJX locomotion via brax.envs: " + ", ".join(MJX_NAMES) + " (any brax env name); "
            "coming: Gymnasium ids (" + ", ".join(GYMNASIUM_IDS) + ")")


def resolve_name(name: str) -> str:
    """Canonical env name, or EnvError with a one-line reason."""
    canonical = ALIASES.get(name.lower())
    if canonical is not None:
        return canonical
    if name.lower() in MJX_NAMES:
        return name.lower()
    if "-v" in name:
        raise EnvError(f"env {name!r} needs the Gymnasium host backend, which is not built yet "
                       "(issue #5: Gymnasium host envs)")
    from protosac_jax.envs.mjx_envs import brax_env_names  # other brax envs pass through

    if name in brax_env_names():
        return name
    raise EnvError(f"unknown env {name!r}; available: {', '.join(SUPPORTED)} (gymnax), "
                   f"{', '.join(brax_env_names())} (MJX)")


def resolve_index(index: int) -> str:
    if index not in ORIGINAL_INDICES:
        raise EnvError(f"--environment must be 0..6 (got {index})")
    return resolve_name(ORIGINAL_INDICES[index])


def make_env(name: str):
    """The device env for a (possibly aliased) name."""
    canonical = resolve_name(name)
    if canonical in GYMNAX_ENVS:
        return GymnaxEnv(canonical)
    from protosac_jax.envs.mjx_envs import MjxEnv

    return MjxEnv(canonical)


def is_mjx(name: str) -> bool:
    return resolve_name(name) not in GYMNAX_ENVS


__all__ = ["EnvError", "EnvSpec", "StepResult", "make_env", "resolve_name", "resolve_index",
           "ORIGINAL_INDICES", "env_help"]
