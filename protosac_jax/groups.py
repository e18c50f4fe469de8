"""Groups: many seeds and swept values trained by one compiled program.

`train.py --env pendulum --num-seeds 8` trains seeds S..S+7 (S = --seed) as one vmapped
program (loops.run_group_chunk); `--sweep actor_lr=1e-3,3e-4` adds one member per value (with
--num-seeds, per value and seed). Output:

  <out>/group.json   the members (directory, seed, swept values) and the sweep: --resume <out>
                     reads it and continues every member together
  <out>/<member>/    a complete run directory per member, `seed_<s>` or `<name>=<v>/seed_<s>`:
                     config.json with its own seed and values, metrics.jsonl, TensorBoard,
                     summary.json, ckpt/, prototypes.png. `load`, viz.py and `--resume` work on
                     it exactly as on a lone run (a resumed member trains on alone).
  <out>/seeds.json   each member's final and best eval; mean, std (ddof 1), min, max
  <out>/sweep.json   (--sweep) one row per value combination, aggregated over its seeds

Member s of a group uses the random streams of a lone `--seed s` run: its state is
`init_state(PRNGKey(s))` and every key is drawn from it as in the lone run, so the warm-up
actions are identical and the training differs from the lone run's only by float
reassociation in the batched matmuls. Device envs only (gymnax, MJX).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from protosac_jax import config as config_lib
from protosac_jax import envs, loops, outputs, trainer
from protosac_jax.config import ConfigError, TrainConfig

GROUP_FILE = "group.json"


@dataclasses.dataclass
class GroupResult:
    out: Path
    members: list[trainer.RunResult]
    summary: dict[str, Any]  # seeds.json

    @property
    def final_evals(self) -> list[float]:
        return [m.final_eval for m in self.members]


def use_host_cores(size: int) -> int:
    """Call before JAX starts its backend (train.py does, for groups): split the host CPU into
    min(cores, size) devices, a divisor of `size`, so the members train on every core at once
    (trainer._group_runner shards the member axis over them with shard_map; one XLA:CPU
    program keeps ~1 core busy). Measured on this 2-core VM, 8 Pendulum members: 1.93 -> 1.11 s
    per 500 iterations. An explicit --xla_force_host_platform_device_count is left alone, and
    accelerators are unaffected. Returns the host device count now asked for."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" in flags:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        (os.cpu_count() or 1)
    count = max(d for d in range(1, min(cores, size) + 1) if size % d == 0)
    if count > 1:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}"
    return count


def group_size(num_seeds: int | None, sweep: dict) -> int:
    return max(1, num_seeds or 1) * math.prod(len(v) for v in sweep.values())


def is_group(path) -> bool:
    return (Path(path) / GROUP_FILE).is_file()


def member_name(seed: int, values: dict[str, float]) -> str:
    return "/".join([f"{k}={v:g}" for k, v in values.items()] + [f"seed_{seed}"])


def member_configs(cfg: TrainConfig, num_seeds: int,
                   sweep: dict[str, tuple[float, ...]]) -> list[tuple[str, TrainConfig]]:
    """(directory name, config) of every member: each value combination x each seed."""
    if 0 in sweep.get("local_gain", ()):
        # every swept member carries the gains; a lone run with bound 0 has none, so a member
        # at 0 could not be loaded or resumed as the run its config.json describes
        raise ConfigError("--sweep local_gain: values must be > 0 (0 is a network without "
                          "gains: train it as a run or group of its own)")
    out = []
    for combo in itertools.product(*sweep.values()):
        values = dict(zip(sweep, combo))
        for seed in range(cfg.seed, cfg.seed + num_seeds):
            member = config_lib.with_values(dataclasses.replace(cfg, seed=seed), values)
            out.append((member_name(seed, values), member))
    return out


def default_group_dir(cfg: TrainConfig, num_seeds: int, root: str = "checkpoints") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    seeds = f"{cfg.seed}" if num_seeds == 1 else f"{cfg.seed}-{cfg.seed + num_seeds - 1}"
    return Path(root) / f"{cfg.env}-{cfg.algo}-seeds{seeds}-{stamp}"


