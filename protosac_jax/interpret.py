"""Measured interpretability: per-decision explanations and the deletion (faithfulness) test.

Equal return proves nothing about interpretability (PW-Net, ICLR 2023: random prototypes can
match a trained agent). What we measure instead is whether the prototypes drive the decisions:

* `explain`: for each state, the weights w over prototypes, the top-k prototypes, and the blend's
  decomposition of the pre-squash action mean  mu = sum_k w_k m_k  into per-prototype
  contributions w_k m_k (per action dim) and their shares |w_k m_k| / sum_j |w_j m_j|.
* Deletion: remove prototypes from the decision (mask their weights, renormalise the rest) —
  the top-k by weight vs k chosen at random — and measure how much the deterministic action
  moves (mean L2 in [-1, 1] policy units) and what return the agent gets when it plays with
  that mask at every step. Faithful prototypes: deleting the top ones matters much more.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from protosac_jax import sac


def masked_weights(weights, keep):
    """Weights with the prototypes where `keep` is 0 removed, renormalised over the rest."""
    w = weights * keep
    return w / jnp.maximum(jnp.sum(w, axis=-1, keepdims=True), 1e-30)


def action_from_weights(actor, weights, means):
    """The deterministic action for given weights (blend: tanh(w @ m); mixture: the mean of
    the most-weighted component), as `ProtoActor.deterministic` computes it."""
    if actor.cfg.distribution == "blend":
        return jnp.tanh(weights @ means)
    return jnp.tanh(means[jnp.argmax(weights, axis=-1)])


def top_k_mask(weights, k: int):
    """1 everywhere except the k largest weights of each row."""
    top = jnp.argsort(-weights, axis=-1)[..., :k]
    return jnp.ones_like(weights).at[jnp.arange(weights.shape[0])[:, None], top].set(0.0)


def random_k_mask(key, weights, k: int):
    """1 everywhere except k prototypes drawn uniformly without replacement per row."""
    scores = jax.random.uniform(key, weights.shape)
    return top_k_mask(scores, k)


@functools.partial(jax.jit, static_argnums=(0,))
def _forward(actor, params, obs):
    return actor.forward(params, obs)


def explain(actor, params, obs, top_k: int = 3) -> dict[str, np.ndarray]:
    """Per-decision explanation of a batch of (network-ready) observations."""
    out = jax.device_get(_forward(actor, params, obs))
    weights = np.asarray(out.weights)
    means = np.asarray(out.means)
    contributions = weights[:, :, None] * means[None]  # [B, K, A]
    share = np.abs(contributions) / np.maximum(np.abs(contributions).sum(1, keepdims=True),
                                               1e-30)
    top = np.argsort(-weights, axis=-1)[:, :top_k]
    return {
        "weights": weights,
        "top_k": top,
        "top_k_weights": np.take_along_axis(weights, top, axis=-1),
        "distances": np.asarray(out.distances),
        "contributions": contributions,  # w_k m_k per action dim (pre-squash)
        "contribution_share": share,  # |w_k m_k| / sum_j |w_j m_j|
        "top_k_share": np.take_along_axis(share, top[:, :, None], axis=1),
        "pre_squash_mean": contributions.sum(1),
        "action": np.tanh(contributions.sum(1)) if actor.cfg.distribution == "blend"
        else np.tanh(means[np.argmax(weights, axis=-1)]),
        "proto_means": means,
        "proto_stds": np.exp(np.asarray(out.log_stds)),
    }


@functools.partial(jax.jit, static_argnums=(0, 3))
def _action_changes(actor, params, obs, k: int, key):
    out = actor.forward(params, obs)
    base = action_from_weights(actor, out.weights, out.means)
    top = action_from_weights(actor, masked_weights(out.weights, top_k_mask(out.weights, k)),
                              out.means)
    rand = action_from_weights(
        actor, masked_weights(out.weights, random_k_mask(key, out.weights, k)), out.means)
    change = lambda a: jnp.mean(jnp.linalg.norm(a - base, axis=-1))  # noqa: E731
    return change(top), change(rand)


def action_change_curves(actor, params, obs, ks, seed: int = 0) -> dict[str, list[float]]:
    """Mean L2 change of the deterministic action when the top-k vs k random prototypes are
    deleted from each state's decision, for each k."""
    top, rand = [], []
    for i, k in enumerate(ks):
        t, r = _action_changes(actor, params, obs, int(k), jax.random.PRNGKey(seed + i))
        top.append(float(t))
        rand.append(float(r))
    return {"action_change_top": top, "action_change_random": rand}


