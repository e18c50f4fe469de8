"""Side by side: Stable-Baselines3 SAC, SBX SAC, our SAC (--baseline) and our ProtoSAC.

    .venv/bin/python benchmarks/compare.py --quick            # Pendulum-v1, minutes, a table
    .venv/bin/python benchmarks/compare.py                    # the full comparison (~1 h, 2 cores)
    .venv/bin/python benchmarks/compare.py --envs Pendulum-v1 --seeds 0 1 2 --steps 10000
    .venv/bin/python benchmarks/compare.py --report benchmarks/results/compare.jsonl

Every run is its own subprocess (`--worker`), run one after another, so no two systems share
the cores and every system pays its own imports and compilation. All systems get the matched
settings of `MATCHED` (256x256 networks, batch 256, buffer = budget, the env's learning rate,
gamma, tau and learning starts, one env, one gradient step per env step) and the same
evaluation schedule (every `eval_every` env steps, `eval_episodes` deterministic episodes on a
separate env). Per run we record the learning curve (env steps, training wall-clock, eval
return, cumulative evaluation and checkpoint time) and: process wall-clock, training
wall-clock, env steps, gradient updates. Throughput, "same work": env steps per second of
training between the first evaluation one interval after learning starts and the last one,
evaluation and checkpoint time taken out (compilation and the cheap random warm-up are behind,
one update per env step: this is also updates/s); "whole run": all env steps / (training
wall-clock - evaluation - checkpoint time), compilation and warm-up included.

Output: one JSON line per run in `--out` (default benchmarks/results/compare.jsonl; a new run
replaces the lines of the same env/system/seed), a markdown table on stdout (and in
`--table`), and plots `benchmarks/plots/compare-<env>.png` (return vs env steps and vs
wall-clock, mean over seeds with a min-max band).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# Matched hyper-parameters per env (RL-zoo's SAC settings where they exist; 256x256, batch
# 256, 1 env, 1 gradient step per env step everywhere). `steps` is the full comparison's
# budget, chosen so everything fits in about an hour on 2 cores.
MATCHED = {
    "Pendulum-v1": dict(steps=10_000, learning_starts=1_000, lr=1e-3, gamma=0.99, tau=0.005,
                        eval_every=1_000, eval_episodes=5, seeds=(0, 1, 2)),
    "LunarLanderContinuous-v3": dict(steps=30_000, learning_starts=5_000, lr=7.3e-4,
                                     gamma=0.99, tau=0.01, eval_every=5_000, eval_episodes=3,
                                     seeds=(0,)),
    "Hopper-v5": dict(steps=30_000, learning_starts=5_000, lr=3e-4, gamma=0.99, tau=0.005,
                      eval_every=5_000, eval_episodes=3, seeds=(0,)),
}
QUICK = dict(steps=2_000, learning_starts=500, eval_every=500, eval_episodes=2, seeds=(0,))
HIDDEN = (256, 256)
BATCH = 256
SYSTEMS = ("sb3", "sbx", "ours-sac", "ours-protosac")
# Extra rows on Pendulum: our pure-JAX (gymnax) Pendulum, whole run in one jitted scan.
GYMNAX_SYSTEMS = ("ours-sac-gymnax", "ours-protosac-gymnax")
GYMNAX_TWIN = {"Pendulum-v1": "pendulum"}
LABELS = {"sb3": "SB3 SAC (torch)", "sbx": "SBX SAC (jax)", "ours-sac": "ours SAC",
          "ours-protosac": "ours ProtoSAC", "ours-sac-gymnax": "ours SAC, gymnax env",
          "ours-protosac-gymnax": "ours ProtoSAC, gymnax env"}


# ----------------------------------------------------------------------------- workers
def eval_seed(seed: int) -> int:
    """First eval seed of our HostRunner.evaluate (eval e, episode i: eval_seed + e + i)."""
    return seed * 1_000_003 + 999_983


def peer_returns(model, eval_env, seeds) -> list[float]:
    """Returns of deterministic episodes of an SB3/SBX `model`, one per reset seed."""
    returns = []
    for reset_seed in seeds:
        obs, _ = eval_env.reset(seed=reset_seed)
        done, total = False, 0.0
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, _ = eval_env.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return returns


def _peer_worker(system: str, env_id: str, seed: int, hp: dict) -> dict:
    """SB3 or SBX SAC with the matched settings; evaluation in a callback, timed apart."""
    import gymnasium as gym
    import numpy as np

    if system == "sb3":
        import torch
        from stable_baselines3 import SAC
        from stable_baselines3.common.callbacks import BaseCallback

        torch.set_num_threads(os.cpu_count() or 1)
        kwargs = dict(device="cpu")
    else:
        from sbx import SAC
        from stable_baselines3.common.callbacks import BaseCallback

        kwargs = {}
    t_start = time.perf_counter()
    env = gym.make(env_id)
    eval_env = gym.make(env_id)
    model = SAC("MlpPolicy", env, learning_rate=hp["lr"], buffer_size=hp["steps"],
                learning_starts=hp["learning_starts"], batch_size=BATCH, tau=hp["tau"],
                gamma=hp["gamma"], train_freq=1, gradient_steps=1,
                policy_kwargs=dict(net_arch=list(HIDDEN)), seed=seed, verbose=0, **kwargs)
    curve: list[dict] = []
    state = {"eval_s": 0.0, "evals": 0}

    def evaluate() -> float:
        t0 = time.perf_counter()
        state["evals"] += 1
        # the start states our HostRunner.evaluate draws: same seeds, same episodes
        returns = peer_returns(model, eval_env, [eval_seed(seed) + state["evals"] + episode
                                                 for episode in range(hp["eval_episodes"])])
        state["eval_s"] += time.perf_counter() - t0
        return float(np.mean(returns))

    class Every(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps % hp["eval_every"] == 0:
                ret = evaluate()
                curve.append({"env_steps": self.num_timesteps,
                              "wall_s": time.perf_counter() - t_learn, "return": ret,
                              "eval_s": state["eval_s"], "checkpoint_s": 0.0})
            return True

    t_learn = time.perf_counter()
    model.learn(total_timesteps=hp["steps"], callback=Every())
    train_wall = time.perf_counter() - t_learn
    updates = int(getattr(model, "_n_updates", 0))
    return {"train_wall_s": train_wall, "eval_s": state["eval_s"], "checkpoint_s": 0.0,
            "env_steps": int(model.num_timesteps), "updates": updates, "curve": curve,
            "setup_s": t_learn - t_start}


def _ours_worker(system: str, env_id: str, seed: int, hp: dict) -> dict:
    import protosac_jax
    from protosac_jax import config as config_lib

    env = GYMNAX_TWIN[env_id] if system.endswith("-gymnax") else env_id
    backend = "auto" if system.endswith("-gymnax") else "gymnasium"
    from protosac_jax import envs

    name = envs.resolve_name(env, backend)
    base = config_lib.preset(name)
    cfg = dataclasses.replace(
        base, env=name, seed=seed, baseline=system.startswith("ours-sac"), num_envs=1,
        total_steps=hp["steps"], buffer_size=hp["steps"],
        learning_starts=hp["learning_starts"], updates_per_step=1.0,
        eval_every=hp["eval_every"], eval_episodes=hp["eval_episodes"],
        save_every=10 * hp["steps"], log_tensorboard=False, save_buffer=False,
        sac=dataclasses.replace(base.sac, hidden_sizes=HIDDEN, batch_size=BATCH,
                                actor_lr=hp["lr"], critic_lr=hp["lr"], alpha_lr=hp["lr"],
                                gamma=hp["gamma"], tau=hp["tau"], normalize_obs=False))
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = protosac_jax.train(cfg, out=Path(tmp) / "run", progress=False, quiet=True)
    last = result.history[-1]
    curve = [{"env_steps": h["env_steps"], "wall_s": h["perf/wall_s"],
              "return": h["eval/return_mean"], "eval_s": h["perf/eval_s"],
              "checkpoint_s": h["perf/checkpoint_s"]} for h in result.history]
    return {"train_wall_s": last["perf/wall_s"], "eval_s": last["perf/eval_s"],
            "checkpoint_s": last["perf/checkpoint_s"], "env_steps": last["env_steps"],
            "updates": int(result.state.learner.num_updates), "curve": curve,
            "setup_s": time.perf_counter() - t_start - last["perf/wall_s"]}


def steady_rate(curve: list[dict], start: int) -> float | None:
    """Env steps/s between the first curve point at or past `start` (compilation and warm-up
    are behind) and the last, with evaluation and checkpoint time taken out. One gradient
    update per env step there, so this is also updates/s."""
    points = [p for p in curve if p["env_steps"] >= start]
    if len(points) < 2:
        return None
    a, b = points[0], points[-1]
    busy = (b["wall_s"] - a["wall_s"]) - (b["eval_s"] - a["eval_s"]) \
        - (b["checkpoint_s"] - a["checkpoint_s"])
    return (b["env_steps"] - a["env_steps"]) / busy


def worker(system: str, env_id: str, seed: int, hp: dict) -> dict:
    run = _peer_worker if system in ("sb3", "sbx") else _ours_worker
    record = run(system, env_id, seed, hp)
    work_s = record["train_wall_s"] - record["eval_s"] - record["checkpoint_s"]
    record.update(
        system=system, env=env_id, seed=seed, hp=hp,
        env_steps_per_s=record["env_steps"] / work_s,
        updates_per_s=record["updates"] / work_s,
        steady_env_steps_per_s=steady_rate(record["curve"],
                                           hp["learning_starts"] + hp["eval_every"]),
        final_return=record["curve"][-1]["return"] if record["curve"] else None)
    return record


# ----------------------------------------------------------------------------- driver
def versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("jax", "flax", "optax", "gymnasium", "torch", "stable_baselines3", "sbx-rl"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def run_one(system: str, env_id: str, seed: int, hp: dict, timeout: float) -> dict:
    """One run in a fresh process; adds the whole-process wall-clock."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", system, "--env-id", env_id,
         "--seed", str(seed), "--hp", json.dumps(hp)],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    wall = time.perf_counter() - t0
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{system} on {env_id} seed {seed} failed "
                           f"(exit {proc.returncode}): {proc.stderr.strip()[-800:]}")
    record = json.loads(lines[-1])
    record["process_wall_s"] = wall
    return record


