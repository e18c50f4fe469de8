"""Replay every member of a seed group on one member's final evaluation episodes.

    python benchmarks/replay_final_eval.py GROUP_DIR SEED

A run's final evaluation (the "final eval" of summary.json) plays `eval_episodes` episodes
from start states drawn from the run's own random stream. This restores that member's final
training state, rebuilds its evaluation key (loops.eval_key) and plays the final policy of
every member of the group on exactly those episodes (loops.evaluate, the trainer's own
evaluation). If every trained policy scores about the same there, the episodes, not the
member's learning, set its final eval. Prints one JSON line: member -> mean return, and the
start angles (Pendulum).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np


def main() -> None:
    import protosac_jax
    from protosac_jax import checkpoint, config as config_lib, loops, trainer

    group, target = Path(sys.argv[1]), int(sys.argv[2])
    run = group / f"seed_{target}"
    cfg = config_lib.from_json((run / "config.json").read_text())
    loop = trainer.make_loop(cfg)
    ts = checkpoint.restore_train_state(run, loop)[0]
    key = loops.eval_key(ts)
    returns = {}
    for member in sorted(group.glob("seed_*"), key=lambda p: int(p.name[5:])):
        learner = protosac_jax.load(member).learner
        returns[member.name] = round(float(jnp.mean(
            loops.evaluate(loop, learner, key, cfg.eval_episodes))), 1)
    out = {"episodes_of": run.name, "returns": returns}
    _, obs = jax.vmap(loop.env.reset)(jax.random.split(key, cfg.eval_episodes))
    obs = np.asarray(obs)
    if obs.shape[-1] == 3:  # Pendulum: (cos, sin, velocity)
        out["start_angles"] = [round(float(a), 2) for a in np.arctan2(obs[:, 1], obs[:, 0])]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
