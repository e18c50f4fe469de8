"""ProtoSAC: an actor made of prototypes ("This State Looks Like That").

The whole method in one file, as pure functions on pytrees.

Notation: obs x, encoder f, latent z = f(x) in R^D (scaled to unit length when
`normalize_latent`, the default), prototypes P = (p_1..p_K) in R^{K x D}. Prototype k owns a
state-independent Gaussian over pre-squash actions: mean m_k, log-std l_k.

0. Prototypes  source `states` (default): p_k = f(x_k), the encoding of a stored real state x_k,
               recomputed with the current encoder at every call, so the state shown for a
               prototype is exactly what decisions compare with. source `free` (the original):
               p_k are trainable vectors, moved onto real states only at projections.
1. Distances   d_k = ||z - p_k||^2.
2. Similarity  `softmax` s_k = -d_k / tau (a logit; default)
               `rbf`     s_k = exp(-d_k / tau)
               `log`     s_k = log((d_k/tau + 1) / (d_k/tau + eps))   (ProtoPNet, tau = 1)
   Weights     w = softmax(s) for softmax, w = s / sum(s) for log and rbf (normalised, `rbf`
   and `softmax` give the same weights; they differ in the similarity reported to users).
   Temperature tau is fixed, or (`target_weight_entropy` H*) learned by dual ascent as SAC's
   alpha: loss += log(tau) * sg(T_q[H(w_b)] - H*), with sg(tau) in the weights, so decisions
   stay as crisp as asked whatever the env's latent scale. T_q is the mean of the batch's
   largest share q (`constraint_share`, default 0.25) of values, so the most blended quarter
   of states is held at H*, not the batch average.
3. Policy      `blend` (default): u ~ N(sum_k w_k m_k, sum_k w_k exp(l_k)), a = tanh(u).
               `mixture`: u ~ sum_k w_k N(m_k, exp(l_k)), a = tanh(u);
               log pi(u) = logsumexp_k(log w_k + log N(u; m_k, exp(l_k))).
   Both: log pi(a) = log pi(u) - sum log(1 - tanh(u)^2).
   Local feedback (`local_gain` b > 0, blend): prototype k's mean at a state is
               m_k + c_k(z),  c_k(z) = b tanh(G_k (z - p_k) / b)  (G_k [A, D] learned, from 0):
   exactly m_k at its own state, at most +-b away elsewhere: state feedback inside a cell (a
   constant action per cell has none), while m_k still says what is done there.
   Mixture gradients: the component index is discrete, so instead of sampling it we take one
   reparameterised sample u_k = m_k + exp(l_k) eps_k from *every* component and weight its loss
   term by w_k: E_pi[g(a)] = sum_k w_k E_eps[g(tanh(u_k))]. This is the exact (Rao-Blackwellised)
   expectation over the component, unbiased and differentiable in w, m and l, at K times the
   critic evaluations of the blend.
4. Auxiliary losses (added to the actor loss):
   orthogonality  ||P^ P^T - I||_F^2, P^ = row-normalised P  (prototypes stay distinct)
   weight entropy mean_b H(w_b)        (minimised: crisp per-state assignment)
   usage entropy  H(mean_b w_b)        (maximised: every prototype gets used)
   proximity      mean_k min_b ||sg(z_b) - p_k||^2  (Li et al. 2018's R1: each prototype stays
                  near some encoded state, so projection barely moves it; sg = stop-gradient)
   aux = c_ortho * ortho + c_went * weight_entropy - c_usage * usage_entropy + c_prox * proximity
   (+ the temperature's dual term, + lambda * T_q[action spread] with a learned lambda when
   `target_action_spread` is set (default 0.04): spread_b = sum_k w_bk (tanh m_k - a_bar_b)^2,
   through the heads only, so prototypes that share a decision agree on it).
5. Projection (every M updates). `free`: p_k <- f(x_j*) with j* = argmin_j ||f(x_j) - p_k||^2
   over the replay buffer. `states`: x_k is re-chosen (k-means of encoded replay samples from
   the current prototypes, each centre snapped to its nearest sampled state). Either way the
   buffer index, the obs and the env's render state are kept as provenance, and (blend) the
   Gaussians are re-fitted so the policy survives the move.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from protosac_jax.config import PrototypeConfig, is_static_zero
from protosac_jax.networks import MLP, gaussian_log_prob, tanh_log_det


def _uniform_symmetric(scale: float):
    """U(-scale, scale): prototype means disagree from the first step."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -scale, scale)

    return init


