"""Saving and loading the final parameters of a run.

Format (version 1): `final/params.msgpack` (flax serialization of the learner parameters),
`final/provenance.npz`, `final/meta.json`, next to the run's `config.json`. The Orbax issue
(#6) replaces this with full, resumable checkpoints; `load` keeps reading version 1.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A run directory that cannot be loaded (the CLI turns this into one line)."""


def _learner_tree(learner) -> dict[str, Any]:
    return {
        "actor": learner.actor_params,
        "critic": learner.critic_params,
        "target_critic": learner.target_critic_params,
        "log_alpha": learner.log_alpha,
    }


def save_final(run_dir: Path, loop, ts, stats: dict[str, Any]) -> Path:
    final = Path(run_dir) / "final"
    final.mkdir(parents=True, exist_ok=True)
    tree = jax.device_get(_learner_tree(ts.learner))
    tmp = final / "params.msgpack.tmp"
    tmp.write_bytes(flax.serialization.to_bytes(tree))
    tmp.replace(final / "params.msgpack")  # atomic: a reader never sees half a file
    prov = jax.device_get(ts.provenance)
    np.savez(final / "provenance.npz",
             **{f.name: np.asarray(getattr(prov, f.name)) for f in dataclasses.fields(prov)})
    meta = {"format_version": FORMAT_VERSION, "spec": dataclasses.asdict(loop.spec), **stats}
    (final / "meta.json").write_text(json.dumps(meta, indent=2))
    return final


def load_final(run_dir: Path):
    """(config, spec, actor, learner params dict, provenance dict, meta) of a finished run."""
    from protosac_jax import config as config_lib
    from protosac_jax import envs, loops, sac
    from protosac_jax.envs.base import EnvSpec

    run_dir = Path(run_dir)
    final = run_dir / "final"
    for needed in (run_dir / "config.json", final / "params.msgpack", final / "meta.json"):
        if not needed.is_file():
            raise CheckpointError(f"{run_dir} is not a finished run: {needed.name} is missing")
    meta = json.loads((final / "meta.json").read_text())
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{run_dir}: checkpoint format {version!r} is not supported by this version "
            f"(reads {FORMAT_VERSION}); upgrade protosac-jax")
    cfg = config_lib.from_json((run_dir / "config.json").read_text())
    spec_dict = meta["spec"]
    spec_dict["obs_shape"] = tuple(spec_dict["obs_shape"])
    spec_dict["action_low"] = tuple(spec_dict["action_low"])
    spec_dict["action_high"] = tuple(spec_dict["action_high"])
    spec = EnvSpec(**spec_dict)
    actor = loops.make_actor(cfg, spec.action_dim)
    obs = jnp.zeros(spec.obs_shape, jnp.float32)
    template = sac.init(jax.random.PRNGKey(0), actor, cfg.sac, obs, spec.action_dim)
    tree = flax.serialization.from_bytes(_learner_tree(template),
                                         (final / "params.msgpack").read_bytes())
    provenance = dict(np.load(final / "provenance.npz"))
    del envs  # the env itself is not needed for inference
    return cfg, spec, actor, tree, provenance, meta
