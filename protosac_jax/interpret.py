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


def action_from_weights(actor, weights, means, corrections=None):
    """The deterministic action for given weights, as `ProtoActor.deterministic` computes it
    (the top prototype's own action, or the blend's mean with decide "mean"; with the local
    corrections of `--local-gain`)."""
    return actor.action_from_weights(weights, means, corrections)


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
    # each prototype's (pre-squash) action at the state: m_k, plus its local correction
    local = means[None] if out.corrections is None else means[None] + np.asarray(out.corrections)
    contributions = weights[:, :, None] * local  # [B, K, A]
    share = np.abs(contributions) / np.maximum(np.abs(contributions).sum(1, keepdims=True),
                                               1e-30)
    top = np.argsort(-weights, axis=-1)[:, :top_k]
    return {
        "weights": weights,
        "top_k": top,
        "top_k_weights": np.take_along_axis(weights, top, axis=-1),
        "distances": np.asarray(out.distances),
        "contributions": contributions,  # w_k (m_k + c_k) per action dim (pre-squash)
        "contribution_share": share,  # |w_k (m_k + c_k)| / sum_j |w_j (m_j + c_j)|
        "top_k_share": np.take_along_axis(share, top[:, :, None], axis=1),
        "pre_squash_mean": contributions.sum(1),
        "action": np.asarray(actor.action_from_weights(
            jnp.asarray(weights), jnp.asarray(means),
            None if out.corrections is None else jnp.asarray(out.corrections))),
        # local feedback of each prototype at the state (zeros without --local-gain)
        "corrections": np.zeros_like(local) if out.corrections is None
        else np.asarray(out.corrections),
        "proto_means": means,
        "proto_stds": np.exp(np.asarray(out.log_stds)),
    }


@functools.partial(jax.jit, static_argnums=(0, 3))
def _action_changes(actor, params, obs, k: int, key):
    out = actor.forward(params, obs)
    base = action_from_weights(actor, out.weights, out.means, out.corrections)
    top = action_from_weights(actor, masked_weights(out.weights, top_k_mask(out.weights, k)),
                              out.means, out.corrections)
    rand = action_from_weights(
        actor, masked_weights(out.weights, random_k_mask(key, out.weights, k)), out.means,
        out.corrections)
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
        return action_from_weights(actor, weights, out.means, out.corrections), weights

    def policy(obs):
        counter[0] += 1
        return step(jnp.asarray(obs)[None], jax.random.PRNGKey(seed * 1_000_003 + counter[0]))

    return policy


def nearest_prototype_policy(actor, sac_cfg, learner):
    """A policy for `visualize.play_episodes` that acts as its top-1 prototype alone:
    a = tanh(m_argmax w) (the `return_nearest_prototype` of `decision_metrics`)."""

    @jax.jit
    def step(obs):
        out = actor.forward(learner.actor_params, sac.prepare_obs(learner, obs, sac_cfg))
        return jnp.tanh(out.means[jnp.argmax(out.weights, axis=-1)]), out.weights

    return lambda obs: step(jnp.asarray(obs)[None])


def random_policy(action_dim: int, num_prototypes: int, seed: int = 0):
    """Uniform random actions in [-1, 1] (the `return_random` reference)."""
    rng = np.random.default_rng(seed)
    return lambda obs: (rng.uniform(-1.0, 1.0, (1, action_dim)).astype(np.float32),
                        np.zeros((1, num_prototypes), np.float32))


# ----------------------------------------------------------------------------- decisions
def lookalike_features(obs: np.ndarray, pixels: bool) -> np.ndarray:
    """What `lookalike` compares states by: vectors as they are (scaled by the caller);
    pixels as the newest frame in 24x24 grayscale, in [0, 1]."""
    obs = np.asarray(obs)
    if not pixels:
        return obs.reshape(obs.shape[0], -1).astype(np.float64)
    frame = obs[..., -3:].astype(np.float64) / 255.0 if obs.shape[-1] >= 3 else \
        obs.astype(np.float64) / 255.0
    gray = frame.mean(axis=-1)  # [N, H, W]
    n, h, w = gray.shape
    rows = np.array_split(np.arange(h), 24)
    cols = np.array_split(np.arange(w), 24)
    small = np.stack([np.stack([gray[:, r][:, :, c].mean(axis=(1, 2)) for c in cols], -1)
                      for r in rows], -2)  # area average to [N, 24, 24]
    return small.reshape(n, -1)


