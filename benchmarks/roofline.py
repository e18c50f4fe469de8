"""How close is one SAC update to this machine's matmul roofline?

    .venv/bin/python benchmarks/roofline.py [--obs-dim 3 --action-dim 1 --hidden 256,256]

1. FLOP per update counted from the layer shapes (matmuls only, 2 FLOP per multiply-add):
   critic loss = actor forward on next_obs + 2 target Qs forward + 2 Qs forward and backward
   (backward = input and weight gradients, 2x the forward); actor loss = actor forward and
   backward + 2 Qs forward + their input gradients (no weight gradients: the critics are
   constants there). Cross-checked with XLA's own cost analysis of the compiled update.
2. The machine's matmul rate: a jitted scan of [batch, hidden] @ [hidden, hidden] products
   (the update's dominant shape) in float32, all cores.
3. The measured update time (the training path: `sac.update_many`, a scan of updates sampling
   a filled device buffer), for the baseline actor and ProtoSAC.
Prints FLOP, GFLOP/s achieved and the fraction of the measured matmul rate.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time

import jax
import jax.numpy as jnp

from protosac_jax import sac
from protosac_jax.config import PrototypeConfig
from protosac_jax.networks import GaussianActor
from protosac_jax.prototype import ProtoActor
from update_speed import make_buffer, parse_update_args, update_args


def mlp_macs(sizes) -> int:
    return sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def update_flops(obs: int, act: int, hidden, batch: int, proto: tuple[int, int] | None) -> int:
    """Matmul FLOP of one SAC update (see the module docstring)."""
    q = mlp_macs([obs + act, *hidden, 1])
    if proto is None:
        actor = mlp_macs([obs, *hidden, 2 * act])
    else:
        k, latent = proto
        actor = mlp_macs([obs, *hidden, latent]) + k * latent + k * act * 2  # distances, blend
    critic_loss = actor + 2 * q + 2 * q + 2 * (2 * q)
    actor_loss = actor + 2 * actor + 2 * q + 2 * q
    return 2 * batch * (critic_loss + actor_loss)


def matmul_runner(batch: int, width: int, reps: int = 1000):
    """(jitted fn, its input, FLOP per call): a scan of [batch, width] @ [width, width]."""
    x = jax.random.normal(jax.random.PRNGKey(0), (batch, width))
    w = jax.random.normal(jax.random.PRNGKey(1), (width, width)) / width ** 0.5

    @jax.jit
    def run(x):
        return jax.lax.fori_loop(0, reps, lambda i, x: jnp.tanh(x @ w), x)

    run(x).block_until_ready()
    return run, x, 2 * batch * width * width * reps


def main():
    p = argparse.ArgumentParser()
    update_args(p, rounds=9)
    args, hidden, cfg = parse_update_args(p)
    matmul, mx, matmul_flops = matmul_runner(args.batch_size, hidden[0])
    buffer = make_buffer(args.obs_dim, args.action_dim)
    update = jax.jit(sac.update_many, static_argnums=(3, 4, 5, 6))
    print(f"# roofline: obs {args.obs_dim}, act {args.action_dim}, hidden {hidden}, batch "
          f"{args.batch_size}; {datetime.date.today()}, {platform.machine()}, "
          f"{jax.devices()[0].platform} x{jax.device_count()}, jax {jax.__version__}")
    variants = {"baseline SAC": (GaussianActor(args.action_dim, hidden), None),
                "ProtoSAC K=32": (ProtoActor(args.action_dim, PrototypeConfig(
                    num_prototypes=32, latent_dim=64), hidden), (32, 64))}
    states, flops, xla_flops = {}, {}, {}
    for name, (actor, proto) in variants.items():
        flops[name] = update_flops(args.obs_dim, args.action_dim, hidden, args.batch_size, proto)
        state = sac.init(jax.random.PRNGKey(1), actor, cfg, jnp.zeros(args.obs_dim),
                         args.action_dim)
        cost = update.lower(state, buffer, jax.random.PRNGKey(2), 1, actor, cfg,
                            args.action_dim).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        xla_flops[name] = float(cost.get("flops", float("nan")))
        state, m = update(state, buffer, jax.random.PRNGKey(2), args.updates, actor, cfg,
                          args.action_dim)
        jax.block_until_ready(m)
        states[name] = state
    # Interleaved rounds (this VM's speed drifts by tens of percent): medians per variant.
    times = {name: [] for name in ["matmul", *variants]}
    for r in range(args.rounds):
        t0 = time.perf_counter()
        matmul(mx).block_until_ready()
        times["matmul"].append(time.perf_counter() - t0)
        for name, (actor, _) in variants.items():
            t0 = time.perf_counter()
            states[name], m = update(states[name], buffer, jax.random.PRNGKey(3 + r),
                                     args.updates, actor, cfg, args.action_dim)
            jax.block_until_ready(m)
            times[name].append((time.perf_counter() - t0) / args.updates)
    rate = matmul_flops / statistics.median(times["matmul"])
    print(f"matmul rate ([{args.batch_size},{hidden[0]}] @ [{hidden[0]},{hidden[0]}], float32, "
          f"median of {args.rounds} interleaved rounds): {rate / 1e9:.0f} GFLOP/s")
    print("| actor | GFLOP / update (shapes) | GFLOP / update (XLA) | ms / update | GFLOP/s | "
          "of matmul rate | updates/s bound by matmul rate |")
    print("|---|---|---|---|---|---|---|")
    for name in variants:
        per = statistics.median(times[name])
        print(f"| {name} | {flops[name] / 1e9:.3f} | {xla_flops[name] / 1e9:.3f} | "
              f"{per * 1e3:.3f} | {flops[name] / per / 1e9:.0f} | "
              f"{flops[name] / per / rate:.0%} | {rate / flops[name]:.0f} |")


if __name__ == "__main__":
    main()