class ProtoNet(nn.Module):
    """Trainable parameters of the prototype actor: encoder, per-prototype Gaussians, and
    (source "free") the prototype vectors or (learned temperature) log tau."""

    encoder_hidden: Sequence[int]
    latent_dim: int
    num_prototypes: int
    action_dim: int
    init_log_std: float = 0.0
    free_prototypes: bool = True
    init_temperature: float | None = None  # set: log tau is a learned parameter
    learn_spread_coef: bool = False  # log lambda of the action-spread penalty is learned
    local_gains: bool = False  # per-prototype gains G_k [A, D] of the local feedback
    layer_norm: bool = False  # LayerNorm in the encoder's hidden layers (networks.MLP)
    zero_means: bool = False  # every m_k starts at 0 (SACConfig.zero_init_heads)

    def setup(self):
        self.encoder = MLP(self.encoder_hidden, self.latent_dim, self.layer_norm)
        if self.free_prototypes:
            self.prototypes = self.param(
                "prototypes", nn.initializers.normal(1.0),
                (self.num_prototypes, self.latent_dim))
        self.proto_means = self.param(
            "proto_means", nn.initializers.zeros if self.zero_means else _uniform_symmetric(0.5),
            (self.num_prototypes, self.action_dim))
        self.proto_log_stds = self.param(
            "proto_log_stds", nn.initializers.constant(self.init_log_std),
            (self.num_prototypes, self.action_dim))
        if self.init_temperature is not None:
            self.log_temperature = self.param(
                "log_temperature", nn.initializers.constant(_log(self.init_temperature)),
                ())
        if self.learn_spread_coef:
            self.log_spread_coef = self.param("log_spread_coef", nn.initializers.zeros, ())
        if self.local_gains:
            # zeros: the policy starts as the constant-action one
            self.proto_gains = self.param(
                "proto_gains", nn.initializers.zeros,
                (self.num_prototypes, self.action_dim, self.latent_dim))

    def __call__(self, obs):
        return self.encoder(obs), self.proto_means, self.proto_log_stds

    def encode(self, obs):
        return self.encoder(obs)


# ----------------------------------------------------------------------------- pure math
def squared_distances(latents, prototypes):
    """d[b, k] = ||z_b - p_k||^2 via the expanded form (one matmul), clamped at 0."""
    cross = latents @ prototypes.T
    d = (jnp.sum(latents**2, -1, keepdims=True) - 2.0 * cross
         + jnp.sum(prototypes**2, -1)[None, :])
    return jnp.maximum(d, 0.0)


def _log(x):
    """log of a Python float as before (exactly), or of a traced scalar (a swept value)."""
    return math.log(x) if isinstance(x, (int, float)) else jnp.log(x)


def similarities(distances, kind: str, temperature: float = 1.0, log_eps: float = 1e-4):
    """Similarity s_k(d_k) of each prototype (see module docstring)."""
    if kind == "log":
        scaled = distances / temperature
        return jnp.log((scaled + 1.0) / (scaled + log_eps))
    if kind == "rbf":
        return jnp.exp(-distances / temperature)
    if kind == "softmax":
        return -distances / temperature
    raise ValueError(f"unknown similarity {kind!r}")


def proto_weights(distances, kind: str, temperature: float = 1.0, log_eps: float = 1e-4):
    """Normalised weights w[b, k] >= 0, sum_k w[b, k] = 1."""
    if kind == "log":
        sim = similarities(distances, kind, temperature, log_eps)
        return sim / jnp.sum(sim, -1, keepdims=True)
    if kind in ("rbf", "softmax"):
        # exp(-d/tau) / sum exp(-d/tau) == softmax(-d/tau); softmax is the stable form.
        return jax.nn.softmax(-distances / temperature, axis=-1)
    raise ValueError(f"unknown similarity {kind!r}")


def unit_rows(x):
    """Rows scaled to unit L2 norm (`normalize_latent`): squared distances lie in [0, 4]."""
    return x * jax.lax.rsqrt(jnp.sum(x**2, axis=-1, keepdims=True) + 1e-12)


def entropy(p, axis=-1):
    return -jnp.sum(p * jnp.log(jnp.clip(p, 1e-12, 1.0)), axis=axis)


def orthogonality_loss(prototypes):
    """||P^ P^T - I||_F^2 with unit-norm rows P^."""
    # sqrt(. + eps), not jnp.linalg.norm: a zero prototype (the encoding of an all-zero obs
    # through zero-initialised biases) must not turn the gradient into NaN
    unit = prototypes * jax.lax.rsqrt(jnp.sum(prototypes**2, axis=-1, keepdims=True) + 1e-12)
    gram = unit @ unit.T
    return jnp.sum((gram - jnp.eye(prototypes.shape[0])) ** 2)


def weighted_corrections(weights, corrections):
    """sum_k w_bk c_bk [B, A]: how far the local corrections move the blend's mean."""
    return jnp.einsum("bk,bka->ba", weights, corrections)


def blend_mean(weights, means, corrections=None):
    """w @ m, plus sum_k w_k c_k with local corrections c [B, K, A] (pre-squash)."""
    mean = weights @ means
    if corrections is not None:
        mean = mean + weighted_corrections(weights, corrections)
    return mean


def blend_params(weights, means, log_stds, corrections=None):
    """Blend: mean = w @ m (+ sum_k w_k c_k with local corrections), std = w @ exp(l)."""
    return blend_mean(weights, means, corrections), weights @ jnp.exp(log_stds)


def local_corrections(gains, latents, prototypes, bound):
    """c[b, k] = bound * tanh(G_k (z_b - p_k) / bound) [B, K, A]: prototype k's bounded local
    feedback at latent z_b (0 at its own state; slope G_k there)."""
    offset = (jnp.einsum("kad,bd->bka", gains, latents)
              - jnp.einsum("kad,kd->ka", gains, prototypes)[None])
    # a swept (traced) bound may be 0: no feedback, and no 0/0 in the value or the gradient
    return bound * jnp.tanh(offset / jnp.maximum(bound, 1e-12))


