"""Seeds: learning checks over seeds, and the wall-clock of a seed group vs lone runs.

    # learning check: each actor's seeds trained as one group (train.py --num-seeds)
    .venv/bin/python benchmarks/seeds.py [--env pendulum] [--seeds 0 1 2] [--algo both]

    # wall-clock, whole process: N sequential `train.py --seed s` vs one `--num-seeds N`
    .venv/bin/python benchmarks/seeds.py --wallclock 8 [--env pendulum] [-- extra train.py flags]

The learning check prints one JSON line per run and a summary; the slow test
tests/test_learning.py runs the same check. The wall-clock mode first runs one lone and one
group command untimed (so both find their programs in the compilation cache), then times each
command as a subprocess, and appends a JSON line to benchmarks/results/seeds_wallclock.jsonl.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(env: str, seeds, baseline: bool, **overrides):
    """One group per actor: seeds must be consecutive (--seed S --num-seeds N)."""
    from protosac_jax import config as config_lib
    from protosac_jax import groups

    seeds = sorted(seeds)
    if seeds != list(range(seeds[0], seeds[0] + len(seeds))):
        raise SystemExit("--seeds must be consecutive (one group: --seed S --num-seeds N)")
    cfg = dataclasses.replace(config_lib.preset(env), seed=seeds[0], baseline=baseline,
                              log_tensorboard=False, **overrides)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = groups.train_group(cfg, len(seeds), out=f"{tmp}/group", progress=False,
                                    quiet=True)
    wall = time.perf_counter() - t0
    results = []
    for seed, member in zip(seeds, result.members):
        best = max(h["eval/return_mean"] for h in member.history)
        results.append({"env": env, "algo": cfg.algo, "seed": seed,
                        "final_eval": member.final_eval, "best_eval": best,
                        "env_steps": cfg.total_steps, "group_wall_s": wall})
        print(json.dumps(results[-1]), flush=True)
    return results


def _timed(argv, env=None) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *argv], cwd=ROOT,
                          capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"failed: {' '.join(argv)}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def wallclock(env: str, n: int, extra: list[str], one_device: bool) -> dict:
    base = ["--env", env, "--no-progress", *extra]
    environ = dict(os.environ)
    with tempfile.TemporaryDirectory() as tmp:
        _timed([*base, "--seed", "0", "--out", f"{tmp}/prime_lone"])
        _timed([*base, "--num-seeds", str(n), "--out", f"{tmp}/prime_group"])
        lone = [_timed([*base, "--seed", str(s), "--out", f"{tmp}/lone_{s}"])
                for s in range(n)]
        group = _timed([*base, "--num-seeds", str(n), "--out", f"{tmp}/group"])
        summary = json.loads((Path(tmp) / "group" / "seeds.json").read_text())
        lone_finals = [json.loads((Path(tmp) / f"lone_{s}" / "summary.json").read_text())[
            "final_eval"] for s in range(n)]
        row = {"env": env, "num_seeds": n, "extra_flags": extra,
               "lone_total_s": sum(lone), "lone_each_s": lone, "group_s": group,
               "speedup": sum(lone) / group,
               "group_final_evals": [m["final_eval"] for m in summary["members"]],
               "lone_final_evals": lone_finals}
        if one_device:
            environ["XLA_FLAGS"] = (environ.get("XLA_FLAGS", "")
                                    + " --xla_force_host_platform_device_count=1")
            _timed([*base, "--num-seeds", str(n), "--out", f"{tmp}/prime_one"], environ)
            row["group_one_device_s"] = _timed(
                [*base, "--num-seeds", str(n), "--out", f"{tmp}/group_one"], environ)
    row.update(machine=f"{platform.machine()}, {os.cpu_count()} cores",
               date=time.strftime("%Y-%m-%d"))
    return row


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--env", default="pendulum")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--algo", choices=["both", "protosac", "sac"], default="both")
    p.add_argument("--wallclock", type=int, metavar="N",
                   help="time N sequential lone runs vs one --num-seeds N run")
    p.add_argument("--one-device", action="store_true",
                   help="with --wallclock: also time the group on one CPU device")
    p.add_argument("--results", default=str(ROOT / "benchmarks/results/seeds_wallclock.jsonl"))
    args, extra = p.parse_known_args()
    extra = [x for x in extra if x != "--"]
    if args.wallclock:
        row = wallclock(args.env, args.wallclock, extra, args.one_device)
        print(json.dumps(row), flush=True)
        with open(args.results, "a") as f:
            f.write(json.dumps(row) + "\n")
        return
    from protosac_jax import groups

    groups.use_host_cores(len(args.seeds))  # before JAX starts, as train.py does for groups
    out = []
    if args.algo in ("both", "protosac"):
        out += run(args.env, args.seeds, baseline=False)
    if args.algo in ("both", "sac"):
        out += run(args.env, args.seeds, baseline=True)
    print(json.dumps({"summary": out}))


if __name__ == "__main__":
    main()