# Scaled distance below which two evaluated states count as the same state (see `lookalike`).
LOOKALIKE_RESOLUTION = 0.05


def lookalike(states: np.ndarray, proto_states: np.ndarray, top1: np.ndarray,
              pixels: bool = False, resolution: float = LOOKALIKE_RESOLUTION,
              block: int = 1024) -> float:
    """Median over decisions of the share of evaluated states farther from the decision's
    state than its top-1 prototype's state is (observation space; each dim scaled by its std
    over the evaluated states; pixels on 24x24 grayscale). 1.0: the prototype shown is the
    state most like the one explained; ~0.5: no closer than a typical evaluated state.

    Evaluated states within `resolution` of the decision's state are the same state and are
    left out of its comparison (and a prototype that close scores 1): a policy that settles at
    a fixed point (a balanced pendulum) repeats one state for most of an episode, and without
    this every other copy of it would count as "more alike" than any prototype that is not
    bit-for-bit that state. `resolution=0` gives the plain rank.
    """
    x = lookalike_features(states, pixels)
    p = lookalike_features(proto_states, pixels)
    if not pixels:
        scale = x.std(axis=0)
        scale = np.where(scale > 1e-12, scale, 1.0)
        x, p = x / scale, p / scale
    tol = resolution ** 2
    shares = []
    for start in range(0, len(x), block):
        xb = x[start:start + block]
        to_all = ((xb[:, None, :] - x[None, :, :]) ** 2).sum(-1)  # [b, N]
        to_proto = ((xb - p[top1[start:start + block]]) ** 2).sum(-1)  # [b]
        other = to_all >= tol if tol > 0 else np.ones_like(to_all, bool)
        farther = ((to_all > to_proto[:, None]) & other).sum(1) / np.maximum(other.sum(1), 1)
        shares.append(np.where((to_proto < tol) & (tol > 0), 1.0, farther))
    return float(np.median(np.concatenate(shares)))


def decision_metrics(weights, proto_means, actions, states, proto_states, pixels: bool = False,
                     return_full=None, return_nearest=None, return_random=None) -> dict:
    """The readability of a set of evaluated decisions (viz.json "decisions").

    weights [N, K], proto_means [K, A] (pre-squash), actions [N, A] taken (in [-1, 1]),
    states [N, *obs] the evaluated (raw) observations, proto_states [K, *obs] the states shown
    for the prototypes. Returns effective_prototypes, top1_weight, top1_agreement
    (prototype.decision_stats), lookalike, and, given the three returns,
    nearest_prototype_score = (R_nearest - R_random) / (R_full - R_random).
    """
    from protosac_jax.prototype import decision_stats

    weights = np.asarray(weights, np.float32)
    out = {k: float(v) for k, v in decision_stats(
        jnp.asarray(weights), jnp.asarray(proto_means, jnp.float32),
        jnp.asarray(actions, jnp.float32)).items()}
    out["lookalike"] = lookalike(states, proto_states, np.argmax(weights, axis=-1), pixels)
    out["decisions"] = int(weights.shape[0])
    if return_full is not None:
        out.update(return_full=float(return_full), return_nearest_prototype=float(return_nearest),
                   return_random=float(return_random))
        span = return_full - return_random
        out["nearest_prototype_score"] = (
            float((return_nearest - return_random) / span) if abs(span) > 1e-9 else None)
    return out


# ----------------------------------------------------------------------------- pruning
PROTOTYPE_LEAVES = ("prototypes", "proto_means", "proto_log_stds", "proto_gains",
                    "prototype_states")


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