def mixture_log_prob(u, weights, means, log_stds):
    """log sum_k w_k N(u; m_k, exp(l_k)) for u[..., A], weights[..., K]."""
    comp = gaussian_log_prob(u[..., None, :], means, jnp.exp(log_stds))  # [..., K]
    return jax.nn.logsumexp(comp + jnp.log(jnp.clip(weights, 1e-30, 1.0)), axis=-1)


def squashed_blend_log_prob(u, weights, means, log_stds):
    mean, std = blend_params(weights, means, log_stds)
    return gaussian_log_prob(u, mean, std) - tanh_log_det(u)


def squashed_mixture_log_prob(u, weights, means, log_stds):
    return mixture_log_prob(u, weights, means, log_stds) - tanh_log_det(u)


# ----------------------------------------------------------------------------- the actor
@flax.struct.dataclass
class ProtoOutputs:
    latents: jax.Array  # [B, D]
    distances: jax.Array  # [B, K]
    weights: jax.Array  # [B, K]
    means: jax.Array  # [K, A]  pre-squash
    log_stds: jax.Array  # [K, A]
    prototypes: jax.Array  # [K, D]
    # [B, K, A] pre-squash local feedback of each prototype at each state (local_gain > 0);
    # None: every prototype's action is its constant m_k
    corrections: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class ProtoActor:
    """The ProtoSAC actor, with the interface of networks.GaussianActor."""

    action_dim: int
    cfg: PrototypeConfig = PrototypeConfig()
    hidden_sizes: tuple[int, ...] = (256, 256)
    layer_norm: bool = False  # in the encoder (SACConfig.layer_norm "all")
    zero_init_heads: bool = False  # SACConfig.zero_init_heads: every m_k starts at 0

    @property
    def states_source(self) -> bool:
        """Prototypes are encodings of stored states (cfg.source == "states")."""
        return self.cfg.source == "states"

    @property
    def learns_temperature(self) -> bool:
        return self.cfg.target_weight_entropy is not None

    @property
    def net(self) -> ProtoNet:
        return ProtoNet(
            encoder_hidden=tuple(self.cfg.encoder_hidden or self.hidden_sizes),
            latent_dim=self.cfg.latent_dim,
            num_prototypes=self.cfg.num_prototypes,
            action_dim=self.action_dim,
            init_log_std=self.cfg.init_log_std,
            free_prototypes=not self.states_source,
            init_temperature=self.cfg.temperature if self.learns_temperature else None,
            learn_spread_coef=self.cfg.target_action_spread is not None,
            local_gains=self.has_local_gain,
            layer_norm=self.layer_norm,
            zero_means=self.zero_init_heads,
        )

    @property
    def has_local_gain(self) -> bool:
        """Prototypes act with local feedback (cfg.local_gain; a traced, swept value counts).
        A blend's only: config.validate refuses a nonzero gain with a mixture."""
        return self.cfg.distribution == "blend" and not is_static_zero(self.cfg.local_gain)

    def init(self, key, obs):
        """Variables: {"params": trainable} and, for source "states", the network-ready
        prototype states {"prototype_states": [K, *obs]} (a constant of the gradient step, as
        flax's non-"params" collections are; placeholders until the first selection)."""
        variables = {"params": self.net.init(key, obs)["params"]}
        if self.states_source:
            variables["prototype_states"] = jnp.zeros(
                (self.cfg.num_prototypes,) + obs.shape[1:], obs.dtype)
        return variables

    def encode(self, params, obs):
        """Latents z = f(x) as the similarities see them (unit length if normalize_latent)."""
        z = self.net.apply({"params": params["params"]}, obs, method=ProtoNet.encode)
        return unit_rows(z) if self.cfg.normalize_latent else z

    def prototypes(self, params):
        """The prototypes P [K, D] the policy compares states with."""
        return self._latents_and_prototypes(params, None)[1]

    def temperature(self, params):
        if self.learns_temperature:
            return jnp.exp(jax.lax.stop_gradient(params["params"]["log_temperature"]))
        return jnp.asarray(self.cfg.temperature, jnp.float32)

    def _latents_and_prototypes(self, params, obs):
        if self.states_source:
            states = params["prototype_states"]
            if obs is None:
                return None, self.encode(params, states)
            # one encoder pass for the batch and the K prototype states
            both = self.encode(params, jnp.concatenate([obs, states.astype(obs.dtype)]))
            return both[:obs.shape[0]], both[obs.shape[0]:]
        prototypes = params["params"]["prototypes"]
        if self.cfg.normalize_latent:
            prototypes = unit_rows(prototypes)
        return (None if obs is None else self.encode(params, obs)), prototypes

    def forward(self, params, obs) -> ProtoOutputs:
        latents, prototypes = self._latents_and_prototypes(params, obs)
        means = params["params"]["proto_means"]
        log_stds = jnp.clip(params["params"]["proto_log_stds"], self.cfg.log_std_min,
                            self.cfg.log_std_max)
        distances = squared_distances(latents, prototypes)
        weights = proto_weights(distances, self.cfg.similarity, self.temperature(params),
                                self.cfg.log_eps)
        corrections = None
        if self.has_local_gain:
            corrections = local_corrections(params["params"]["proto_gains"], latents,
                                            prototypes, self.cfg.local_gain)
        return ProtoOutputs(latents, distances, weights, means, log_stds, prototypes,
                            corrections)

    # -- the actor interface ------------------------------------------------------------
    def samples(self, params, obs, key):
        return self._samples(self.forward(params, obs), obs.shape[0], key)

    def samples_with_aux(self, params, obs, key):
        """`samples` and `aux_loss` from one forward pass (the actor loss needs both); the
        samples' weights take their gradient as `_learning_weights` says (only the actor loss
        differentiates through them: `samples` feeds the critic's target)."""
        out = self.forward(params, obs)
        return (self._samples(self._learning_weights(params, out), obs.shape[0], key),
                self._aux(params, out))

    def _learning_weights(self, params, out: ProtoOutputs) -> ProtoOutputs:
        """`out` whose weights take their gradient at temperature c x tau
        (cfg.backward_temperature_scale c > 1): the same values (the crisp weights), the
        softer weights' derivatives (straight-through)."""
        scale = self.cfg.backward_temperature_scale
        if isinstance(scale, (int, float)) and scale == 1:
            return out
        soft = proto_weights(out.distances, self.cfg.similarity,
                             self.temperature(params) * scale, self.cfg.log_eps)
        return out.replace(weights=out.weights + soft - jax.lax.stop_gradient(soft))

    def _samples(self, out: ProtoOutputs, batch: int, key):
        if self.cfg.distribution == "blend":
            mean, std = blend_params(out.weights, out.means, out.log_stds, out.corrections)
            u = mean + std * jax.random.normal(key, mean.shape)
            log_prob = gaussian_log_prob(u, mean, std) - tanh_log_det(u)
            return jnp.tanh(u)[:, None], log_prob[:, None], jnp.ones_like(log_prob)[:, None]
        # mixture: one sample per component, weighted by w (see module docstring).
        eps = jax.random.normal(key, (batch, self.cfg.num_prototypes, self.action_dim))
        u = out.means[None] + jnp.exp(out.log_stds)[None] * eps  # [B, K, A]
        log_prob = jax.vmap(squashed_mixture_log_prob, in_axes=(1, None, None, None),
                            out_axes=1)(u, out.weights, out.means, out.log_stds)
        return jnp.tanh(u), log_prob, out.weights

    def act(self, params, obs, noise, key):
        out = self.forward(params, obs)
        if self.cfg.distribution == "blend":
            mean, std = blend_params(out.weights, out.means, out.log_stds, out.corrections)
            return jnp.tanh(mean + std * noise)
        component = jax.random.categorical(key, jnp.log(jnp.clip(out.weights, 1e-30, 1.0)))
        return jnp.tanh(out.means[component] + jnp.exp(out.log_stds[component]) * noise)

    def deterministic(self, params, obs):
        return self.deterministic_from(self.forward(params, obs))

    def deterministic_from(self, out: ProtoOutputs):
        return self.action_from_weights(out.weights, out.means, out.corrections)

    @property
    def decides_top1(self) -> bool:
        """The deterministic action is the top prototype's own (cfg.decide)."""
        return self.cfg.decide == "top1" or (self.cfg.decide == "auto"
                                             and self.cfg.distribution == "mixture")

    def action_from_weights(self, weights, means, corrections=None):
        """The deterministic action for weights [B, K]: the top prototype's own action
        tanh(m_argmax w) (decide top1; for a mixture, the mode-seeking choice) or the blend's
        mean tanh(w @ m) (decide mean); with local corrections c [B, K, A] each prototype's
        action at the state is m_k + c_k."""
        if self.decides_top1:
            top = jnp.argmax(weights, axis=-1)
            pre = means[top]
            if corrections is not None:
                pre = pre + jnp.take_along_axis(corrections, top[:, None, None], axis=1)[:, 0]
            return jnp.tanh(pre)
        return jnp.tanh(blend_mean(weights, means, corrections))

    def aux_loss(self, params, obs):
        return self._aux(params, self.forward(params, obs))

    def _aux(self, params, out: ProtoOutputs):
        ortho = orthogonality_loss(out.prototypes)
        entropies = entropy(out.weights)
        weight_entropy = jnp.mean(entropies)
        usage_entropy = entropy(jnp.mean(out.weights, axis=0))
        proximity = jnp.mean(jnp.min(
            squared_distances(jax.lax.stop_gradient(out.latents), out.prototypes), axis=0))
        loss = (self.cfg.ortho_coef * ortho + self.cfg.weight_entropy_coef * weight_entropy
                - self.cfg.usage_entropy_coef * usage_entropy
                + self.cfg.proximity_coef * proximity)
        metrics = {}
        if self.learns_temperature:
            # dual ascent as SAC's alpha: tau falls while H(w) (its most blended share of
            # states) is above its target
            held_entropy = tail_mean(entropies, self.cfg.constraint_share)
            gap = jax.lax.stop_gradient(held_entropy - self.cfg.target_weight_entropy)
            metrics["proto/weight_entropy_held"] = held_entropy
            loss = loss + params["params"]["log_temperature"] * gap
        if self.cfg.target_action_spread is not None:
            # through the heads only (weights stop-gradient): prototypes that share decisions
            # move their actions together; the encoder is not pushed to regroup states
            per_state = action_spread(jax.lax.stop_gradient(out.weights), out.means)
            spread = tail_mean(per_state, self.cfg.constraint_share)
            log_coef = params["params"]["log_spread_coef"]
            # the penalty lambda * spread shapes the actor; lambda rises while the spread is
            # above its target and falls (towards no penalty) while it is below
            loss = (loss + jnp.exp(jax.lax.stop_gradient(log_coef)) * spread
                    - log_coef * jax.lax.stop_gradient(spread - self.cfg.target_action_spread))
            metrics.update({"proto/action_spread": jnp.mean(per_state),
                            "proto/action_spread_held": spread,
                            "proto/spread_coef": jnp.exp(log_coef)})
        usage = jnp.mean(out.weights, axis=0)
        # agreement of the top prototype with the blend's mean (the centre of the exploring
        # policy); with decide top1 the deterministic action agrees by construction
        decisions = decision_stats(out.weights, out.means,
                                   jnp.tanh(blend_mean(out.weights, out.means, out.corrections)))
        if out.corrections is not None:
            # how far the local feedback moves the blend's mean from the heads' own (pre-squash)
            metrics["proto/correction"] = jnp.mean(jnp.abs(
                weighted_corrections(out.weights, out.corrections)))
        return loss, {
            # prototypes whose batch usage is below 1/(10 K): effectively unused
            "proto/dead": jnp.sum(usage < 0.1 / usage.shape[0]).astype(jnp.float32),
            "proto/orthogonality": ortho,
            "proto/weight_entropy": weight_entropy,
            "proto/usage_entropy": usage_entropy,
            "proto/proximity": proximity,
            "proto/temperature": self.temperature(params),
            "proto/effective": decisions["effective_prototypes"],
            "proto/top1_weight": decisions["top1_weight"],
            "proto/top1_agreement": decisions["top1_agreement"],
            **metrics,
        }


