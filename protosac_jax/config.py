"""Configuration: frozen dataclasses, per-env presets, JSON round trip.

Every knob of a run lives here. The CLI maps flags onto these dataclasses; `config.json` in
the run directory is written from them and read back by `load`. Frozen dataclasses are
hashable, so they can be passed to `jax.jit` as static arguments.
"""

from __future__ import annotations

import dataclasses
import json
import math
from fractions import Fraction
from typing import Any


class ConfigError(ValueError):
    """A user-supplied setting is invalid (the CLI turns this into one line, exit 2)."""


@dataclasses.dataclass(frozen=True)
class SACConfig:
    """Soft Actor-Critic hyper-parameters (defaults: Haarnoja et al. 2018 / SB3)."""

    hidden_sizes: tuple[int, ...] = (256, 256)
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005
    batch_size: int = 256
    init_alpha: float = 1.0
    # None -> -|A| (the standard heuristic).
    target_entropy: float | None = None
    # Squashed-Gaussian log-std bounds of the baseline actor (SB3/brax use [-20, 2]).
    log_std_min: float = -20.0
    log_std_max: float = 2.0
    # Normalise observations with running mean/std (as brax SAC); stats saved with the learner.
    normalize_obs: bool = False
    # Modern-SAC ingredients (issue #17; benchmarks/RESULTS.md "SAC ingredients" has what each
    # paid on this machine). LayerNorm before each hidden ReLU: "none", "critic" (BRO, SimBa,
    # FastTD3 put it in the critic) or "all" (critic, actor / prototype encoder).
    layer_norm: str = "none"
    # Decoupled weight decay (AdamW, Loshchilov & Hutter 2019) on the actor's and critics'
    # Dense kernels; 0 = plain Adam. Biases, LayerNorm scales, prototype heads and the learned
    # temperatures / dual variables are never decayed.
    weight_decay: float = 0.0
    # n-step returns (Sutton 1988; Rainbow, FastTD3): the critic's target sums n rewards and
    # bootstraps with gamma^n from the n-th next state. An episode that ends (terminates or is
    # truncated) inside the n steps cuts the sum there: a termination stops the bootstrap, a
    # truncation bootstraps from its final observation with gamma^m, m <= n the steps taken.
    n_step: int = 1
    # Distributional twin critic (C51, Bellemare et al. 2017, as FastTD3 / FastSAC use it):
    # each critic predicts a categorical distribution over `num_atoms` returns evenly spaced
    # on [v_min, v_max], trained by cross-entropy to the projected soft Bellman target
    # r + gamma^m (z - alpha log pi); Q is its mean. 0 = the scalar critic with a squared error.
    num_atoms: int = 0
    v_min: float = -100.0
    v_max: float = 100.0
    # Draw all training batches of an iteration in one call before its updates (one gather of
    # updates x batch_size rows, as FastTD3 samples its large batches) instead of one gather
    # per update inside the update loop. The same distribution (uniform, with replacement,
    # from the buffer as it stands before the iteration's updates), other random draws.
    sample_once: bool = False
    # Zero-initialised action heads (FastTD3 / FastSAC zero their actor's mean and log-std
    # output layers): the baseline's last Dense starts at 0 (mean 0, log-std 0), every ProtoSAC
    # prototype's action mean m_k starts at 0 (by default U(-0.5, 0.5), so that the prototypes
    # disagree from the first step; their log-stds start at proto.init_log_std either way).
    zero_init_heads: bool = False
    # CrossQ (Bhatt et al., ICLR 2024; SBX's CrossQ): batch renormalisation in the critics
    # (on their input and after each hidden ReLU), no target network (the next state's value
    # comes from the online critic, in the same training-mode pass as the current pairs, so
    # both share its batch statistics), Adam with b1 = 0.5 for actor and critics. Not
    # included: CrossQ's policy delay (3) and its wide critics (--hidden sets both actor's
    # and critics' widths here); `tau` is unused. Vector observations only.
    crossq: bool = False


