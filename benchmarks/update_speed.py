"""Updates/s of the SAC update with the baseline actor vs the ProtoSAC actor (K = 16, 32, 64).

    .venv/bin/python benchmarks/update_speed.py [--obs-dim 3 --action-dim 1 --hidden 256,256]

Each variant runs `--updates` gradient steps per jitted call (lax.scan, sampling from a filled
device buffer, exactly the training path). Variants are timed in interleaved rounds and the
median round is reported, so background noise hits all variants alike. Prints a markdown table.
"""

from __future__ import annotations

import argparse
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


def make_buffer(obs_dim, action_dim, size=10_000, episode_ends=False, render_dim=1):
    """A filled device buffer of random transitions; `episode_ends` also stores the episode-end
    flags n-step sampling reads (one end per ~500 rows)."""
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    batch = replay.Transition(
        obs=jax.random.normal(k[0], (size, obs_dim)),
        action=jax.random.uniform(k[1], (size, action_dim), minval=-1, maxval=1),
        reward=jax.random.normal(k[2], (size,)),
        next_obs=jax.random.normal(k[3], (size, obs_dim)),
        terminated=jnp.zeros((size,)), render_state=jnp.zeros((size, render_dim)),
        episode_end=((jax.random.uniform(jax.random.fold_in(k[0], 1), (size,)) < 0.002).astype(jnp.float32)
                     if episode_ends else None))
    example = jax.tree_util.tree_map(lambda x: x[0], batch)
    return replay.insert(replay.init(size, example), batch)


def time_variants(variants, buffer, obs_dim, action_dim, updates, rounds, stride=1):
    """{name: [seconds per call]} of `updates` gradient steps per jitted `sac.update_many`
    call for each variant {name: (actor, SACConfig)}: one compile + warm-up call each, then
    `rounds` interleaved rounds, so background noise hits all variants alike."""
    update = jax.jit(sac.update_many, static_argnums=(3, 4, 5, 6, 8))
    states = {}
    for name, (actor, cfg) in variants.items():
        state = sac.init(jax.random.PRNGKey(1), actor, cfg, jnp.zeros(obs_dim), action_dim)
        state, m = update(state, buffer, jax.random.PRNGKey(2), updates, actor, cfg,
                          action_dim, None, stride)  # compile + warm up
        jax.block_until_ready(m)
        states[name] = state
    times = {name: [] for name in variants}
    for r in range(rounds):
        for name, (actor, cfg) in variants.items():
            t0 = time.perf_counter()
            states[name], m = update(states[name], buffer, jax.random.PRNGKey(3 + r), updates,
                                     actor, cfg, action_dim, None, stride)
            jax.block_until_ready(m)
            times[name].append(time.perf_counter() - t0)
    return times


def update_args(p: argparse.ArgumentParser, rounds: int):
    """The update-shape flags shared by update_speed.py and roofline.py."""
    p.add_argument("--obs-dim", type=int, default=3)
    p.add_argument("--action-dim", type=int, default=1)
    p.add_argument("--hidden", default="256,256")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--updates", type=int, default=200, help="updates per jitted call")
    p.add_argument("--rounds", type=int, default=rounds)


def parse_update_args(p: argparse.ArgumentParser):
    """(args, hidden widths, SACConfig) from the flags of `update_args`."""
    args = p.parse_args()
    hidden = tuple(int(x) for x in args.hidden.split(","))
    return args, hidden, SACConfig(hidden_sizes=hidden, batch_size=args.batch_size)


def main():
    p = argparse.ArgumentParser()
    update_args(p, rounds=7)
    p.add_argument("--prototypes", type=int, nargs="+", default=[16, 32, 64])
    args, hidden, cfg = parse_update_args(p)
    variants = {"baseline SAC": (GaussianActor(args.action_dim, hidden), cfg)}
    for k in args.prototypes:
        variants[f"ProtoSAC K={k}"] = (ProtoActor(
            args.action_dim, PrototypeConfig(num_prototypes=k, latent_dim=64), hidden), cfg)
    times = time_variants(variants, make_buffer(args.obs_dim, args.action_dim), args.obs_dim,
                          args.action_dim, args.updates, args.rounds)
    base = statistics.median(times["baseline SAC"]) / args.updates
    print(f"# update speed: obs {args.obs_dim}, act {args.action_dim}, hidden {hidden}, "
          f"batch {args.batch_size}; {datetime.date.today()}, {platform.machine()}, "
          f"{jax.devices()[0].platform} x{jax.device_count()}, jax {jax.__version__}")
    print("| variant | ms / update | updates/s | time vs baseline |")
    print("|---|---|---|---|")
    for name in variants:
        per = statistics.median(times[name]) / args.updates
        print(f"| {name} | {per * 1e3:.3f} | {1 / per:.0f} | {per / base:.2f}x |")


if __name__ == "__main__":
    main()