def drift(actor: ProtoActor, params, states):
    """[K] latent distance between each prototype and the encoding of the (network-ready)
    state shown for it: 0 by construction for source "states", the real gap for "free"."""
    return jnp.linalg.norm(actor.prototypes(params) - actor.encode(params, states), axis=-1)


# ----------------------------------------------------------------------------- decisions
AGREEMENT_TOLERANCE = 0.25  # mean |a - tanh(m_top1)| over action dims, policy units [-1, 1]


def tail_mean(values, share: float):
    """Mean of the largest `share` of `values` [B] (at least one; share 1 = the plain mean):
    what the learned temperature and spread penalty hold at their targets. A batch mean would
    let a minority of states stay blended, and that minority can be most of what a policy
    visits late (a balanced pendulum: 3 of 8 seeds decided by two disagreeing prototypes)."""
    count = max(1, int(round(share * values.shape[0])))
    if count >= values.shape[0]:
        return jnp.mean(values)
    return jnp.mean(jax.lax.top_k(values, count)[0])


def action_spread(weights, means):
    """[B] within-decision spread of the prototypes' own actions (policy units):
    sum_k w_k ||tanh(m_k) - a_bar||^2 / A, a_bar = sum_k w_k tanh(m_k)."""
    own = jnp.tanh(means)  # [K, A]
    centre = weights @ own  # [B, A]
    return jnp.mean(weights @ own**2 - centre**2, axis=-1)