def _stats(values):
    import numpy as np

    values = [v for v in values if v is not None]
    if not values:
        return float("nan"), float("nan")
    return float(np.mean(values)), float(np.std(values))


def summarize(records: list[dict]) -> list[dict]:
    """One row per (env, system): means over seeds and ratios against SB3 and SBX of the same
    env (ratio > 1: faster than the peer; same-work throughput and whole-process wall)."""
    rows = []
    envs = list(dict.fromkeys(r["env"] for r in records))
    for env in envs:
        by_system: dict[str, list[dict]] = {}
        for r in records:
            if r["env"] == env:
                by_system.setdefault(r["system"], []).append(r)
        means = {s: _stats([r.get("steady_env_steps_per_s") for r in rs])[0]
                 for s, rs in by_system.items()}
        walls = {s: _stats([r["process_wall_s"] for r in rs])[0] for s, rs in by_system.items()}
        order = [s for s in SYSTEMS + GYMNAX_SYSTEMS if s in by_system]
        for system in order:
            rs = by_system[system]
            ret, ret_std = _stats([r["final_return"] for r in rs])
            row = {"env": env, "system": system, "seeds": len(rs),
                   "env_steps": rs[0]["env_steps"], "updates": _stats(
                       [r["updates"] for r in rs])[0],
                   "steady_env_steps_per_s": means[system],
                   "env_steps_per_s": _stats([r["env_steps_per_s"] for r in rs])[0],
                   "updates_per_s": _stats([r["updates_per_s"] for r in rs])[0],
                   "process_wall_s": walls[system],
                   "final_return": ret, "final_return_std": ret_std}
            for peer in ("sb3", "sbx"):
                row[f"speed_vs_{peer}"] = (means[system] / means[peer]) if peer in means \
                    else None
                row[f"wall_vs_{peer}"] = (walls[peer] / walls[system]) if peer in walls \
                    else None
            rows.append(row)
    return rows


