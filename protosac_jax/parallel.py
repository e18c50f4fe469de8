"""Data parallelism over all local devices with `jax.sharding` (GSPMD).

With more than one device, the per-env arrays of the TrainState (env states, current obs,
exploration noise, running returns) and the replay buffer's rows are split over a 1-D mesh
axis "data"; parameters, optimizer states and counters are replicated. The same jitted chunk
then runs on all devices: each steps its own envs, inserts into its own buffer rows, and XLA
inserts the collectives for sampling and for the (global-batch) gradient, so the update is
mathematically the single-device update (equal up to float reassociation).

Multi-host: call `jax.distributed.initialize()` first (train.py --distributed); every host
runs the same command and the mesh spans all hosts' devices.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from protosac_jax.config import ConfigError, TrainConfig

AXIS = "data"


def check_divisible(cfg: TrainConfig, num_devices: int | None = None) -> None:
    n = num_devices or jax.device_count()
    if n <= 1:
        return
    if cfg.num_envs % n:
        raise ConfigError(f"--num-envs {cfg.num_envs} must be divisible by the {n} devices "
                          f"(try {max(n, cfg.num_envs // n * n)})")
    if cfg.buffer_size % n:
        raise ConfigError(f"--buffer-size {cfg.buffer_size} must be divisible by the {n} "
                          f"devices (try {cfg.buffer_size // n * n})")


def make_mesh() -> Mesh:
    return Mesh(np.asarray(jax.devices()), (AXIS,))


def state_shardings(ts, mesh: Mesh, num_envs: int):
    """Sharding of every TrainState leaf: per-env arrays and buffer rows split, rest replicated."""
    split, replicated = NamedSharding(mesh, P(AXIS)), NamedSharding(mesh, P())
    capacity = ts.buffer.capacity

    def per_env(x):
        return split if np.ndim(x) >= 1 and np.shape(x)[0] == num_envs else replicated

    def per_row(x):
        return split if np.ndim(x) >= 1 and np.shape(x)[0] == capacity else replicated

    return ts.replace(
        learner=jax.tree_util.tree_map(lambda _: replicated, ts.learner),
        buffer=ts.buffer.replace(
            data=jax.tree_util.tree_map(per_row, ts.buffer.data),
            insert_position=replicated, size=replicated),
        env_state=jax.tree_util.tree_map(per_env, ts.env_state),
        obs=per_env(ts.obs), noise=per_env(ts.noise), episode_return=per_env(ts.episode_return),
        provenance=jax.tree_util.tree_map(lambda _: replicated, ts.provenance),
        rng=replicated, env_steps=replicated, random_until=replicated, updates_start=replicated,
        update_credit=replicated)