def decision_stats(weights, means, actions):
    """How crisp and how readable decisions are, from weights [B, K], prototype means [K, A]
    (pre-squash) and the actions taken [B, A] in [-1, 1]:

    effective_prototypes  mean_b exp(H(w_b))     (1 = a single prototype decides)
    top1_weight           mean_b max_k w_bk
    top1_agreement        share of b with mean_dims |a_b - tanh(m_top1(b))| <= 0.25
    """
    top1 = jnp.argmax(weights, axis=-1)
    gap = jnp.mean(jnp.abs(actions - jnp.tanh(means[top1])), axis=-1)
    return {
        "effective_prototypes": jnp.mean(jnp.exp(entropy(weights))),
        "top1_weight": jnp.mean(jnp.max(weights, axis=-1)),
        "top1_agreement": jnp.mean((gap <= AGREEMENT_TOLERANCE).astype(jnp.float32)),
    }


# ----------------------------------------------------------------------------- k-means init
def kmeans(points, num_clusters: int, iters: int, init=None):
    """Lloyd's k-means of `points` [N, D] from centres `init` [K, D] (default: the first
    `num_clusters` points; pass a random sample). A cluster left empty restarts at one of the
    points farthest from their centres, so no centre stays dead. Returns [K, D]."""
    if init is None:
        init = points[jnp.arange(num_clusters) % points.shape[0]]
    num_far = min(num_clusters, points.shape[0])

    def lloyd(_, centres):
        d = squared_distances(points, centres)  # [N, K]
        assign = jnp.argmin(d, axis=-1)
        onehot = jax.nn.one_hot(assign, num_clusters, dtype=points.dtype)  # [N, K]
        counts = jnp.sum(onehot, axis=0)
        sums = onehot.T @ points
        far = jax.lax.top_k(jnp.min(d, axis=-1), num_far)[1]
        rank = jnp.clip(jnp.cumsum(counts == 0) - 1, 0, num_far - 1)
        return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None],
                         points[far[rank]])

    return jax.lax.fori_loop(0, iters, lloyd, init)


