"""Updates/s of the SAC update with each ingredient of issue #17 on, at MJX hopper's shapes.

    .venv/bin/python benchmarks/ingredient_speed.py [--baseline]

ProtoSAC (K = 32, local feedback 0.25; or the baseline actor), 256x256 networks, batch 512,
obs 11, action 3, observation normalisation: the hopper preset's update. Variants: plain,
`--layer-norm critic`, `--n-step 3` (128 envs' stride), `--num-atoms 101`. Each runs 32 updates
per jitted `lax.scan` call sampling from a filled 100k-row device buffer; variants are timed in
interleaved rounds and the median round is reported. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import platform
import statistics
import time

import jax
import jax.numpy as jnp

from protosac_jax import replay, sac
from protosac_jax.config import PrototypeConfig, SACConfig
from protosac_jax.networks import GaussianActor
from protosac_jax.prototype import ProtoActor

SIZE, OBS, ACT, STRIDE, UPDATES = 100_000, 11, 3, 128, 32


def filled_buffer():
    k = jax.random.split(jax.random.PRNGKey(0), 5)
    rows = replay.Transition(
        obs=jax.random.normal(k[0], (SIZE, OBS)),
        action=jax.random.uniform(k[1], (SIZE, ACT), minval=-1, maxval=1),
        reward=jax.random.normal(k[2], (SIZE,)), next_obs=jax.random.normal(k[3], (SIZE, OBS)),
        terminated=jnp.zeros((SIZE,)), render_state=jnp.zeros((SIZE, 11)),
        episode_end=(jax.random.uniform(k[4], (SIZE,)) < 0.002).astype(jnp.float32))
    example = jax.tree_util.tree_map(lambda x: x[0], rows)
    return replay.insert(replay.init(SIZE, example), rows)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--baseline", action="store_true", help="the plain SAC actor")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    base = SACConfig(batch_size=512, normalize_obs=True)
    variants = {
        "plain (default)": base,
        "--layer-norm critic": dataclasses.replace(base, layer_norm="critic"),
        "--n-step 3": dataclasses.replace(base, n_step=3),
        "--num-atoms 101": dataclasses.replace(base, num_atoms=101, v_min=-100.0, v_max=500.0),
    }
    actor = (GaussianActor(ACT, (256, 256)) if args.baseline
             else ProtoActor(ACT, PrototypeConfig(local_gain=0.25), (256, 256)))
    buffer = filled_buffer()
    update = jax.jit(sac.update_many, static_argnums=(3, 4, 5, 6, 8))
    states = {}
    for name, cfg in variants.items():
        state = sac.init(jax.random.PRNGKey(1), actor, cfg, jnp.zeros(OBS), ACT)
        state, m = update(state, buffer, jax.random.PRNGKey(2), UPDATES, actor, cfg, ACT, None,
                          STRIDE)  # compile + warm up
        jax.block_until_ready(m)
        states[name] = state
    times = {name: [] for name in variants}
    for r in range(args.rounds):
        for name, cfg in variants.items():
            t0 = time.perf_counter()
            states[name], m = update(states[name], buffer, jax.random.PRNGKey(3 + r), UPDATES,
                                     actor, cfg, ACT, None, STRIDE)
            jax.block_until_ready(m)
            times[name].append(time.perf_counter() - t0)
    plain = UPDATES / statistics.median(times["plain (default)"])
    print(f"# ingredient_speed: {datetime.date.today()}, {platform.machine()}, "
          f"{jax.devices()[0].device_kind}, jax {jax.__version__}, "
          f"{'SAC' if args.baseline else 'ProtoSAC'}")
    print("| variant | updates/s | vs plain |")
    print("|---|---|---|")
    for name, ts in times.items():
        rate = UPDATES / statistics.median(ts)
        print(f"| {name} | {rate:.1f} | {rate / plain:.2f}x |")


if __name__ == "__main__":
    main()
