"""Foundation learning checks: an env preset (default pendulum: 10k env steps), 3 seeds, both actors.

    .venv/bin/python benchmarks/seeds.py [--seeds 0 1 2] [--env pendulum]

Prints one line per run and a JSON summary; the slow test `tests/test_learning.py` runs the
same check.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time

import protosac_jax
from protosac_jax import config as config_lib


def run(env: str, seeds, baseline: bool, **overrides):
    results = []
    for seed in seeds:
        cfg = dataclasses.replace(config_lib.preset(env), seed=seed, baseline=baseline,
                                  log_tensorboard=False, **overrides)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            result = protosac_jax.train(cfg, out=f"{tmp}/run", progress=False, quiet=True)
        best = max(h["eval/return_mean"] for h in result.history)
        results.append({"env": env, "algo": cfg.algo, "seed": seed,
                        "final_eval": result.final_eval, "best_eval": best,
                        "env_steps": cfg.total_steps, "wall_s": time.perf_counter() - t0})
        print(json.dumps(results[-1]), flush=True)
    return results


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--env", default="pendulum")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--algo", choices=["both", "protosac", "sac"], default="both")
    args = p.parse_args()
    out = []
    if args.algo in ("both", "protosac"):
        out += run(args.env, args.seeds, baseline=False)
    if args.algo in ("both", "sac"):
        out += run(args.env, args.seeds, baseline=True)
    print(json.dumps({"summary": out}))


if __name__ == "__main__":
    main()