def kmeans_init(actor: ProtoActor, params, obs):
    """Prototypes <- k-means centres of the encoded states `obs` (network-ready, e.g. a random
    replay sample of warm-up states). Only the prototypes change."""
    centres = kmeans(actor.encode(params, obs), actor.cfg.num_prototypes,
                     actor.cfg.kmeans_iters)
    inner = dict(params["params"])
    inner["prototypes"] = centres
    return {**params, "params": inner}


# ----------------------------------------------------------------------------- projection
@flax.struct.dataclass
class Provenance:
    """Where each prototype came from: the real buffer state it was projected onto."""

    buffer_index: jax.Array  # [K] int32, -1 before the first projection
    obs: jax.Array  # [K, *obs_shape]
    render_state: jax.Array  # [K, R] what the env needs to draw that state
    update_step: jax.Array  # [K] gradient-update count at projection, -1 before
    distance: jax.Array  # [K] latent distance moved by the last projection (churn)

    @classmethod
    def empty(cls, num_prototypes: int, obs_example, render_example) -> "Provenance":
        return cls(
            buffer_index=-jnp.ones((num_prototypes,), jnp.int32),
            obs=jnp.zeros((num_prototypes,) + obs_example.shape, obs_example.dtype),
            render_state=jnp.zeros((num_prototypes,) + render_example.shape,
                                   render_example.dtype),
            update_step=-jnp.ones((num_prototypes,), jnp.int32),
            distance=jnp.zeros((num_prototypes,), jnp.float32),
        )


def nearest_buffer_states(actor: ProtoActor, params, buffer_obs, size, chunk: int,
                          obs_transform=None):
    """Buffer row of each prototype's projection: its nearest encoded state, distinct rows.

    Encodes the buffer in blocks of `chunk` rows (memory O(chunk * K)); rows >= size are
    ignored. Each prototype keeps its K nearest rows as candidates; then, in order of their
    nearest distance, prototypes take their nearest candidate not already taken, so no two
    prototypes become the same state (each has K candidates, so one is always free; with
    fewer than K valid rows duplicates are unavoidable and allowed).
    """
    transform = obs_transform or (lambda o: o)
    capacity = buffer_obs.shape[0]
    chunk = min(chunk, capacity)
    nominal = jnp.arange(0, capacity, chunk)
    prototypes = actor.prototypes(params)
    num_prototypes = prototypes.shape[0]
    num_candidates = min(num_prototypes, capacity)

    def block(carry, nominal_start):
        best_d, best_i = carry  # [K, C] ascending
        start = jnp.minimum(nominal_start, capacity - chunk)  # the last block may overlap
        rows = transform(jax.lax.dynamic_slice_in_dim(buffer_obs, start, chunk, axis=0))
        d = squared_distances(actor.encode(params, rows), prototypes).T  # [K, chunk]
        index = start + jnp.arange(chunk)
        valid = (index < size) & (index >= nominal_start)  # overlap rows were seen already
        d = jnp.where(valid[None], d, jnp.inf)
        all_d = jnp.concatenate([best_d, d], axis=1)
        all_i = jnp.concatenate([best_i, jnp.broadcast_to(index, d.shape)], axis=1)
        neg_d, pos = jax.lax.top_k(-all_d, num_candidates)
        return (-neg_d, jnp.take_along_axis(all_i, pos, axis=1)), None

    init = (jnp.full((num_prototypes, num_candidates), jnp.inf),
            jnp.zeros((num_prototypes, num_candidates), jnp.int32))
    (cand_d, cand_i), _ = jax.lax.scan(block, init, nominal)

    return distinct_nearest(cand_d, cand_i)


def distinct_nearest(cand_d, cand_i):
    """One row id per prototype from its candidates (ids `cand_i` [K, C], distances `cand_d`
    ascending): in order of their nearest distance, prototypes take their nearest candidate
    not already taken (with C >= K one is always free unless fewer than K ids are valid,
    when a duplicate is allowed)."""
    num_prototypes = cand_d.shape[0]

    def assign(n, chosen):
        k = order[n]
        taken = jnp.any(cand_i[k][:, None] == chosen[None, :], axis=1)
        free = jnp.logical_and(~taken, jnp.isfinite(cand_d[k]))
        pick = jnp.where(jnp.any(free), jnp.argmax(free), 0)  # none free: allow a duplicate
        return chosen.at[k].set(cand_i[k, pick])

    order = jnp.argsort(cand_d[:, 0])
    return jax.lax.fori_loop(0, num_prototypes, assign,
                             jnp.full((num_prototypes,), -1, jnp.int32))


