"""Env-steps/s and updates/s of the device loop for MJX envs at several --num-envs,
baseline SAC vs ProtoSAC, in one run.

    .venv/bin/python benchmarks/throughput.py [--envs hopper humanoid] [--num-envs 16 128 1024]

For each (env, num_envs, actor): one compile of the loop body (`loops.iteration` scanned, no
evaluation), then two timed scans of the same program: random-action collection only
("env only") and collection + updates at the preset's UTD ("learning"). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import platform
import time

import jax
import jax.numpy as jnp

from protosac_jax import config as config_lib
from protosac_jax import loops
from protosac_jax.envs import make_env
from protosac_jax.trainer import enable_compilation_cache


def measure(env_name: str, num_envs: int, baseline: bool, steps: int, buffer_size: int):
    cfg = dataclasses.replace(config_lib.preset(env_name), num_envs=num_envs,
                              baseline=baseline, buffer_size=buffer_size,
                              learning_starts=10**9)
    loop = loops.Loop(make_env(env_name), loops.make_actor(cfg, make_env(env_name).spec
                                                          .action_dim), cfg)
    iterations = max(4, steps // num_envs)
    def body(carry, _):
        return loops.iteration(loop, carry), None

    scan = jax.jit(lambda ts: jax.lax.scan(body, (ts, loops.empty_totals(loop, ts)), None,
                                           length=iterations)[0][0], donate_argnums=(0,))
    t0 = time.perf_counter()
    ts = loops.init_state_jit(loop, jax.random.PRNGKey(0))
    ts = jax.block_until_ready(scan(ts))  # compile + fill the buffer a little
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ts = jax.block_until_ready(scan(ts))
    env_only = iterations * num_envs / (time.perf_counter() - t0)
    ts = ts.replace(updates_start=jnp.zeros((), jnp.int32))  # same program, now updating
    updates0 = int(ts.learner.num_updates)
    t0 = time.perf_counter()
    ts = jax.block_until_ready(scan(ts))
    elapsed = time.perf_counter() - t0
    updates = int(ts.learner.num_updates) - updates0
    return {"compile_s": compile_s, "env_only": env_only,
            "learning_steps": iterations * num_envs / elapsed, "updates": updates / elapsed,
            "utd": loop.update_fraction[0] / loop.update_fraction[1] / num_envs,
            "batch": cfg.sac.batch_size}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--envs", nargs="+", default=["hopper", "humanoid"])
    p.add_argument("--num-envs", type=int, nargs="+", default=[16, 128, 1024])
    p.add_argument("--steps", type=int, default=8192, help="env steps per timed scan")
    p.add_argument("--buffer-size", type=int, default=100_000)
    args = p.parse_args()
    enable_compilation_cache()
    print(f"# throughput: {datetime.date.today()}, {platform.machine()}, "
          f"{jax.devices()[0].device_kind} x{jax.device_count()}, jax {jax.__version__}")
    print("| env | num envs | actor | env-only steps/s | learning steps/s | updates/s | "
          "UTD | batch | compile+first scan s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for env_name in args.envs:
        for num_envs in args.num_envs:
            for baseline in (True, False):
                r = measure(env_name, num_envs, baseline, args.steps, args.buffer_size)
                print(f"| {env_name} | {num_envs} | {'SAC' if baseline else 'ProtoSAC'} | "
                      f"{r['env_only']:.0f} | {r['learning_steps']:.0f} | {r['updates']:.0f} | "
                      f"{r['utd']:.3g} | {r['batch']} | {r['compile_s']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
