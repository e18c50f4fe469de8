"""Inference API: `agent = protosac_jax.load(run_dir)`, `agent.act(obs)`, `agent.explain(obs)`."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from protosac_jax.checkpoint import load_policy
from protosac_jax.envs.base import rescale_actions
from protosac_jax.prototype import ProtoActor


@dataclasses.dataclass
class Agent:
    config: Any
    spec: Any
    actor: Any
    learner: Any  # sac.SACState: actor/critic/target params, temperature, optimizer states
    prototypes: dict[str, np.ndarray] | None  # provenance (buffer_index, obs, render_state, ...)
    meta: dict[str, Any]
    _act_calls: int = dataclasses.field(default=0, repr=False)  # stochastic act() draws so far

    @property
    def params(self):
        """The actor's parameters."""
        return self.learner.actor_params

    @property
    def is_proto(self) -> bool:
        return isinstance(self.actor, ProtoActor)

    def _batch(self, obs):
        """(network input batch, was a single obs): adds the batch axis, normalises."""
        from protosac_jax.sac import prepare_obs

        obs = jnp.asarray(obs, self.spec.obs_dtype)  # uint8 stays uint8 (pixels)
        shape = tuple(self.spec.obs_shape)
        if obs.shape[obs.ndim - len(shape):] != shape or obs.ndim > len(shape) + 1:
            raise ValueError(f"expected an obs of shape {shape} or a batch of them, "
                             f"got shape {obs.shape}")
        single = obs.ndim == len(shape)
        batch = obs[None] if single else obs
        return prepare_obs(self.learner, batch, self.config.sac), single

    def act(self, obs, deterministic: bool = True, seed: int | None = None,
            key: jax.Array | None = None) -> np.ndarray:
        """Env-scaled action(s) for one obs or a batch.

        `deterministic=False` samples the policy: with `key` (a JAX PRNG key) or `seed` the
        draw is reproducible; with neither, every call draws fresh noise (the agent's own
        stream, seeded from the run's seed, so a notebook session replays the same sequence).
        """
        batch, single = self._batch(obs)
        if deterministic:
            action = _deterministic(self.actor, self.params, batch)
        else:
            if key is None:
                if seed is None:
                    self._act_calls += 1
                    key = jax.random.fold_in(jax.random.PRNGKey(self.config.seed),
                                             self._act_calls)
                else:
                    key = jax.random.PRNGKey(seed)
            noise_key, sample_key = jax.random.split(key)
            noise = jax.random.normal(noise_key, (batch.shape[0], self.spec.action_dim))
            action = _stochastic(self.actor, self.params, batch, noise, sample_key)
        action = rescale_actions(action, self.spec.action_low, self.spec.action_high)
        return action[0] if single else action

    def explain(self, obs, top_k: int = 3) -> dict[str, np.ndarray]:
        """Why this action: weights over prototypes, the top-k prototypes, their distances,
        the blend's decomposition of the action mean into per-prototype contributions w_k m_k
        (and shares), each prototype's Gaussian and provenance (see interpret.explain)."""
        from protosac_jax import interpret

        if not self.is_proto:
            raise ValueError("explain() needs a ProtoSAC agent; this checkpoint is a --baseline "
                             "(plain SAC) run, which has no prototypes")
        batch, single = self._batch(obs)
        result = interpret.explain(self.actor, self.params, batch, top_k)
        result["top_k_source_row"] = self.prototypes["buffer_index"][result["top_k"]]
        if single:
            result = {k: (v if k in ("proto_means", "proto_stds") else v[0])
                      for k, v in result.items()}
        return result


# Module-level jitted helpers: the actor (a frozen, hashable dataclass) is a static argument,
# so repeated calls (an episode in a notebook) reuse one compiled function.
@functools.partial(jax.jit, static_argnums=0)
def _deterministic(actor, params, obs):
    return actor.deterministic(params, obs)


@functools.partial(jax.jit, static_argnums=0)
def _stochastic(actor, params, obs, noise, key):
    return actor.act(params, obs, noise, key)


def load(path, step: int | None = None, best: bool = False) -> Agent:
    """Agent from a run directory (newest checkpoint, or `step`, or the best-by-eval one with
    `best=True`) or from a step directory `<run>/ckpt/latest/<step>`. Loads onto the CPU
    whatever device trained it."""
    cfg, spec, actor, learner, provenance, meta = load_policy(Path(path), step=step, best=best)
    return Agent(config=cfg, spec=spec, actor=actor, learner=learner,
                 prototypes=provenance if isinstance(actor, ProtoActor) else None, meta=meta)