def spd_solve(a, b):
    """x = a^-1 b for a symmetric positive definite `a` [K, K], b [K, N]: Cholesky and two
    triangular solves written as `fori_loop`s over the K columns, in plain XLA ops.

    Not `jnp.linalg.solve`: its LAPACK kernel, batched (a seed group vmaps it), splits the
    batch over XLA's CPU thread pool and blocks a pool thread until the parts finish. On this
    2-core machine both pool threads ended up blocked that way, and the run hung at its first
    projection (Pendulum, 14 seeds, 128 prototypes: every time). O(K^3) like LU; K is the
    number of prototypes (32 by default).
    """
    k = a.shape[0]
    idx = jnp.arange(k)

    def chol_column(j, low):
        # low holds columns < j of L; column j from a[:, j] - L[:, :j] L[j, :j]
        row_j = jnp.where(idx < j, low[j], 0.0)
        col = a[:, j] - low @ row_j
        pivot = jnp.sqrt(jnp.maximum(col[j], 1e-30))
        col = jnp.where(idx > j, col / pivot, jnp.where(idx == j, pivot, 0.0))
        return low.at[:, j].set(col)

    low = jax.lax.fori_loop(0, k, chol_column, jnp.zeros_like(a))

    def forward(i, y):  # L y = b, row i
        return y.at[i].set((b[i] - jnp.where(idx < i, low[i], 0.0) @ y) / low[i, i])

    y = jax.lax.fori_loop(0, k, forward, jnp.zeros_like(b))

    def backward(step, x):  # L^T x = y, row i = k-1-step
        i = k - 1 - step
        return x.at[i].set((y[i] - jnp.where(idx > i, low[:, i], 0.0) @ x) / low[i, i])

    return jax.lax.fori_loop(0, k, backward, jnp.zeros_like(b))


def refit_heads(actor: ProtoActor, old_params, new_params, obs, ridge: float):
    """Re-fit the prototypes' Gaussians after a projection so the policy barely changes.

    Moving the prototypes changes every state's weights w, so the blended action mean
    sum_k w_k m_k (and std) changes with them: measured on Hopper-v5, projection alone dropped
    the return from ~900 to ~10. The means M [K, A] and stds S = exp(l) [K, A] enter the blend
    linearly, so the closest policy under the new weights W' on the states `obs` is a ridge
    least-squares fit (closed form, K x K solve), shrunk towards the old heads:
        M' = (W'^T W' + lam I)^-1 (W'^T mu_old + lam M),  mu_old = W M   (same for S).
    """
    old = actor.forward(old_params, obs)
    new = actor.forward(new_params, obs)
    old_stds = jnp.exp(old.log_stds)
    gram = new.weights.T @ new.weights
    lam = ridge * jnp.trace(gram) / gram.shape[0] + 1e-8
    lhs = gram + lam * jnp.eye(gram.shape[0])
    # with local feedback (gains kept) the heads fit what the new corrections leave over:
    # W' M' ~ mu_old - sum_k w'_k c'_k
    target = blend_mean(old.weights, old.means, old.corrections)
    if new.corrections is not None:
        target = target - weighted_corrections(new.weights, new.corrections)
    rhs = jnp.concatenate([new.weights.T @ target + lam * old.means,
                           new.weights.T @ (old.weights @ old_stds) + lam * old_stds], axis=1)
    solved = spd_solve(lhs, rhs)
    means, stds = solved[:, :old.means.shape[1]], solved[:, old.means.shape[1]:]
    log_stds = jnp.log(jnp.clip(stds, jnp.exp(actor.cfg.log_std_min),
                                jnp.exp(actor.cfg.log_std_max)))
    inner = dict(new_params["params"])
    inner["proto_means"] = means
    inner["proto_log_stds"] = log_stds
    return {**new_params, "params": inner}


def project_prototypes(actor: ProtoActor, params, buffer_obs, buffer_render, size,
                       update_step, chunk: int = 4096, obs_transform=None,
                       refit_obs=None) -> tuple[Any, Provenance]:
    """Replace every prototype by the encoding of its nearest buffer state.

    `obs_transform` maps raw buffer obs to what the encoder sees (obs normalisation); the
    provenance keeps the raw obs. With `refit_obs` (raw obs, e.g. a replay sample) the
    prototypes' Gaussians are re-fitted so the policy on those states is preserved
    (`refit_heads`).
    """
    transform = obs_transform or (lambda o: o)
    index = nearest_buffer_states(actor, params, buffer_obs, size, chunk, obs_transform)
    obs = buffer_obs[index]
    new_prototypes = actor.encode(params, transform(obs))
    old = actor.prototypes(params)
    inner = dict(params["params"])
    inner["prototypes"] = new_prototypes
    new_params = {**params, "params": inner}
    if refit_obs is not None and actor.cfg.distribution == "blend":
        new_params = refit_heads(actor, params, new_params, transform(refit_obs),
                                 actor.cfg.refit_ridge)
    provenance = Provenance(
        buffer_index=index.astype(jnp.int32),
        obs=obs,
        render_state=buffer_render[index],
        update_step=jnp.full(index.shape, update_step, jnp.int32),
        distance=jnp.linalg.norm(new_prototypes - old, axis=-1),
    )
    return new_params, provenance


def candidate_rows(key, count: int, size, newest=None, recent_share=0.0,
                   recent_window=0.2):
    """`count` buffer rows for k-means: uniform over the `size` valid rows, except that each
    is drawn with probability `recent_share` from the newest `recent_window` of them (`newest`
    is the row written last; a ring buffer wraps). Shares may be traced (--sweep)."""
    size = jnp.maximum(size, 1)
    # the uniform rows from `key` itself: share 0 (also a swept, traced 0) draws exactly the
    # rows of the plain uniform selection
    uniform = jax.random.randint(key, (count,), 0, size)
    if newest is None:
        return uniform
    k_recent, k_pick = jax.random.fold_in(key, 1), jax.random.fold_in(key, 2)
    window = jnp.maximum(1, jnp.floor(recent_window * size).astype(jnp.int32))
    back = jax.random.randint(k_recent, (count,), 0, window)
    recent = jnp.mod(newest - back, size)  # rows [0, size) are valid; full: the whole ring
    return jnp.where(jax.random.uniform(k_pick, (count,)) < recent_share, recent, uniform)