def masked_policy(actor, sac_cfg, learner, k: int, mode: str, seed: int = 0):
    """A policy for `visualize.play_episodes` that deletes the top-k (mode "top") or k random
    (mode "random", redrawn every step) prototypes from every decision."""
    counter = [0]

    @jax.jit
    def step(obs, key):
        x = sac.prepare_obs(learner, obs, sac_cfg)
        out = actor.forward(learner.actor_params, x)
        keep = top_k_mask(out.weights, k) if mode == "top" else \
            random_k_mask(key, out.weights, k)
        weights = masked_weights(out.weights, keep)
        return action_from_weights(actor, weights, out.means), weights

    def policy(obs):
        counter[0] += 1
        return step(jnp.asarray(obs)[None], jax.random.PRNGKey(seed * 1_000_003 + counter[0]))

    return policy


# ----------------------------------------------------------------------------- pruning
PROTOTYPE_LEAVES = ("prototypes", "proto_means", "proto_log_stds")


def usage_mass(weights) -> np.ndarray:
    """Each prototype's share of all weight over a set of states: mean_b w[b, k] (sums to 1)."""
    return np.asarray(weights, np.float64).mean(axis=0)


def keep_for_share(usage, share: float) -> np.ndarray:
    """Indices of the fewest most-used prototypes whose usage adds up to >= `share`
    (most used first)."""
    order = np.argsort(-np.asarray(usage), kind="stable")
    cumulative = np.cumsum(np.asarray(usage)[order]) / max(float(np.sum(usage)), 1e-30)
    n = int(np.searchsorted(cumulative, share - 1e-9) + 1)
    return order[:min(n, len(order))]


def prune_tree(tree, keep, num_prototypes: int):
    """Keep rows `keep` of every prototype-indexed leaf (prototypes, proto_means,
    proto_log_stds, wherever they appear: actor params and their optimizer moments)."""
    keep = jnp.asarray(keep)

    def cut(path, leaf):
        name = getattr(path[-1], "key", None) if path else None
        if name in PROTOTYPE_LEAVES and getattr(leaf, "ndim", 0) >= 1 \
                and leaf.shape[0] == num_prototypes:
            return leaf[keep]
        return leaf

    return jax.tree_util.tree_map_with_path(cut, tree)


def prune_agent(agent, keep):
    """A new `Agent` with only the prototypes `keep` (in that order): smaller K in its config,
    actor params, actor optimizer state and provenance sliced. Because the weights are
    normalised similarities, the pruned agent acts exactly like the original with the other
    prototypes masked out and the weights renormalised (`masked_weights`)."""
    from protosac_jax import loops

    if not agent.is_proto:
        raise ValueError("pruning needs a ProtoSAC agent; this is a --baseline (plain SAC) run")
    keep = np.asarray(keep, np.int64)
    num = agent.config.proto.num_prototypes
    if keep.size < 1 or keep.min() < 0 or keep.max() >= num or len(set(keep.tolist())) != keep.size:
        raise ValueError(f"keep must be distinct prototype indices in 0..{num - 1}")
    cfg = dataclasses.replace(agent.config, proto=dataclasses.replace(
        agent.config.proto, num_prototypes=int(keep.size)))
    learner = agent.learner.replace(
        actor_params=prune_tree(agent.learner.actor_params, keep, num),
        actor_opt_state=prune_tree(agent.learner.actor_opt_state, keep, num))
    prototypes = {k: np.asarray(v)[keep] for k, v in agent.prototypes.items()}
    meta = {**agent.meta, "pruned_from": num, "kept_prototypes": keep.tolist()}
    return dataclasses.replace(agent, config=cfg, actor=loops.make_actor(cfg,
                                                                          agent.spec.action_dim),
                               learner=learner, prototypes=prototypes, meta=meta)
