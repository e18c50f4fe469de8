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

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from protosac_jax.config import ConfigError, TrainConfig

AXIS = "data"


def init_distributed() -> None:
    """`jax.distributed.initialize()` for train.py --distributed. Cluster environments that JAX
    detects (SLURM, Cloud TPU, Open MPI, Kubernetes) need nothing; elsewhere set
    JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES and JAX_PROCESS_ID
    (JAX itself reads only the first). Failures become one ConfigError line."""
    kwargs = {}
    for var, key in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")):
        value = os.environ.get(var)
        if value:
            try:
                kwargs[key] = int(value)
            except ValueError:
                raise ConfigError(f"--distributed: ${var} must be an integer (got "
                                  f"{value!r})") from None
    if len(kwargs) == 1:
        raise ConfigError("--distributed: set both $JAX_NUM_PROCESSES and $JAX_PROCESS_ID "
                          "(or neither, on a cluster JAX detects)")
    if kwargs and not 0 <= kwargs["process_id"] < kwargs["num_processes"]:
        last = kwargs["num_processes"] - 1
        raise ConfigError(f"--distributed: $JAX_PROCESS_ID must be in 0..{last} (got "
                          f"{kwargs['process_id']})")
    try:
        jax.distributed.initialize(**kwargs)
    except (ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"--distributed: {first}") from None


def is_primary() -> bool:
    """The process that writes a run's host-side files (process 0; always, on one process)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait for every process (multi-process runs only; a no-op on one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def check_multiprocess(env) -> None:
    """Multi-process runs train one device env program; host-stepped envs cannot join it."""
    if jax.process_count() > 1 and getattr(env, "on_host", False):
        raise ConfigError(f"--distributed: {env.spec.env_id} steps on the host (Gymnasium); "
                          "multi-process runs need a gymnax or MJX env")


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