def _gather_rows(table, extra, rows):
    """Rows of `table` (ids < len(table)) or of `extra` (ids - len(table)), one gather each."""
    cap = table.shape[0]
    mine = table[jnp.clip(rows, 0, cap - 1)]
    if extra is None:
        return mine
    theirs = extra[jnp.clip(rows - cap, 0, extra.shape[0] - 1)].astype(mine.dtype)
    pick = (rows >= cap).reshape(rows.shape + (1,) * (mine.ndim - 1))
    return jnp.where(pick, theirs, mine)


def with_extra_candidates(key, ids, capacity: int, valid, share):
    """Replace a `share` of the candidate buffer rows `ids` by rows of an extra pool (ids
    `capacity + j`, j drawn uniformly among the pool's `valid` rows; none valid: none drawn)."""
    k_pick, k_row = jax.random.fold_in(key, 3), jax.random.fold_in(key, 4)
    j = jax.random.categorical(k_row, jnp.where(valid, 0.0, -jnp.inf), shape=ids.shape)
    use = (jax.random.uniform(k_pick, ids.shape) < share) & jnp.any(valid)
    return jnp.where(use, capacity + j.astype(ids.dtype), ids)


def select_prototype_states(actor: ProtoActor, params, cand_obs, cand_render, size, key,
                            update_step, first, chunk: int = 4096, obs_transform=None,
                            refit: bool = True, newest=None,
                            extra=None) -> tuple[Any, Provenance]:
    """Source "states": re-choose the real state x_k behind every prototype p_k = f(x_k).

    `kmeans_samples` candidate rows are drawn uniformly and encoded; Lloyd's k-means in
    latent space starts from the current prototypes (so prototype k keeps its region and
    its Gaussian keeps its meaning; on the `first` selection, from random samples); each
    centre is then snapped to its nearest sampled state, distinct rows for distinct
    prototypes. The prototypes follow where the agent's states are dense, and each is a real
    state by construction. With `refit` (blend) the Gaussians are re-fitted on the sample so
    the policy survives the move (`refit_heads`).

    `extra` = (obs [M, ...], render [M, ...], valid [M]): states outside the buffer (the
    current policy's own rollouts, `rollout_share`) that a share of the candidates is drawn
    from; a prototype chosen from them has buffer_index -2.
    """
    transform = obs_transform or (lambda o: o)
    cfg = actor.cfg
    chunk = max(1, min(chunk, cfg.kmeans_samples))
    blocks = -(-cfg.kmeans_samples // chunk)
    if is_static_zero(cfg.recent_share):
        newest = None  # the uniform rows alone (a swept share is traced)
    ids = candidate_rows(key, blocks * chunk, size, newest, cfg.recent_share,
                         cfg.recent_window)
    extra_obs = extra_render = None
    if extra is not None:
        extra_obs, extra_render, extra_valid = extra
        ids = with_extra_candidates(key, ids, cand_obs.shape[0], extra_valid,
                                    cfg.rollout_share)
    rows = transform(_gather_rows(cand_obs, extra_obs, ids))
    latents = jax.lax.map(lambda block: actor.encode(params, block),
                          rows.reshape((blocks, chunk) + rows.shape[1:]))
    latents = latents.reshape((blocks * chunk, -1))
    old = actor.prototypes(params)
    init = jnp.where(first, latents[:cfg.num_prototypes], old)
    centres = kmeans(latents, cfg.num_prototypes, cfg.kmeans_iters, init)
    score = squared_distances(centres, latents)  # [K, S]
    neg_d, pos = jax.lax.top_k(-score, cfg.num_prototypes)
    chosen = distinct_nearest(-neg_d, ids[pos])  # buffer rows (extra rows: >= capacity)
    chosen_obs = _gather_rows(cand_obs, extra_obs, chosen)
    new_params = {**params, "prototype_states": transform(chosen_obs).astype(
        params["prototype_states"].dtype)}
    if refit and cfg.distribution == "blend":
        # not on the first selection: the placeholder prototypes gave every state the same
        # weights, and fitting heads to that flat policy would make them all alike
        refitted = refit_heads(actor, params, new_params, rows, cfg.refit_ridge)
        new_params = jax.tree_util.tree_map(lambda a, b: jnp.where(first, a, b), new_params,
                                            refitted)
    provenance = Provenance(
        buffer_index=jnp.where(chosen >= cand_obs.shape[0], -2, chosen).astype(jnp.int32),
        obs=chosen_obs,
        render_state=_gather_rows(cand_render, extra_render, chosen),
        update_step=jnp.full(chosen.shape, update_step, jnp.int32),
        distance=jnp.linalg.norm(actor.prototypes(new_params) - old, axis=-1),
    )
    return new_params, provenance