def _values(configs: list[TrainConfig], names) -> dict[str, jax.Array]:
    return {name: jnp.asarray([config_lib.sweep_values(c, [name])[name] for c in configs],
                              jnp.float32) for name in names}


def _check_device_env(cfg: TrainConfig, env) -> None:
    if getattr(env, "on_host", False):
        raise ConfigError(f"--num-seeds/--sweep train device envs (gymnax, MJX); {cfg.env} "
                          "steps on the host (Gymnasium): run its seeds one by one")


def _members(out: Path, cfg: TrainConfig, named: list[tuple[str, TrainConfig]], env,
             sweep) -> list[trainer._Member]:
    """The members, each with the static Loop its grid and videos are drawn with: the group's
    config with the member's swept values (not its seed, which no compiled program reads),
    so members that share values share compiled programs."""
    loops_by_values: dict[tuple, loops.Loop] = {}
    members = []
    for name, member_cfg in named:
        values = config_lib.sweep_values(member_cfg, sweep)
        key = tuple(values.items())
        if key not in loops_by_values:
            loops_by_values[key] = trainer.make_loop(config_lib.with_values(cfg, values), env)
        members.append(trainer._Member(out / name, loops_by_values[key]))
    return members


def train_group(cfg: TrainConfig, num_seeds: int = 1, sweep=None, out=None,
                progress: bool = True, quiet: bool = False, env=None) -> GroupResult:
    """Train seeds cfg.seed .. cfg.seed + num_seeds - 1 (x every combination of the swept
    values, {field: (v1, v2, ...)}) as one program; see the module docstring. `env`: cfg.env
    already built (by the caller that needed its spec), else built here."""
    sweep = {config_lib.sweep_name(k): tuple(v) for k, v in (sweep or {}).items()}
    if not (isinstance(num_seeds, int) and num_seeds >= 1):
        raise ConfigError(f"--num-seeds must be an integer >= 1 (got {num_seeds!r})")
    config_lib.validate(cfg)
    if cfg.seed + num_seeds > 2**31:
        raise ConfigError(f"--seed {cfg.seed} + --num-seeds {num_seeds} passes 2^31")
    named = member_configs(cfg, num_seeds, sweep)
    for _, member_cfg in named:
        config_lib.validate(member_cfg)
    env = env if env is not None else envs.make_env_for(cfg)
    _check_device_env(cfg, env)
    out = Path(out) if out is not None else default_group_dir(cfg, num_seeds)
    trainer.check_writable_dir(out)
    trainer.enable_compilation_cache()
    loop = trainer.make_loop(cfg, env)
    members = _members(out, cfg, named, env, sweep)
    try:
        for m in members:
            m.run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--out {out}: {err.strerror}") from None
    outputs.write_text(out / GROUP_FILE, json.dumps({
        "num_seeds": num_seeds, "sweep": {k: list(v) for k, v in sweep.items()},
        "members": [{"dir": name, "seed": c.seed,
                     "values": config_lib.sweep_values(c, sweep)} for name, c in named],
        "config": config_lib.to_dict(cfg)}, indent=2))
    for m, (_, member_cfg) in zip(members, named):
        outputs.write_text(m.run_dir / "config.json", config_lib.to_json(member_cfg))
    values = _values([c for _, c in named], sweep)
    keys = jnp.stack([jax.random.PRNGKey(c.seed) for _, c in named])
    ts = loops.init_group_jit(loop, keys, values)
    results = trainer._run_members(loop, ts, members, progress and not quiet, quiet,
                                   refill=False, values=values, root=out)
    return _finish(out, results)


def read_group(out) -> dict[str, Any]:
    from protosac_jax.checkpoint import CheckpointError

    path = Path(out) / GROUP_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable group file ({err})") from None


def base_config(out) -> TrainConfig:
    return config_lib.from_dict(read_group(out)["config"])