@dataclasses.dataclass(frozen=True)
class PrototypeConfig:
    """The ProtoSAC actor (see prototype.py for the formulas)."""

    num_prototypes: int = 32
    latent_dim: int = 64
    # Encoder MLP; None -> same widths as the SAC networks.
    encoder_hidden: tuple[int, ...] | None = None
    # Where prototypes live. "states" (default): prototype k is the encoding f(x_k) of a stored
    # real state x_k, so what is shown for it is exactly what the policy compares against, at
    # every step; the states are re-chosen every `projection_every` updates (k-means in latent
    # space, snapped to real states). "free": trainable latent vectors projected onto their
    # nearest buffer state every `projection_every` updates (the original ProtoSAC); between
    # projections they drift off the states shown for them (logged as proto/drift).
    source: str = "states"
    # Latents (and prototypes) scaled to unit length, so squared distances lie in [0, 4] and a
    # temperature has a known scale.
    normalize_latent: bool = True
    similarity: str = "softmax"  # log | rbf | softmax
    # Similarity temperature tau (all similarities); with `target_weight_entropy` it is the
    # initial value of a learned temperature.
    temperature: float = 0.1
    # Mean per-state entropy H(w) the weights are held at by learning log(tau) (as SAC tunes
    # its alpha): exp(0.3) = 1.35 prototypes decide each action. None: tau fixed.
    target_weight_entropy: float | None = 0.3
    # Within-decision spread of the prototypes' actions, sum_k w_k (tanh m_k - a_bar)^2 with
    # a_bar = sum_k w_k tanh m_k, held at most at this value by a learned penalty coefficient
    # (dual ascent, as SAC's alpha; through the heads only): prototypes that share a decision
    # agree on it, so the deciding prototype's own action is the action taken. Without it
    # (None, the previous default) a policy can balance on the boundary between two
    # bang-bang prototypes (+0.85 / -0.84 blended to +0.1): Pendulum seeds 3, 4 and 6 ended
    # with top-1 agreement 0.18-0.19 (benchmarks/RESULTS.md).
    target_action_spread: float | None = 0.04
    # Share of the batch, its largest per-state values, whose mean the learned temperature
    # (weight entropy) and the spread penalty hold at their targets; 1.0 = the batch mean (the
    # previous behaviour). 0.25 keeps the most blended quarter of states crisp: with the batch
    # mean the late, balanced states of a pendulum blended 2.55 prototypes on one seed.
    constraint_share: float = 0.25
    log_eps: float = 1e-4  # eps of the ProtoPNet log-ratio similarity
    distribution: str = "blend"  # blend | mixture
    # The deterministic action (evaluation, Agent.act, viz): "top1" = the deciding prototype's
    # own action tanh(m_k), k = argmax_k w_k (every decision made by one prototype); "mean" =
    # tanh(sum_k w_k m_k), the blend's mean; "auto" (default) = mean for blend, top1 for
    # mixture. top1 made a balanced pendulum chatter between two prototypes (effective 2.32,
    # lookalike 0.77 on Pendulum seed 0; benchmarks/RESULTS.md). Training samples the policy.
    decide: str = "auto"
    ortho_coef: float = 0.01
    weight_entropy_coef: float = 0.001  # penalises diffuse per-state weights
    usage_entropy_coef: float = 0.01  # rewards using every prototype across a batch
    # Pulls each prototype towards its nearest encoded batch state (Li et al. 2018's R1), so
    # prototypes stay on the data manifold and projection barely moves them.
    proximity_coef: float = 0.0  # off by default: 0.1 did not reduce churn (RESULTS.md)
    projection_every: int = 5000  # gradient updates between projections; 0 = off
    # Where in each cycle the projections fall, as a share of `projection_every`: they happen
    # when (updates + phase x projection_every) crosses a multiple of projection_every. 0 =
    # at multiples of it. With 0.5 the Gymnasium MuJoCo preset (warm-up 10k, projection every
    # 10k updates, eval every 10k env steps) re-chooses its states half a cycle before each
    # evaluation and before the end, not at the update right before them: one re-selection
    # had cost 5-11.5 % on HalfCheetah-v5 and 49 % on Hopper-v5 until training repaired it
    # (benchmarks/RESULTS.md, "Re-selection timing").
    projection_phase: float = 0.0
    projection_chunk: int = 4096  # buffer rows encoded per block during projection
    # After each projection, re-fit the prototypes' Gaussians (closed-form ridge) on this many
    # replay states so the policy survives the projection (prototype.refit_heads); 0 = off.
    # Source "states" re-fits on the `kmeans_samples` states it selected from (any value > 0).
    refit_samples: int = 4096
    refit_ridge: float = 1e-3
    # Prototype initialisation: "random" (N(0, 1) in latent space) or "kmeans" (at the first
    # gradient update, Lloyd's k-means of `kmeans_samples` encoded warm-up states).
    init: str = "random"
    kmeans_samples: int = 4096
    kmeans_iters: int = 25
    # Source "states": share of the k-means candidates drawn from the newest `recent_window`
    # of the valid buffer rows (the rest uniformly from all of them), so the states chosen at
    # a projection, and at the final one, are where the current policy goes. 0 = uniform.
    recent_share: float = 0.0
    recent_window: float = 0.2
    # Source "states", device envs: share of the k-means candidates drawn from the live states
    # of `rollout_episodes` deterministic episodes of the current policy, run at each
    # re-selection (where the policy that is evaluated and explained goes: a balanced pendulum's
    # fixed point). 0 = the buffer alone. A prototype chosen from them has buffer_index -2.
    # Envs that step on the host (Gymnasium) or draw from frames have no device rollouts:
    # there the buffer alone is used (train.py refuses an explicit --rollout-share).
    rollout_share: float = 0.0
    rollout_episodes: int = 4
    # Source "states", device envs: the re-selection at the end of training (the states
    # that are saved, shown and explained) makes `selection_proposals` proposals (k-means on
    # other candidate draws), plays each policy and the current one on `guard_episodes`
    # deterministic episodes from the same start states, and keeps the proposal that returns
    # most if it returns no less than the current states (mean >= current mean -
    # guard_tolerance x |current mean|); otherwise the run ends with the current ones. A
    # re-selection changes every state's weights at once; the heads' re-fit keeps the mean
    # action close on the sampled states but not everywhere: on Pendulum some proposals spin
    # the pendulum where the current policy balances it (RESULTS.md "The Pendulum default
    # since 2026-12-07").
    # With a guard the states are always re-chosen at the end (loops.needs_final_projection).
    # 0 = off (one proposal, always taken). Re-selections during training are not guarded:
    # training repairs them, and a guard there kept some runs on their first states.
    guard_episodes: int = 0
    guard_tolerance: float = 0.1
    selection_proposals: int = 1
    # Local feedback inside a prototype's cell (0 = off: each prototype's action is the
    # constant m_k). With a bound b > 0, prototype k acts m_k + b tanh(G_k (z - p_k) / b) at a
    # state with latent z: its own action m_k at its own state, corrected by at most +-b
    # (pre-squash, per action dim) for how the state differs from it. A constant action per
    # cell is a coarse controller for locomotion: MJX hopper ended at 1081 with it and at
    # 1925 (mean of 5 seeds; SAC 1591) with b = 0.25, so the MJX locomotion preset sets 0.25.
    # Classic control keeps 0: there the correction plus a little blending took Pendulum seed
    # 21's top-1 agreement to 0.77 (RESULTS.md "Local feedback").
    local_gain: float = 0.0
    # Straight-through softer weights for learning (1 = off). The actor loss's gradient reaches
    # the encoder only through the weights w = softmax(-d / tau); with crisp weights (about 1.1
    # prototypes per decision) that gradient is near zero except on the cells' boundaries, so
    # the encoder hardly learns which cell a state belongs in. With c > 1 the policy acts with
    # the crisp weights (tau) but the gradient is taken through the weights at temperature
    # c x tau: w + w_soft - stop_gradient(w_soft). The auxiliary losses keep the crisp weights.
    backward_temperature_scale: float = 1.0
    init_log_std: float = 0.0
    log_std_min: float = -5.0
    log_std_max: float = 2.0


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A whole run: env, actor, SAC, loop sizes, logging."""

    env: str = "pendulum"
    baseline: bool = False
    seed: int = 0
    num_envs: int = 1
    total_steps: int = 10_000  # env steps, summed over envs
    # Replay capacity asked for. The buffer allocated is min(buffer_size, the run's env steps)
    # (`buffer_capacity`): a buffer larger than the run never fills. A resumed run that extends
    # --total-steps grows it to what a fresh run of that length gets, so resuming stays exact.
    buffer_size: int = 100_000
    learning_starts: int = 1_000  # env steps of random actions before updates begin
    # Gradient updates per env step (UTD), honoured exactly on average: each iteration adds
    # num_envs * updates_per_step to an update credit kept in the TrainState and runs its whole
    # part (`update_fraction`), so 0.25 with one env is one update every fourth step.
    updates_per_step: float = 1.0
    # Temporal correlation of exploration noise: eps_t = rho*eps_{t-1} + sqrt(1-rho^2)*xi_t.
    # 0 = white noise (standard SAC). Marginals stay N(0,1), so the policy's distribution per
    # step is unchanged; only its autocorrelation is (cf. Eberhard et al. 2023, colored noise).
    noise_correlation: float = 0.0
    # Env steps between evaluations. Chunks end at multiples of this (one jitted call each);
    # a run whose total is not a multiple ends with a shorter chunk, and a short run evaluates
    # once, at its end.
    eval_every: int = 2_000
    eval_episodes: int = 10
    log_tensorboard: bool = True
    # Weights & Biases (--wandb, extra [wandb]): the same `group/name` keys as metrics.jsonl and
    # TensorBoard, the config logged; WANDB_MODE=offline works without a network.
    log_wandb: bool = False
    save_every: int = 50_000  # env steps between resumable checkpoints (also saved at the end)
    keep_checkpoints: int = 3  # latest resumable checkpoints kept (plus the best-by-eval policy)
    save_buffer: bool = True  # include the replay buffer (off: resume refills it first)
    # Gymnasium envs only: pixel frames stacked along channels, and action repeat (one step of
    # the run = `action_repeat` env frames; rewards summed).
    frame_stack: int = 1
    action_repeat: int = 1
    # Envs drawn from frames (Box2D): env 0's frame is captured every `frame_every` steps into
    # a reservoir of `frame_reservoir` (obs, frame) pairs, the projection candidates.
    frame_reservoir: int = 1024
    frame_every: int = 10
    # Record a deterministic evaluation episode (explained by its top prototypes) into
    # <run>/videos/ every this many env steps; 0 = off. Runs on the host between chunks.
    video_every: int = 0
    sac: SACConfig = SACConfig()
    proto: PrototypeConfig = PrototypeConfig()

    @property
    def algo(self) -> str:
        return "sac" if self.baseline else "protosac"


def run_steps(cfg: TrainConfig) -> int:
    """Env steps a run really takes: `total_steps` rounded up to whole iterations (every env
    steps once per iteration)."""
    return math.ceil(cfg.total_steps / cfg.num_envs) * cfg.num_envs


def buffer_capacity(cfg: TrainConfig) -> int:
    """Rows allocated for the replay buffer: `buffer_size`, capped at the transitions the run
    will ever insert. Under the cap the ring never wraps, so growing it on a resume that
    extends the run (replay.resize) leaves every row where a fresh longer run has it."""
    return max(cfg.num_envs, min(cfg.buffer_size, run_steps(cfg)))


# Largest update-credit denominator: keeps the int32 credit (< numerator + denominator) safe.
_MAX_DENOMINATOR = 10**6


def update_fraction(cfg: TrainConfig) -> tuple[int, int]:
    """Updates per iteration, num_envs * updates_per_step, as an exact fraction (p, q).

    The decimal the user wrote is taken exactly (0.1 is 1/10, not the nearest binary float);
    each iteration adds p to an integer credit and runs credit // q updates, so the achieved
    ratio equals p / q over every q iterations. ConfigError when no fraction with a
    denominator <= 10^6 matches the value to 1e-9 (relative).
    """
    ups = cfg.updates_per_step
    if not (math.isfinite(ups) and ups > 0):
        raise ConfigError(f"--updates-per-step must be a finite number > 0 (got {ups})")
    wanted = Fraction(repr(float(ups))) * cfg.num_envs
    rate = wanted.limit_denominator(_MAX_DENOMINATOR)
    if abs(rate - wanted) > wanted * Fraction(1, 10**9) or rate.numerator >= 2**30:
        raise ConfigError(f"--updates-per-step {ups} x {cfg.num_envs} envs cannot be honoured "
                          "exactly; give a value with at most 6 decimals")
    return rate.numerator, rate.denominator


# --------------------------------------------------------------------------- validation
# The real domain of every field, in one table: `validate` (called by train.py, `train`,
# `resume` and the Python API alike) checks each, so an impossible value (gamma 1.5, a
# negative learning rate, a NaN) is refused before anything starts, in one line.
class _Domain:
    """A field's domain: `check(value) -> bool` and the words that describe it."""

    def __init__(self, check, text: str):
        self.check, self.text = check, text


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_real(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _int(low: int) -> _Domain:
    return _Domain(lambda x: _is_int(x) and x >= low, f"an integer >= {low}")


def _real(low: float | None = None, high: float | None = None, low_open: bool = False,
          high_open: bool = False) -> _Domain:
    def check(x):
        if not _is_real(x):
            return False
        if low is not None and (x <= low if low_open else x < low):
            return False
        return high is None or (x < high if high_open else x <= high)

    if low is not None and high is not None:
        text = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        text = f"a finite number {'>' if low_open else '>='} {low:g}"
    else:
        text = "a finite number"
    return _Domain(check, text)


def _optional(domain: _Domain) -> _Domain:
    return _Domain(lambda x: x is None or domain.check(x), f"{domain.text} (or none)")


def _choice(*names: str) -> _Domain:
    return _Domain(lambda x: x in names, " or ".join(names))


def _bool() -> _Domain:
    return _Domain(lambda x: isinstance(x, bool), "True or False")


def _widths(optional: bool = False) -> _Domain:
    def check(x):
        if x is None:
            return optional
        return (isinstance(x, tuple) and len(x) > 0
                and all(_is_int(w) and w >= 1 for w in x))

    return _Domain(check, "comma-separated layer widths >= 1" + (" (or none)" if optional
                                                                 else ""))


POSITIVE = _real(0.0, low_open=True)
NON_NEGATIVE = _real(0.0)

# (config section, field) -> (CLI flag or None, domain)
DOMAINS: dict[tuple[str, str], tuple[str | None, _Domain]] = {
    ("", "env"): (None, _Domain(lambda x: isinstance(x, str) and bool(x), "an env name")),
    ("", "baseline"): ("--baseline", _bool()),
    ("", "seed"): ("--seed", _Domain(lambda x: _is_int(x) and 0 <= x < 2**31,
                                     "an integer in [0, 2^31)")),
    ("", "num_envs"): ("--num-envs", _int(1)),
    ("", "total_steps"): ("--total-steps", _int(1)),
    ("", "buffer_size"): ("--buffer-size", _int(1)),
    ("", "learning_starts"): ("--learning-starts", _int(0)),
    ("", "updates_per_step"): ("--updates-per-step", POSITIVE),
    ("", "noise_correlation"): ("--noise-correlation", _real(0.0, 1.0, high_open=True)),
    ("", "eval_every"): ("--eval-every", _int(1)),
    ("", "eval_episodes"): ("--eval-episodes", _int(1)),
    ("", "log_tensorboard"): ("--no-tensorboard", _bool()),
    ("", "log_wandb"): ("--wandb", _bool()),
    ("", "save_every"): ("--save-every", _int(1)),
    ("", "keep_checkpoints"): ("--keep-checkpoints", _int(1)),
    ("", "save_buffer"): ("--no-save-buffer", _bool()),
    ("", "frame_stack"): ("--frame-stack", _int(1)),
    ("", "action_repeat"): ("--action-repeat", _int(1)),
    ("", "frame_reservoir"): (None, _int(1)),
    ("", "frame_every"): (None, _int(0)),
    ("", "video_every"): ("--video-every", _int(0)),
    ("sac", "hidden_sizes"): ("--hidden", _widths()),
    ("sac", "actor_lr"): ("--lr", POSITIVE),
    ("sac", "critic_lr"): ("--lr", POSITIVE),
    ("sac", "alpha_lr"): ("--lr", POSITIVE),
    ("sac", "gamma"): ("--gamma", _real(0.0, 1.0, low_open=True)),
    ("sac", "tau"): (None, _real(0.0, 1.0, low_open=True)),
    ("sac", "batch_size"): ("--batch-size", _int(1)),
    ("sac", "init_alpha"): ("--init-alpha", POSITIVE),
    ("sac", "target_entropy"): ("--target-entropy", _optional(_real())),
    ("sac", "log_std_min"): (None, _real()),
    ("sac", "log_std_max"): (None, _real()),
    ("sac", "normalize_obs"): (None, _bool()),
    ("sac", "layer_norm"): ("--layer-norm", _choice("none", "critic", "all")),
    ("sac", "weight_decay"): ("--weight-decay", NON_NEGATIVE),
    ("sac", "n_step"): ("--n-step", _int(1)),
    ("sac", "num_atoms"): ("--num-atoms", _Domain(lambda x: _is_int(x) and (x == 0 or x >= 2),
                                                  "0 (scalar critic) or an integer >= 2")),
    ("sac", "v_min"): ("--v-min", _real()),
    ("sac", "v_max"): ("--v-max", _real()),
    ("sac", "sample_once"): ("--sample-once", _bool()),
    ("sac", "zero_init_heads"): ("--zero-init-heads", _bool()),
    ("sac", "crossq"): ("--crossq", _bool()),
    ("proto", "num_prototypes"): ("--num-prototypes", _int(1)),
    ("proto", "latent_dim"): ("--latent-dim", _int(1)),
    ("proto", "encoder_hidden"): (None, _widths(optional=True)),
    ("proto", "source"): ("--prototypes", _choice("states", "free")),
    ("proto", "normalize_latent"): ("--normalize-latent", _bool()),
    ("proto", "similarity"): ("--similarity", _choice("log", "rbf", "softmax")),
    ("proto", "temperature"): ("--temperature", POSITIVE),
    ("proto", "target_weight_entropy"): ("--target-weight-entropy", _optional(NON_NEGATIVE)),
    ("proto", "target_action_spread"): ("--target-action-spread", _optional(NON_NEGATIVE)),
    ("proto", "constraint_share"): ("--constraint-share", _real(0.0, 1.0, low_open=True)),
    ("proto", "log_eps"): (None, POSITIVE),
    ("proto", "distribution"): ("--distribution", _choice("blend", "mixture")),
    ("proto", "decide"): ("--decide", _choice("top1", "mean", "auto")),
    ("proto", "ortho_coef"): (None, NON_NEGATIVE),
    ("proto", "weight_entropy_coef"): ("--weight-entropy-coef", NON_NEGATIVE),
    ("proto", "usage_entropy_coef"): ("--usage-entropy-coef", NON_NEGATIVE),
    ("proto", "proximity_coef"): (None, NON_NEGATIVE),
    ("proto", "projection_every"): ("--projection-every", _int(0)),
    ("proto", "projection_phase"): ("--projection-phase", _real(0.0, 1.0, high_open=True)),
    ("proto", "projection_chunk"): (None, _int(1)),
    ("proto", "refit_samples"): (None, _int(0)),
    ("proto", "refit_ridge"): (None, NON_NEGATIVE),
    ("proto", "init"): ("--proto-init", _choice("random", "kmeans")),
    ("proto", "kmeans_samples"): (None, _int(1)),
    ("proto", "kmeans_iters"): (None, _int(0)),
    ("proto", "recent_share"): ("--recent-share", _real(0.0, 1.0)),
    ("proto", "recent_window"): ("--recent-window", _real(0.0, 1.0, low_open=True)),
    ("proto", "rollout_share"): ("--rollout-share", _real(0.0, 1.0)),
    ("proto", "rollout_episodes"): ("--rollout-episodes", _int(1)),
    ("proto", "guard_episodes"): ("--guard-episodes", _int(0)),
    ("proto", "guard_tolerance"): (None, NON_NEGATIVE),
    ("proto", "selection_proposals"): ("--selection-proposals", _int(1)),
    ("proto", "local_gain"): ("--local-gain", NON_NEGATIVE),
    ("proto", "backward_temperature_scale"): ("--backward-temperature-scale",
                                              _real(1.0, None)),
    ("proto", "init_log_std"): (None, _real()),
    ("proto", "log_std_min"): (None, _real()),
    ("proto", "log_std_max"): (None, _real()),
}


def _field_name(section: str, field: str) -> str:
    flag = DOMAINS[(section, field)][0]
    path = f"{section}.{field}" if section else field
    return f"{flag} ({path})" if flag and flag.lstrip("-").replace("-", "_") != field \
        else (flag or path)


def is_static_zero(value) -> bool:
    """A Python 0 (a traced, swept value is never static, whatever it holds)."""
    return isinstance(value, (int, float)) and value == 0


def fit_env(cfg: TrainConfig, obs_shape, crossq_given: bool = True) -> TrainConfig:
    """`cfg` for an env with observations of `obs_shape`. CrossQ needs vector observations:
    asked for (`crossq_given`) on pixels it is refused (ConfigError); where only a preset
    turned it on (the Gymnasium fallback preset, e.g. on your own pixel env) it is dropped."""
    if cfg.sac.crossq and len(obs_shape) != 1:
        if crossq_given:
            raise ConfigError(f"--crossq needs vector observations ({cfg.env}'s have shape "
                              f"{tuple(obs_shape)}): its critics batch-normalise input features")
        return dataclasses.replace(cfg, sac=dataclasses.replace(cfg.sac, crossq=False))
    return cfg


def validate(cfg: TrainConfig) -> None:
    """Raise ConfigError (one line naming the flag/field, its domain and the value given) on
    the first setting outside its domain (`DOMAINS`) or settings that cannot work together."""
    sections = {"": cfg, "sac": cfg.sac, "proto": cfg.proto}
    for section, obj in sections.items():
        expected = {f for (s, f) in DOMAINS if s == section}
        missing = {f.name for f in dataclasses.fields(obj)} - expected - {"sac", "proto"}
        assert not missing, f"no domain for {section or 'TrainConfig'} fields {missing}"
    for (section, field), (_, domain) in DOMAINS.items():
        value = getattr(sections[section], field)
        if not domain.check(value):
            raise ConfigError(f"{_field_name(section, field)} must be {domain.text} "
                              f"(got {value!r})")
    checks = [
        (cfg.buffer_size >= cfg.num_envs, "--buffer-size must be >= --num-envs"),
        (cfg.proto.kmeans_samples >= cfg.proto.num_prototypes,
         "--kmeans-samples must be >= --num-prototypes"),
        (cfg.sac.v_min < cfg.sac.v_max, "--v-min must be below --v-max"),
        (cfg.sac.log_std_min < cfg.sac.log_std_max,
         "sac.log_std_min must be below sac.log_std_max"),
        (cfg.proto.log_std_min < cfg.proto.log_std_max,
         "proto.log_std_min must be below proto.log_std_max"),
        (cfg.sac.n_step == 1 or cfg.learning_starts >= cfg.sac.n_step * cfg.num_envs,
         f"--n-step {cfg.sac.n_step} needs --learning-starts >= n-step x --num-envs "
         f"({cfg.sac.n_step * cfg.num_envs}): the first targets read that many steps ahead"),
        (cfg.proto.distribution == "blend" or is_static_zero(cfg.proto.local_gain),
         "--local-gain needs --distribution blend (a mixture's components are constant; "
         "give --local-gain 0)"),
        (cfg.proto.rollout_share == 0 or cfg.proto.source == "states",
         "--rollout-share needs --prototypes states (it draws the states prototypes encode)"),
        (cfg.proto.guard_episodes == 0 or cfg.proto.source == "states",
         "--guard-episodes needs --prototypes states (it guards their re-selection)"),
        (cfg.proto.selection_proposals == 1 or cfg.proto.guard_episodes > 0,
         "--selection-proposals needs --guard-episodes > 0 (the episodes that choose among "
         "them)"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    update_fraction(cfg)
    if cfg.log_wandb:
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            raise ConfigError("--wandb needs the wandb package: pip install "
                              "'protosac-jax[wandb]'")


# --------------------------------------------------------------------------- presets
# Gymnasium ids of the gymnax envs (`--backend gymnasium` trains on the original envs).
GYMNASIUM_TWINS = {"Pendulum-v1": "pendulum", "MountainCarContinuous-v0": "mountaincar"}


def preset(env: str) -> TrainConfig:
    """Defaults tuned per env; flags override individual fields afterwards."""
    if env in GYMNASIUM_TWINS:  # same settings as the gymnax twin, on the Gymnasium env
        return dataclasses.replace(preset(GYMNASIUM_TWINS[env]), env=env)
    if ":" in env:  # your own env: MODULE:ID (Gymnasium) or MODULE:NAME (envs/objects.py)
        from protosac_jax import envs

        kind = envs.object_kind(env)
        if kind == "gymnax":  # classic-control scale: the pendulum preset's settings
            return dataclasses.replace(preset("pendulum"), env=env)
        if kind is None or kind == "gymnasium":
            return _gymnasium_preset(env)
    if "-v" in env:
        return _gymnasium_preset(env)
    if env == "pendulum":
        # RL-zoo's SAC Pendulum settings (lr 1e-3) with smaller nets: Pendulum does not need
        # 256x256 and 64x64 halves the update cost (DESIGN.md, measured facts).
        # Since 2026-12-06: 2 updates per env step, local feedback 0.25, and a quarter of the
        # prototype states' candidates from the policy's own episodes (RESULTS.md, "The
        # Pendulum default from 2026-12-06 to 12-07"). Since 2026-12-07: re-chosen every 2500
        # updates, then once more at the end as the best of 8 proposals played on 32
        # episodes, kept only if no worse than the current states; the final eval on 50
        # episodes (a 10-episode mean is below -200 in 2.5-5.5 % of good runs by luck of
        # the start states).
        # Measured on 42 seeds, 14 of them never used for a choice (RESULTS.md, "The Pendulum
        # default since 2026-12-07").
        return TrainConfig(
            env=env, total_steps=10_000, learning_starts=1_000, buffer_size=50_000,
            eval_every=1_000, eval_episodes=50, updates_per_step=2.0,
            sac=SACConfig(hidden_sizes=(64, 64), actor_lr=1e-3, critic_lr=1e-3, alpha_lr=1e-3),
            proto=PrototypeConfig(latent_dim=32, projection_every=2_500, local_gain=0.25,
                                  rollout_share=0.25, guard_episodes=32,
                                  selection_proposals=8),
        )
    if env == "mountaincar":
        # Sparse reward at the flag: SAC with white noise never finds it (a well-known
        # failure). Temporally-correlated exploration noise plus a long correlated random
        # warm-up reaches the flag; RL-zoo uses gSDE for the same reason.
        return TrainConfig(
            env=env, num_envs=4, total_steps=100_000, learning_starts=20_000,
            buffer_size=100_000, eval_every=10_000, eval_episodes=5,
            noise_correlation=0.99, updates_per_step=0.25,
            sac=SACConfig(hidden_sizes=(64, 64), actor_lr=1e-3, critic_lr=1e-3, alpha_lr=1e-3,
                          gamma=0.99, init_alpha=0.1),
            proto=PrototypeConfig(latent_dim=32, projection_every=5_000),
        )
    if env == "inverted_pendulum":
        # Small MJX task: a few envs, high UTD, finishes on a CPU.
        return TrainConfig(
            env=env, num_envs=16, total_steps=100_000, learning_starts=5_000,
            buffer_size=200_000, updates_per_step=0.25, eval_every=10_000, eval_episodes=8,
            sac=SACConfig(batch_size=256, normalize_obs=True),
            proto=PrototypeConfig(projection_every=5_000))
    if env == "hopper":
        # Half the batch at twice the updates per env step: >= 3000 within 10 minutes on a
        # 2-core CPU, median of 3 seeds, both actors (benchmarks/RESULTS.md, "SAC ingredients
        # at a fixed wall-clock"); the family's settings: --batch-size 512 --updates-per-step 0.125
        locomotion = _mjx_locomotion_preset(env)
        return dataclasses.replace(locomotion, updates_per_step=0.25,
                                   sac=dataclasses.replace(locomotion.sac, batch_size=256))
    return _mjx_locomotion_preset(env)


def _mjx_locomotion_preset(env: str) -> TrainConfig:
    """MJX locomotion (humanoid, halfcheetah, ...): brax SAC's settings (normalised obs, batch
    512, 1M buffer, 8k warm-up) with fewer updates per env step so thousands of envs stay
    cheap; flags override (e.g. --updates-per-step 0.5 for brax's UTD with 128 envs)."""
    return TrainConfig(
        env=env, num_envs=128, total_steps=1_000_000, learning_starts=8_192,
        buffer_size=1_000_000, updates_per_step=0.125, eval_every=32_768, eval_episodes=8,
        save_every=200_000,
        sac=SACConfig(batch_size=512, normalize_obs=True),
        proto=PrototypeConfig(projection_every=5_000, local_gain=0.25))


def _gymnasium_preset(env: str) -> TrainConfig:
    """Host (Gymnasium) envs: RL-zoo's SAC settings, one env, one update per step."""
    if env.startswith("LunarLanderContinuous"):
        # rl-baselines3-zoo SAC LunarLanderContinuous (lr 7.3e-4, tau 0.01, 10k warm-up).
        # 64 prototypes since 2026-12-07: with 32, one ProtoSAC run in 5 hovered all 100k
        # steps (a constant action per cell is too coarse near the ground); with 64, 1 of 9
        # (seeds 0-8) did, and 64 were 14.9 % below SAC on 20 episodes of each final policy.
        # Since 2026-12-07 (later) the actor also learns through its weights at 4 x tau
        # (--backward-temperature-scale 4): every one of 8 seeds then landed, final eval
        # 240.6 vs SAC's 176.0 on those seeds (64 alone: 146.3)
        # (RESULTS.md "LunarLander's hover" and the sections after it).
        return TrainConfig(
            env=env, total_steps=300_000, learning_starts=10_000, buffer_size=1_000_000,
            eval_every=10_000, eval_episodes=10, save_every=100_000,
            sac=SACConfig(actor_lr=7.3e-4, critic_lr=7.3e-4, alpha_lr=7.3e-4, tau=0.01),
            proto=PrototypeConfig(num_prototypes=64, projection_every=10_000,
                                  backward_temperature_scale=4.0))
    if env.startswith("CarRacing"):
        # Pixels: 3 stacked frames, action repeat 2, a NatureCNN per network. 4 envs, one
        # update per 4 env steps and batch 64 keep a CPU run tolerable (~0.2 s per update on
        # 2 cores); raise them on a GPU. The buffer stores each frame once (10.3 GiB at 100k)
        # and is left out of checkpoints by default (it would make each one that large).
        return TrainConfig(
            env=env, num_envs=4, total_steps=500_000, learning_starts=2_000,
            buffer_size=100_000, updates_per_step=0.25, eval_every=10_000, eval_episodes=3,
            save_every=50_000, save_buffer=False, frame_stack=3, action_repeat=2,
            sac=SACConfig(batch_size=64),
            proto=PrototypeConfig(projection_every=2_500, projection_chunk=256))
    # MuJoCo v5 (Hopper, HalfCheetah, Humanoid, Walker2d, Ant ...) and any other Box id:
    # SB3/rl-zoo SAC defaults (256x256, lr 3e-4, batch 256, 10k random warm-up steps).
    # Since 2026-12-07 with CrossQ critics (both actors) and ProtoSAC's local feedback 0.25
    # (as the MJX locomotion preset): Hopper-v5 at 100k env steps, seeds 0-2, went from
    # 618 to 1788 (ProtoSAC) and from 719 to 3075 (SAC) at the median. Since 2026-12-07
    # (later) ProtoSAC has LunarLander's 64 prototypes learning through 4 x tau: one seed
    # in three had stayed near 390 all run; with them it ended at 2895 (RESULTS.md
    # "Gymnasium Hopper-v5 at 100k env steps").
    # Since 2026-12-07 (latest) the states are re-chosen half a cycle before each evaluation
    # and the end of training (--projection-phase 0.5), not at the update right before them:
    # one re-selection had cost 5-11.5 % of HalfCheetah-v5's return and 49 % of Hopper-v5's
    # until training repaired it (RESULTS.md "Re-selection timing").
    # --crossq false --local-gain 0 --num-prototypes 32 --backward-temperature-scale 1
    # --projection-phase 0 restore the old preset.
    return TrainConfig(
        env=env, total_steps=1_000_000, learning_starts=10_000, buffer_size=1_000_000,
        eval_every=10_000, eval_episodes=10, save_every=100_000,
        sac=SACConfig(crossq=True),
        proto=PrototypeConfig(num_prototypes=64, projection_every=10_000, local_gain=0.25,
                              backward_temperature_scale=4.0, projection_phase=0.5))


# Fields that may differ when resuming a run (nothing else may: it would change the model or
# the data it was trained on).
RESUMABLE_FIELDS = ("total_steps", "save_every", "keep_checkpoints", "save_buffer",
                    "log_tensorboard", "log_wandb", "video_every")


# --------------------------------------------------------------------------- JSON
def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_json(cfg: TrainConfig) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)


# Values of fields added after older config.json files were written: what those runs did.
_LEGACY_DEFAULTS = {
    "PrototypeConfig": {"source": "free", "normalize_latent": False,
                        "target_weight_entropy": None, "target_action_spread": None,
                        "decide": "auto", "constraint_share": 1.0, "local_gain": 0.0,
                        "rollout_share": 0.0},
}


def _build(cls, data: dict[str, Any]):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    data = {**{k: v for k, v in _LEGACY_DEFAULTS.get(cls.__name__, {}).items()
               if k not in data}, **data}
    unknown = set(data) - set(fields)
    if unknown:
        raise ConfigError(f"unknown config keys for {cls.__name__}: {sorted(unknown)}")
    kwargs = {}
    for name, value in data.items():
        if name == "sac":
            value = _build(SACConfig, value)
        elif name == "proto":
            value = _build(PrototypeConfig, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def from_dict(data: dict[str, Any]) -> TrainConfig:
    return _build(TrainConfig, data)


def from_json(text: str) -> TrainConfig:
    return from_dict(json.loads(text))


# --------------------------------------------------------------------------- sweeps
# Float settings that change no shape and no Python-level branch: a group of runs
# (train.py --sweep) can train members with different values in one vmapped program, the value
# a traced scalar of each member (config_lib.with_values).
SWEEPABLE: dict[str, str] = {
    "actor_lr": "sac", "critic_lr": "sac", "alpha_lr": "sac", "gamma": "sac", "tau": "sac",
    "init_alpha": "sac", "target_entropy": "sac", "weight_decay": "sac",
    "temperature": "proto", "target_weight_entropy": "proto",
    "target_action_spread": "proto", "ortho_coef": "proto", "weight_entropy_coef": "proto",
    "usage_entropy_coef": "proto", "proximity_coef": "proto", "log_eps": "proto",
    "refit_ridge": "proto", "init_log_std": "proto", "recent_share": "proto",
    "recent_window": "proto", "local_gain": "proto",
}


def sweep_name(text: str) -> str:
    """'actor_lr', 'actor-lr', 'sac.actor_lr' or 'proto.temperature' -> the field name;
    ConfigError naming the sweepable ones otherwise."""
    name = text.strip().replace("-", "_")
    if "." in name:
        section, _, field = name.partition(".")
        if SWEEPABLE.get(field) == section:
            name = field
    if name not in SWEEPABLE:
        raise ConfigError(f"--sweep cannot vary {text!r} (it changes shapes or is not a "
                          f"float setting); sweepable: {', '.join(sorted(SWEEPABLE))}")
    return name


def parse_sweep(specs: list[str]) -> dict[str, tuple[float, ...]]:
    """['actor_lr=1e-3,3e-4', 'gamma=0.99,0.95'] -> {'actor_lr': (1e-3, 3e-4), ...}."""
    out: dict[str, tuple[float, ...]] = {}
    for spec in specs:
        name, sep, values = spec.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--sweep expects NAME=v1,v2,... (got {spec!r})")
        field = sweep_name(name)
        if field in out:
            raise ConfigError(f"--sweep names {field} twice")
        try:
            numbers = tuple(float(v) for v in values.split(","))
        except ValueError:
            raise ConfigError(f"--sweep {name}: expected comma-separated numbers "
                              f"(got {values!r})") from None
        if len(numbers) < 1 or not all(math.isfinite(v) for v in numbers):
            raise ConfigError(f"--sweep {name}: expected finite numbers (got {values!r})")
        if len(set(numbers)) < len(numbers):
            raise ConfigError(f"--sweep {name}: a value is repeated (got {values!r})")
        out[field] = numbers
    return out


def sweep_values(cfg: TrainConfig, names) -> dict[str, Any]:
    """The values of the sweepable fields `names` in `cfg`."""
    return {name: getattr(getattr(cfg, SWEEPABLE[name]), name) for name in names}


def with_values(cfg: TrainConfig, values: dict[str, Any]) -> TrainConfig:
    """`cfg` with sweepable fields replaced (by floats, or by traced scalars inside a group's
    vmapped program)."""
    sac = {k: v for k, v in values.items() if SWEEPABLE[k] == "sac"}
    proto = {k: v for k, v in values.items() if SWEEPABLE[k] == "proto"}
    return dataclasses.replace(cfg, sac=dataclasses.replace(cfg.sac, **sac),
                               proto=dataclasses.replace(cfg.proto, **proto))
