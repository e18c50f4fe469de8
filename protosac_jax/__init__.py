"""protosac-jax: ProtoSAC (prototype-based Soft Actor-Critic) in JAX."""

import os as _os
import sys as _sys

# Headless MuJoCo rendering (prototype tiles, videos) on Linux: EGL unless the user chose a
# backend or has a display. Must be set before mujoco is first imported.
if (_sys.platform.startswith("linux") and "MUJOCO_GL" not in _os.environ
        and not _os.environ.get("DISPLAY")):
    _os.environ["MUJOCO_GL"] = "egl"

from protosac_jax.config import ConfigError, PrototypeConfig, SACConfig, TrainConfig, preset
from protosac_jax.envs import EnvError, make_env

__version__ = "0.1.0"


def train(cfg: TrainConfig | None = None, out=None, progress: bool = True, quiet: bool = False,
          env=None):
    """Train a run (see protosac_jax.trainer.train).

    `env` (optional) replaces `cfg.env`: an env name or Gymnasium id, `"MODULE:NAME"`, or
    your own env's class, zero-argument factory or module-level instance (a Gymnasium env
    class/factory, a gymnax-style or a brax-style env; see protosac_jax.envs.objects). The run
    records it as `MODULE:NAME`, so resume, load and viz.py rebuild it. Without `cfg` the
    env's preset is used."""
    from protosac_jax.trainer import train as _train

    cfg, built = _config_for(cfg, env)
    return _train(cfg, out=out, progress=progress, quiet=quiet, env=built)


def _config_for(cfg: TrainConfig | None, env):
    """train()'s config and, where it had to build the env to choose it, that env: the env's
    preset when `cfg` is None, fitted to its observations as train.py fits it (a preset's
    CrossQ is dropped on pixels; one asked for in `cfg` is refused later)."""
    import dataclasses

    if env is None:
        if cfg is None:
            raise ConfigError("train() needs a TrainConfig or an env")
        return cfg, None
    from protosac_jax import envs
    from protosac_jax.config import fit_env
    from protosac_jax.envs import objects

    name = envs.resolve_name(objects.reference_of(env))
    if cfg is not None:
        return dataclasses.replace(cfg, env=name), None
    cfg = preset(name)
    built = envs.make_env_for(cfg)
    return fit_env(cfg, built.spec.obs_shape, crossq_given=False), built


def load(path, step=None, best: bool = False):
    """Load a run directory (or one checkpoint step) as an Agent (see protosac_jax.agent)."""
    from protosac_jax.agent import load as _load

    return _load(path, step=step, best=best)


def train_group(cfg: TrainConfig, num_seeds: int = 1, sweep=None, out=None,
                progress: bool = True, quiet: bool = False):
    """Train seeds cfg.seed.. (x swept values) as one program (see protosac_jax.groups)."""
    from protosac_jax.groups import train_group as _train_group

    return _train_group(cfg, num_seeds, sweep, out=out, progress=progress, quiet=quiet)


def resume(run_dir, progress: bool = True, quiet: bool = False, **overrides):
    """Continue a run (or a group: every member) from its newest good checkpoint (see
    protosac_jax.trainer.resume, protosac_jax.groups.resume_group)."""
    from protosac_jax import groups
    from protosac_jax.trainer import resume as _resume

    if groups.is_group(run_dir):
        return groups.resume_group(run_dir, progress=progress, quiet=quiet, **overrides)
    return _resume(run_dir, progress=progress, quiet=quiet, **overrides)


__all__ = ["ConfigError", "EnvError", "PrototypeConfig", "SACConfig", "TrainConfig", "preset",
           "make_env", "train", "train_group", "load", "resume", "__version__"]
