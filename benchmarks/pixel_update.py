"""Pixel (CarRacing-shaped) update costs on this machine, as ratios measured in one run.

    .venv/bin/python benchmarks/pixel_update.py [--batch 64]

1. NatureCNN forward+backward: the classic 8x8/4 first conv vs our patch-first torso.
2. One SAC update of the ProtoSAC actor: inside a lax.scan (a loop body) vs straight-line code,
   which is what sac.update_many does for pixels.
"""

from __future__ import annotations

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

from protosac_jax import replay, sac
from protosac_jax.config import PrototypeConfig, SACConfig
from protosac_jax.networks import NatureCNN
from protosac_jax.prototype import ProtoActor


class ClassicNatureCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = x.astype(jnp.float32) / 255.0
        x = nn.relu(nn.Conv(32, (8, 8), strides=(4, 4), padding="VALID")(x))
        x = nn.relu(nn.Conv(64, (4, 4), strides=(2, 2), padding="VALID")(x))
        x = nn.relu(nn.Conv(64, (3, 3), strides=(1, 1), padding="VALID")(x))
        return x.reshape(x.shape[0], -1)


def timed(fn, *args, repeat=5):
    jax.block_until_ready(fn(*args))
    t0 = time.perf_counter()
    for _ in range(repeat):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / repeat


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args()
    b = args.batch
    x = jnp.zeros((b, 96, 96, 9), jnp.uint8)
    for name, module in (("classic 8x8/4 conv", ClassicNatureCNN()), ("patch-first", NatureCNN())):
        params = module.init(jax.random.PRNGKey(0), x)
        grad = jax.jit(jax.grad(lambda p, x: jnp.sum(module.apply(p, x) ** 2)))
        print(f"CNN fwd+bwd batch {b}, {name}: {timed(grad, params, x):.3f} s")

    cfg = SACConfig(hidden_sizes=(256, 256), batch_size=b)
    actor = ProtoActor(3, PrototypeConfig(), (256, 256))
    state = sac.init(jax.random.PRNGKey(0), actor, cfg, x[0], 3)
    batch = replay.Transition(obs=x, action=jnp.zeros((b, 3)), reward=jnp.zeros(b),
                              next_obs=x, terminated=jnp.zeros(b),
                              render_state=jnp.zeros((b, 1)))
    straight = jax.jit(lambda s, k: sac.update(s, batch, k, actor, cfg, 3)[0])
    in_scan = jax.jit(lambda s, k: jax.lax.scan(
        lambda c, kk: (sac.update(c, batch, kk, actor, cfg, 3)[0], None), s,
        jax.random.split(k, 1))[0])
    t_straight = timed(straight, state, jax.random.PRNGKey(1))
    t_scan = timed(in_scan, state, jax.random.PRNGKey(1))
    print(f"SAC update batch {b}: straight-line {t_straight:.3f} s, in a scan {t_scan:.3f} s "
          f"({t_scan / t_straight:.1f}x)")


if __name__ == "__main__":
    main()
