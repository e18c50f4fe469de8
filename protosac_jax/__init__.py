"""protosac-jax: ProtoSAC (prototype-based Soft Actor-Critic) in JAX."""

from protosac_jax.config import ConfigError, PrototypeConfig, SACConfig, TrainConfig, preset
from protosac_jax.envs import EnvError, make_env

__version__ = "0.1.0"


def train(cfg: TrainConfig, out=None, progress: bool = True, quiet: bool = False):
    """Train a run (see protosac_jax.trainer.train)."""
    from protosac_jax.trainer import train as _train

    return _train(cfg, out=out, progress=progress, quiet=quiet)


def load(path):
    """Load a finished run directory as an Agent (see protosac_jax.agent)."""
    from protosac_jax.agent import load as _load

    return _load(path)


__all__ = ["ConfigError", "EnvError", "PrototypeConfig", "SACConfig", "TrainConfig", "preset",
           "make_env", "train", "load", "__version__"]