def _fmt(x, digits=1, suffix=""):
    if x is None or x != x:
        return "–"
    return f"{x:.{digits}f}{suffix}"


def markdown_table(rows: list[dict]) -> str:
    head = ("| env | system | seeds | env steps | env-steps/s, steady (same work) | "
            "vs SB3 | vs SBX | env-steps/s, whole run | process wall s | wall vs SB3 | "
            "wall vs SBX | final return |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['env']} | {LABELS.get(r['system'], r['system'])} | {r['seeds']} | "
            f"{r['env_steps']} | {_fmt(r['steady_env_steps_per_s'])} | "
            f"{_fmt(r['speed_vs_sb3'], 2, 'x')} | {_fmt(r['speed_vs_sbx'], 2, 'x')} | "
            f"{_fmt(r['env_steps_per_s'])} | "
            f"{_fmt(r['process_wall_s'])} | {_fmt(r['wall_vs_sb3'], 2, 'x')} | "
            f"{_fmt(r['wall_vs_sbx'], 2, 'x')} | "
            f"{_fmt(r['final_return'])} ± {_fmt(r['final_return_std'])} |")
    return "\n".join(lines)


def plot(records: list[dict], out_dir: Path) -> list[Path]:
    """Per env: return vs env steps and vs training wall-clock, mean over seeds with a
    min-max band (curves interpolated onto a common grid)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for env in dict.fromkeys(r["env"] for r in records):
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        for system in SYSTEMS + GYMNAX_SYSTEMS:
            runs = [r for r in records if r["env"] == env and r["system"] == system
                    and r["curve"]]
            if not runs:
                continue
            for ax, key in zip(axes, ("env_steps", "wall_s")):
                top = min(max(p[key] for p in r["curve"]) for r in runs)
                grid = np.linspace(min(r["curve"][0][key] for r in runs), top, 50)
                ys = np.stack([np.interp(grid, [p[key] for p in r["curve"]],
                                         [p["return"] for p in r["curve"]]) for r in runs])
                line, = ax.plot(grid, ys.mean(0), label=LABELS.get(system, system))
                if len(runs) > 1:
                    ax.fill_between(grid, ys.min(0), ys.max(0), color=line.get_color(),
                                    alpha=0.2)
        axes[0].set_xlabel("env steps")
        axes[1].set_xlabel("training wall-clock (s)")
        for ax in axes:
            ax.set_ylabel("deterministic eval return")
            ax.grid(alpha=0.3)
        axes[1].legend(fontsize=7)
        fig.suptitle(f"{env}: {len({r['seed'] for r in records if r['env'] == env})} seed(s),"
                     " mean and min-max", fontsize=10)
        fig.tight_layout()
        path = out_dir / f"compare-{env}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def _merge(path: Path, new: list[dict]) -> list[dict]:
    """Existing records of `path` with those of the same (env, system, seed) replaced."""
    old = []
    if path.is_file():
        old = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    keys = {(r["env"], r["system"], r["seed"]) for r in new}
    return [r for r in old if (r["env"], r["system"], r["seed"]) not in keys] + new


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="Pendulum-v1, 2000 steps, one seed: a few minutes")
    p.add_argument("--envs", nargs="+", choices=list(MATCHED))
    p.add_argument("--systems", nargs="+", choices=SYSTEMS + GYMNAX_SYSTEMS)
    p.add_argument("--seeds", type=int, nargs="+")
    p.add_argument("--steps", type=int, help="env steps per run (overrides the env's budget)")
    p.add_argument("--out", default=str(HERE / "results" / "compare.jsonl"))
    p.add_argument("--plots", default=str(HERE / "plots"))
    p.add_argument("--table", help="also write the markdown table to this file")
    p.add_argument("--report", help="only tabulate and plot an existing JSONL file")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per run")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--env-id", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    p.add_argument("--hp", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args.worker, args.env_id, args.seed, json.loads(args.hp))))
        return 0
    if args.report:
        records = [json.loads(line) for line in Path(args.report).read_text().splitlines()
                   if line.strip()]
    else:
        envs = args.envs or (["Pendulum-v1"] if args.quick else list(MATCHED))
        started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        new = []
        for env_id in envs:
            hp = dict(MATCHED[env_id])
            if args.quick:
                hp.update(QUICK)
            if args.steps:
                hp["steps"] = args.steps
            seeds = args.seeds or hp.pop("seeds")
            hp.pop("seeds", None)
            systems = args.systems or (SYSTEMS + (GYMNAX_SYSTEMS if env_id in GYMNAX_TWIN
                                                  else ()))
            for seed in seeds:
                for system in systems:
                    if system in GYMNAX_SYSTEMS and env_id not in GYMNAX_TWIN:
                        continue
                    record = run_one(system, env_id, seed, hp, args.timeout)
                    record.update(started=started, machine=platform.machine(),
                                  cpus=os.cpu_count(), versions=versions(),
                                  command=" ".join([Path(sys.argv[0]).name] + sys.argv[1:]))
                    new.append(record)
                    print(f"{env_id} {system} seed {seed}: "
                          f"{record['env_steps_per_s']:.0f} env-steps/s (same work), "
                          f"process {record['process_wall_s']:.1f} s, final return "
                          f"{record['final_return']:.1f}", flush=True)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        records = _merge(out, new) if not args.quick else new
        if not args.quick:
            out.write_text("".join(json.dumps(r) + "\n" for r in records))
    table = markdown_table(summarize(records))
    print(table)
    if args.table:
        Path(args.table).write_text(table + "\n")
    if not args.quick:
        for path in plot(records, Path(args.plots)):
            print(f"plot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
