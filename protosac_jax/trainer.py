"""Host driver: runs the jitted chunks, logs, writes the run directory.

Run directory (default `checkpoints/<env>-<algo>-<seed>-<timestamp>/`):
  config.json        the TrainConfig (read back by `load`)
  metrics.jsonl      one line per chunk, `group/name` metric keys
  events.out.*       TensorBoard (tensorboardX)
  final/             params.msgpack (flax serialization), provenance.npz, meta.json
  prototypes.png     the prototype grid (ProtoSAC on envs we can draw)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from protosac_jax import config as config_lib
from protosac_jax import envs, loops
from protosac_jax.config import ConfigError, TrainConfig


def enable_compilation_cache(path: str | None = None) -> str:
    """Turn on JAX's persistent compilation cache (cold start ~17 s -> ~5 s, DESIGN.md).

    Location: `path`, else $PROTOSAC_JAX_CACHE, else $XDG_CACHE_HOME/protosac_jax/xla.
    """
    if path is None:
        path = os.environ.get("PROTOSAC_JAX_CACHE")
    if path is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = os.path.join(base, "protosac_jax", "xla")
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return path


def default_run_dir(cfg: TrainConfig, root: str = "checkpoints") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{cfg.env}-{cfg.algo}-{cfg.seed}-{stamp}"


def check_writable_dir(path: Path) -> None:
    """ConfigError unless `path` is (or can be created as) a writable directory.

    Creates nothing: called before any output is written.
    """
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"--out {path} exists and is not a directory")
        if any(path.iterdir()):
            raise ConfigError(f"--out {path} is not empty; refusing to overwrite a run")
        if not os.access(path, os.W_OK):
            raise ConfigError(f"--out {path} is not writable")
        return
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"--out {path}: {parent} is not a directory")
    # os.access says yes to root everywhere; only trying tells (the probe is removed at once).
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".protosac-probe-", dir=parent))
    except OSError as err:
        raise ConfigError(f"--out {path}: cannot write in {parent} ({err.strerror})") from None


@dataclasses.dataclass
class RunResult:
    run_dir: Path
    final_eval: float
    history: list[dict[str, Any]]
    state: Any  # final loops.TrainState


def _to_python(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        value = float(np.asarray(value))
        out[key] = None if math.isnan(value) else value
    return out


class _Logger:
    def __init__(self, run_dir: Path, tensorboard: bool):
        self.jsonl = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")
        self.writer = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(str(run_dir))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        self.jsonl.write(json.dumps({"env_steps": step, **metrics}) + "\n")
        self.jsonl.flush()
        if self.writer is not None:
            for key, value in metrics.items():
                if value is not None:
                    self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.jsonl.close()
        if self.writer is not None:
            self.writer.close()


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="step", disable=not enabled, dynamic_ncols=True,
                mininterval=0.5)


def train(cfg: TrainConfig, out: str | os.PathLike | None = None, progress: bool = True,
          quiet: bool = False) -> RunResult:
    """Train one run; returns its directory, final deterministic eval return and history."""
    config_lib.validate(cfg)
    env = envs.make_env(cfg.env)
    run_dir = Path(out) if out is not None else default_run_dir(cfg)
    check_writable_dir(run_dir)
    enable_compilation_cache()

    spec = env.spec
    loop = loops.Loop(env=env, actor=loops.make_actor(cfg, spec.action_dim), cfg=cfg)
    chunks = loops.schedule(cfg)

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--out {run_dir}: {err.strerror}") from None
    (run_dir / "config.json").write_text(config_lib.to_json(cfg))
    logger = _Logger(run_dir, cfg.log_tensorboard)
    history: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    ts = loops.init_state_jit(loop, jax.random.PRNGKey(cfg.seed))
    bar = _progress(sum(n for n, _ in chunks) * cfg.num_envs, progress and not quiet)
    env_steps = updates = 0
    first_chunk_s = None
    try:
        for iterations, warmup in chunks:
            t0 = time.perf_counter()
            ts, metrics = loops.run_chunk_jit(loop, ts, iterations, warmup)
            metrics = _to_python(jax.device_get(metrics))
            elapsed = time.perf_counter() - t0
            if first_chunk_s is None:
                first_chunk_s = time.perf_counter() - t_start
            steps = iterations * cfg.num_envs
            new_updates = int(metrics["charts/updates"]) - updates
            env_steps += steps
            updates += new_updates
            metrics["perf/env_steps_per_s"] = steps / elapsed
            metrics["perf/updates_per_s"] = new_updates / elapsed
            metrics["perf/wall_s"] = time.perf_counter() - t_start
            metrics["charts/warmup"] = float(warmup)
            history.append({"env_steps": env_steps, **metrics})
            logger.log(env_steps, metrics)
            bar.update(steps)
            bar.set_postfix({
                "eval": f"{metrics['eval/return_mean']:.1f}",
                "sps": f"{metrics['perf/env_steps_per_s']:.0f}",
                "ups": f"{metrics['perf/updates_per_s']:.0f}",
                "alpha": f"{metrics.get('charts/alpha', float('nan')):.3f}",
            })
    finally:
        bar.close()
        logger.close()
    final_eval = history[-1]["eval/return_mean"]
    from protosac_jax import checkpoint

    checkpoint.save_final(run_dir, loop, ts, {
        "env_steps": env_steps, "updates": updates, "final_eval": final_eval,
        "wall_s": time.perf_counter() - t_start, "time_to_first_chunk_s": first_chunk_s,
    })
    if loop.is_proto:
        try:
            from protosac_jax import render

            render.save_prototype_grid(run_dir / "prototypes.png", loop, ts)
        except render.RenderUnavailable as err:  # an env we cannot draw yet
            if not quiet:
                print(f"note: no prototype grid ({err})")
    return RunResult(run_dir=run_dir, final_eval=final_eval, history=history, state=ts)
