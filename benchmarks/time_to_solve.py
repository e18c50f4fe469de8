"""Time to solve Pendulum: whole-process wall-clock from launching the command to the first
deterministic evaluation with return >= -200, ours (train.py, gymnax Pendulum preset) vs SBX
SAC with its defaults on Gymnasium Pendulum-v1.

    .venv/bin/python benchmarks/time_to_solve.py [--seeds 0 1 2] [--ours-args "..."]

Each run is a fresh process, timed from `Popen` until the solving evaluation is visible (ours:
the line in metrics.jsonl; SBX: a line its callback prints), then killed. Cold: an empty JAX
compilation cache; warm: the cache the cold run filled (SBX gets the same treatment through
JAX_COMPILATION_CACHE_DIR, which jax reads; its defaults do not set one). Median over seeds.
SBX evaluates every 1000 env steps with 10 deterministic episodes, like our preset.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THRESHOLD = -200.0


def sbx_solver(seed: int, budget: int = 50_000) -> None:
    """SBX SAC with its defaults on Pendulum-v1; prints `EVAL <steps> <mean return>` every
    1000 env steps (10 deterministic episodes) and stops once the return reaches THRESHOLD."""
    import gymnasium as gym
    import numpy as np
    from sbx import SAC
    from stable_baselines3.common.callbacks import BaseCallback

    from compare import peer_returns

    env, eval_env = gym.make("Pendulum-v1"), gym.make("Pendulum-v1")
    model = SAC("MlpPolicy", env, seed=seed, verbose=0)  # SBX defaults

    class Solve(BaseCallback):
        def _on_step(self):
            if self.num_timesteps % 1000:
                return True
            ret = float(np.mean(peer_returns(model, eval_env,
                                             [1000 * seed + ep for ep in range(10)])))
            print(f"EVAL {self.num_timesteps} {ret}", flush=True)
            return ret < THRESHOLD

    model.learn(budget, callback=Solve())


def _wait_ours(proc, metrics: Path, t0: float, timeout: float):
    seen = 0
    while time.perf_counter() - t0 < timeout:
        if metrics.is_file():
            lines = metrics.read_text().splitlines()
            for line in lines[seen:]:
                d = json.loads(line)
                r = d.get("eval/return_mean")
                if d.get("charts/warmup", 0) < 1 and r is not None and r >= THRESHOLD:
                    return time.perf_counter() - t0, d["env_steps"], r
            seen = len(lines)
        if proc.poll() is not None:
            return None, None, None
        time.sleep(0.02)
    return None, None, None


def _wait_sbx(proc, t0: float):
    for line in proc.stdout:
        if line.startswith("EVAL"):
            _, steps, ret = line.split()
            if float(ret) >= THRESHOLD:
                return time.perf_counter() - t0, int(steps), float(ret)
    return None, None, None


def run(system: str, seed: int, cache: Path, ours_args: list[str], timeout: float) -> dict:
    env = {**os.environ, "PROTOSAC_JAX_CACHE": str(cache),
           "JAX_COMPILATION_CACHE_DIR": str(cache)}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        if system == "sbx":
            proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()),
                                     "--sbx-worker", str(seed)], stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, text=True, env=env, cwd=tmp)
            wall, steps, ret = _wait_sbx(proc, t0)
        else:
            out = Path(tmp) / "run"
            cmd = [sys.executable, str(ROOT / "train.py"), "--env", "pendulum", "--seed",
                   str(seed), "--out", str(out), "--no-progress", "--total-steps", "50000",
                   *ours_args] + (["--baseline"] if system == "ours-sac" else [])
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    env=env, cwd=ROOT)
            wall, steps, ret = _wait_ours(proc, out / "metrics.jsonl", t0, timeout)
        proc.kill()
        proc.wait()
    return {"system": system, "seed": seed, "wall_s": wall, "env_steps": steps, "return": ret}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--systems", nargs="+", default=["ours-protosac", "ours-sac", "sbx"])
    p.add_argument("--ours-args", default="", help="extra train.py flags (our preset)")
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--sbx-worker", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.sbx_worker is not None:
        sbx_solver(args.sbx_worker)
        return 0
    ours_args = shlex.split(args.ours_args)
    results = []
    for system in args.systems:
        for seed in args.seeds:
            with tempfile.TemporaryDirectory() as cache:
                for cache_state in ("cold", "warm"):
                    r = run(system, seed, Path(cache), ours_args, args.timeout)
                    r["cache"] = cache_state
                    results.append(r)
                    print(json.dumps(r), flush=True)
    print("| system | cache | median s to eval >= -200 | per seed (s @ env steps) |")
    print("|---|---|---|---|")
    for system in args.systems:
        for cache_state in ("cold", "warm"):
            rs = [r for r in results if r["system"] == system and r["cache"] == cache_state]
            walls = [r["wall_s"] for r in rs if r["wall_s"] is not None]
            med = f"{statistics.median(walls):.1f}" if len(walls) == len(rs) else "not solved"
            per = ", ".join(f"{r['wall_s']:.1f} @ {r['env_steps']}" if r["wall_s"] else "–"
                            for r in rs)
            print(f"| {system} | {cache_state} | {med} | {per} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