def resume_group(out, progress: bool = True, quiet: bool = False, env=None,
                 **overrides) -> GroupResult:
    """Continue every member of a group together from the newest step all of them committed
    (`overrides`: config_lib.RESUMABLE_FIELDS only, as trainer.resume; `env`: the group's env
    if the caller built it already)."""
    from protosac_jax import checkpoint
    from protosac_jax.checkpoint import CheckpointError

    out = Path(out)
    group = read_group(out)
    bad = sorted(set(overrides) - set(config_lib.RESUMABLE_FIELDS))
    if bad:
        raise ConfigError(f"--resume keeps the run's config; cannot change {', '.join(bad)}")
    cfg = dataclasses.replace(config_lib.from_dict(group["config"]), **overrides)
    config_lib.validate(cfg)
    named = [(m["dir"], dataclasses.replace(checkpoint.read_config(out / m["dir"]),
                                            **overrides)) for m in group["members"]]
    env = env if env is not None else envs.make_env_for(cfg)
    _check_device_env(cfg, env)
    trainer.enable_compilation_cache()
    loop = trainer.make_loop(cfg, env)
    members = _members(out, cfg, named, env, group["sweep"])
    common = set.intersection(*[set(checkpoint.committed_steps(m.run_dir)) for m in members])
    if not common:
        raise CheckpointError(f"{out}: no checkpoint step that every member committed")
    failures = []
    for step in sorted(common, reverse=True):
        try:
            restored = [checkpoint.restore_train_state(m.run_dir, m.loop, step=step)
                        for m in members]
            break
        except CheckpointError as err:
            failures.append(f"step {step}: {err}")
    else:
        raise CheckpointError(f"{out}: no step every member can restore "
                              f"({'; '.join(failures)})")
    if failures:
        warnings.warn(f"skipped {'; '.join(failures)}; resuming the group from step {step}",
                      stacklevel=2)
    states = [ts for ts, _ in restored]
    if int(states[0].env_steps) >= cfg.total_steps:
        raise ConfigError(f"{out} already has {int(states[0].env_steps)} env steps; raise "
                          f"--total-steps above that to continue")
    ts = jax.tree_util.tree_map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *states)
    for m, (_, member_cfg) in zip(members, named):
        outputs.write_text(m.run_dir / "config.json", config_lib.to_json(member_cfg))
    values = _values([c for _, c in named], group["sweep"])
    refill = not all(meta.get("buffer_saved", True) for _, meta in restored)
    results = trainer._run_members(loop, ts, members, progress and not quiet, quiet,
                                   refill=refill, values=values, root=out)
    return _finish(out, results)


def _stats(xs: list[float]) -> dict[str, float]:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {"mean": float(np.mean(xs)), "std": float(np.std(xs, ddof=1)) if len(xs) > 1
            else 0.0, "min": float(np.min(xs)), "max": float(np.max(xs)), "n": len(xs)}


def _finish(out: Path, results: list[trainer.RunResult]) -> GroupResult:
    group = read_group(out)
    rows = []
    for info, result in zip(group["members"], results):
        rows.append({**info, "final_eval": result.final_eval, "best_eval": result.best_eval})
    summary = {"members": rows,
               "final_eval": _stats([r["final_eval"] for r in rows]),
               "best_eval": _stats([r["best_eval"] for r in rows])}
    writes = [(out / "seeds.json", summary)]
    if group["sweep"]:
        table = []
        for combo in itertools.product(*group["sweep"].values()):
            values = dict(zip(group["sweep"], combo))
            mine = [r for r in rows if r["values"] == values]
            table.append({"values": values, "seeds": [r["seed"] for r in mine],
                          "final_eval": _stats([r["final_eval"] for r in mine]),
                          "best_eval": _stats([r["best_eval"] for r in mine])})
        writes.append((out / "sweep.json", {"sweep": group["sweep"], "rows": table}))
    for path, data in writes:
        try:
            outputs.write_text(path, json.dumps(data, indent=2))
        except outputs.WriteError as err:
            raise outputs.WriteError(f"{err}; every member's final checkpoint is committed")
    return GroupResult(out=out, members=results, summary=summary)


__all__ = ["GroupResult", "train_group", "resume_group", "is_group", "member_configs",
           "GROUP_FILE"]
