"""Updates/s of the SAC update with each ingredient of issue #17 on, at MJX hopper's shapes.

    .venv/bin/python benchmarks/ingredient_speed.py [--baseline]

ProtoSAC (K = 32, local feedback 0.25; or the baseline actor), 256x256 networks, batch 512,
obs 11, action 3, observation normalisation: the hopper preset's update. Variants: plain,
`--layer-norm critic`, `--n-step 3` (128 envs' stride), `--num-atoms 101`, `--sample-once`
(the 32 batches drawn in one call before the scan). Each runs 32 updates
per jitted `lax.scan` call sampling from a filled 100k-row device buffer; variants are timed in
interleaved rounds and the median round is reported. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import platform
import statistics

import jax

from protosac_jax.config import PrototypeConfig, SACConfig
from protosac_jax.networks import GaussianActor
from protosac_jax.prototype import ProtoActor
from update_speed import make_buffer, time_variants

SIZE, OBS, ACT, STRIDE, UPDATES = 100_000, 11, 3, 128, 32


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
        "--sample-once": dataclasses.replace(base, sample_once=True),
        "--crossq": dataclasses.replace(base, crossq=True),
    }
    actor = (GaussianActor(ACT, (256, 256)) if args.baseline
             else ProtoActor(ACT, PrototypeConfig(local_gain=0.25), (256, 256)))
    buffer = make_buffer(OBS, ACT, SIZE, episode_ends=True, render_dim=11)
    times = time_variants({name: (actor, cfg) for name, cfg in variants.items()}, buffer, OBS,
                          ACT, UPDATES, args.rounds, stride=STRIDE)
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
