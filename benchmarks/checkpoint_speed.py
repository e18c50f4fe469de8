"""Save and restore time of a full resumable checkpoint, with and without the replay buffer.

    .venv/bin/python benchmarks/checkpoint_speed.py [--obs-dim 244 --action-dim 17 --buffer-size 1000000]

Builds a TrainState of the requested sizes (Pendulum env state; the buffer, which dominates,
gets the requested obs/action shapes by using a synthetic env spec) and times
Checkpointer.save and restore_train_state. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import shutil
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from protosac_jax import checkpoint, loops, replay
from protosac_jax import config as config_lib
from protosac_jax.envs.gymnax_envs import GymnaxEnv


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--obs-dim", type=int, default=244)
    p.add_argument("--action-dim", type=int, default=17)
    p.add_argument("--buffer-size", type=int, default=1_000_000)
    p.add_argument("--hidden", default="256,256")
    args = p.parse_args()
    hidden = tuple(int(x) for x in args.hidden.split(","))
    cfg = dataclasses.replace(config_lib.preset("pendulum"), buffer_size=args.buffer_size,
                              sac=dataclasses.replace(config_lib.SACConfig(),
                                                      hidden_sizes=hidden))
    loop = loops.Loop(GymnaxEnv("pendulum"), loops.make_actor(cfg, 1), cfg)
    ts = loops.init_state_jit(loop, jax.random.PRNGKey(0))
    # Replace the buffer by one of the requested shapes, filled with data.
    example = replay.Transition(
        obs=jnp.zeros((args.obs_dim,)), action=jnp.zeros((args.action_dim,)),
        reward=jnp.zeros(()), next_obs=jnp.zeros((args.obs_dim,)), terminated=jnp.zeros(()),
        render_state=jnp.zeros((3,)))
    buffer = replay.init(args.buffer_size, example)
    # random contents: constant data would compress to nothing on disk
    keys = iter(jax.random.split(jax.random.PRNGKey(1), 16))
    buffer = buffer.replace(data=jax.tree_util.tree_map(
        lambda x: jax.random.normal(next(keys), x.shape, x.dtype), buffer.data),
                            size=jnp.asarray(args.buffer_size, jnp.int32))
    ts = ts.replace(buffer=jax.block_until_ready(buffer))
    gib = sum(x.nbytes for x in jax.tree_util.tree_leaves(buffer)) / 2**30
    rows = []
    for save_buffer in (True, False):
        tmp = Path(tempfile.mkdtemp())
        (tmp / "config.json").write_text(config_lib.to_json(cfg))
        ckpt = checkpoint.Checkpointer(tmp)
        meta = {"format_version": checkpoint.FORMAT_VERSION,
                "spec": dataclasses.asdict(loop.spec), "env_steps": 1000, "eval_return": 0.0}
        t0 = time.perf_counter()
        ckpt.save(ts, meta, save_buffer)
        save_s = time.perf_counter() - t0
        ckpt.close()
        size = dir_size(tmp / "ckpt")
        # restore the learner etc. (the buffer restore needs the template's shapes: time it
        # through Orbax directly with the synthetic buffer as template)
        t0 = time.perf_counter()
        items = {"learner": checkpoint._abstract(ts.learner), "meta": None}
        if save_buffer:
            items["buffer"] = checkpoint._abstract(ts.buffer)
        restored = checkpoint._restore(tmp / "ckpt" / "latest", 1000, items)
        jax.block_until_ready(jax.tree_util.tree_leaves(restored["learner"]))
        restore_s = time.perf_counter() - t0
        rows.append((save_buffer, save_s, restore_s, size / 2**30))
        shutil.rmtree(tmp)
    print(f"# checkpoint speed: buffer {args.buffer_size} x obs {args.obs_dim} "
          f"({gib:.2f} GiB in memory), nets {hidden}; {datetime.date.today()}, "
          f"{jax.devices()[0].platform}")
    print("| buffer saved | save s | restore s | size on disk GiB |")
    print("|---|---|---|---|")
    for save_buffer, save_s, restore_s, size in rows:
        print(f"| {save_buffer} | {save_s:.2f} | {restore_s:.2f} | {size:.3f} |")


if __name__ == "__main__":
    main()
