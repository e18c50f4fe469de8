"""The training loops: collect + update + projection + eval.

Device envs (gymnax, MJX): everything inside jitted `lax.scan`s (below). Gymnasium envs: the
same pieces driven by `HostRunner`, two jitted calls per host vector step (end of file).

One iteration = every env takes one step (the transitions go into the device buffer), then
the gradient steps that are due (num_envs * updates_per_step on average, exactly: an integer
update credit carries the fractional part), then a projection of the prototypes if the update
count crossed a multiple of `projection_every`. `run_chunk` loops over a traced number of
iterations and ends with a deterministic evaluation, all in one compiled call; the host only
logs between chunks. The evaluation draws its key beside the run's RNG stream without
advancing it, so where the chunks end (eval_every, a resume) never changes the training.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from protosac_jax import config as config_lib
from protosac_jax import prototype, replay, sac
from protosac_jax.config import TrainConfig
from protosac_jax.envs.base import StepResult
from protosac_jax.prototype import ProtoActor, Provenance, project_prototypes


@flax.struct.dataclass
class TrainState:
    """Everything a run is: learner, buffer, envs, noise, counters, provenance, rng."""

    learner: sac.SACState
    buffer: replay.ReplayState
    env_state: Any  # batched over envs
    obs: jax.Array  # [N, *obs_shape]
    noise: jax.Array  # [N, A] temporally-correlated exploration noise
    episode_return: jax.Array  # [N] running return of the current episode
    provenance: Provenance  # prototype origins (all -1 for the baseline)
    rng: jax.Array
    env_steps: jax.Array  # int32, summed over envs
    random_until: jax.Array  # int32: env steps below this act uniformly at random (warm-up)
    updates_start: jax.Array  # int32: gradient updates begin once env_steps exceeds this
    # int32 numerator of the fractional update still owed (config.update_fraction: each
    # iteration past the warm-up adds p and runs credit // q updates)
    update_credit: jax.Array
    # "frames" envs (Box2D): ReplayState of {obs, frame} captured during training; projection
    # picks prototype states from it so each prototype has a real picture. None otherwise.
    reservoir: Any = None


# TrainConfig fields that no compiled program reads: the run's length and seed, its warm-up
# (an argument of init_state's program), evaluation and checkpoint schedules and loggers.
# `total_steps` and `buffer_size` enter the programs only as the buffer's capacity
# (config.buffer_capacity). test_loops checks that configs differing in these lower to the
# same programs.
HOST_ONLY_FIELDS = ("seed", "learning_starts", "eval_every", "log_tensorboard", "log_wandb",
                    "save_every", "keep_checkpoints", "save_buffer", "video_every")


@dataclasses.dataclass(frozen=True)
class Loop:
    """Static description of a run (hashable: a static argument of the jitted chunks).

    Two Loops are equal when their programs are: the same env and actor, and configs that
    differ only in host-side settings (HOST_ONLY_FIELDS; `total_steps` and `buffer_size`
    only as far as they leave the buffer's capacity alone). A second run in one process
    with another seed, length or schedule then reuses the first run's traced and compiled
    programs (JAX's in-memory jit cache) instead of tracing them again."""

    env: Any
    actor: Any
    cfg: TrainConfig

    @functools.cached_property  # hashed on every jitted call (the host loop: every step)
    def _program_key(self):
        capacity = config_lib.buffer_capacity(self.cfg)
        host = {name: getattr(TrainConfig, name) for name in HOST_ONLY_FIELDS}
        cfg = dataclasses.replace(self.cfg, total_steps=capacity, buffer_size=capacity, **host)
        key = (self.env, self.actor, cfg)
        return key, hash(key)

    def __eq__(self, other):
        if not isinstance(other, Loop):
            return NotImplemented
        return self is other or self._program_key[0] == other._program_key[0]

    def __hash__(self):
        return self._program_key[1]

    @property
    def spec(self):
        return self.env.spec

    @property
    def update_fraction(self) -> tuple[int, int]:
        """(p, q): p / q gradient updates per iteration on average (config.update_fraction)."""
        return config_lib.update_fraction(self.cfg)

    @property
    def max_updates_per_iteration(self) -> int:
        p, q = self.update_fraction
        return -(-p // q)

    @property
    def is_proto(self) -> bool:
        return isinstance(self.actor, ProtoActor)

    @property
    def on_host(self) -> bool:
        """Gymnasium envs step on the host (host loop); gymnax/MJX envs on the device."""
        return getattr(self.env, "on_host", False)


def make_actor(cfg: TrainConfig, action_dim: int):
    from protosac_jax.networks import GaussianActor

    if cfg.baseline:
        return GaussianActor(action_dim, tuple(cfg.sac.hidden_sizes), cfg.sac.log_std_min,
                             cfg.sac.log_std_max, layer_norm=cfg.sac.layer_norm == "all",
                             zero_init_heads=cfg.sac.zero_init_heads)
    return ProtoActor(action_dim, cfg.proto, tuple(cfg.sac.hidden_sizes),
                      layer_norm=cfg.sac.layer_norm == "all",
                      zero_init_heads=cfg.sac.zero_init_heads)


def init_state(loop: Loop, key, learning_starts=None) -> TrainState:
    """A run's first state. `learning_starts` (default: the config's) may be a traced int, so
    one compiled program serves runs that differ only in their warm-up (`init_state_jit`)."""
    spec, cfg = loop.spec, loop.cfg
    if learning_starts is None:
        learning_starts = cfg.learning_starts
    learner_key, env_key, noise_key, rng = jax.random.split(key, 4)
    reservoir = None
    if loop.on_host:  # the host loop resets the envs and writes `obs` (see HostRunner)
        env_state = jnp.zeros((cfg.num_envs,), jnp.float32)
        obs = jnp.zeros((cfg.num_envs,) + spec.obs_shape, spec.obs_dtype)
        render = jnp.zeros((spec.render_width,), jnp.float32)
        if spec.uses_reservoir:
            reservoir = replay.init(cfg.frame_reservoir,
                                    {"obs": obs[0], "frame": spec.render_example()})
    else:
        env_state, obs = jax.vmap(loop.env.reset)(jax.random.split(env_key, cfg.num_envs))
        render = loop.env.render_state(jax.tree_util.tree_map(lambda x: x[0], env_state))
    learner = sac.init(learner_key, loop.actor, cfg.sac, obs[0], spec.action_dim)
    next_obs = obs[0][..., -spec.frame_channels:] if spec.frame_channels else obs[0]
    example = replay.Transition(
        obs=obs[0], action=jnp.zeros((spec.action_dim,), jnp.float32),
        reward=jnp.zeros((), jnp.float32), next_obs=next_obs,
        terminated=jnp.zeros((), jnp.float32), render_state=render,
        episode_end=jnp.zeros((), jnp.float32) if cfg.sac.n_step > 1 else None)
    ts = TrainState(
        learner=learner,
        buffer=replay.init(config_lib.buffer_capacity(cfg), example),
        env_state=env_state,
        obs=obs,
        noise=jax.random.normal(noise_key, (cfg.num_envs, spec.action_dim)),
        episode_return=jnp.zeros((cfg.num_envs,), jnp.float32),
        provenance=Provenance.empty(
            cfg.proto.num_prototypes, obs[0],
            spec.render_example() if spec.uses_reservoir else render),
        rng=rng,
        env_steps=jnp.zeros((), jnp.int32),
        random_until=jnp.asarray(learning_starts, jnp.int32),
        updates_start=jnp.asarray(learning_starts, jnp.int32),
        update_credit=jnp.zeros((), jnp.int32),
        reservoir=reservoir,
    )
    # No weakly-typed leaves (gymnax's Pendulum reset has one): the chunk's output state is
    # strongly typed, and a weak leaf in the first input made the second chunk recompile.
    return jax.tree_util.tree_map(lambda x: jax.lax.convert_element_type(x, x.dtype), ts)


def correlated_noise(noise, key, rho: float):
    """eps_t = rho eps_{t-1} + sqrt(1 - rho^2) xi_t: AR(1) noise with N(0, 1) marginals."""
    fresh = jax.random.normal(key, noise.shape)
    return rho * noise + math.sqrt(1.0 - rho * rho) * fresh


def choose_actions(loop: Loop, ts: TrainState, noise_key, act_key):
    """(new noise, actions in [-1, 1]) for `ts.obs`: uniformly random while
    env_steps < random_until (warm-up), else the policy's exploration actions."""
    cfg = loop.cfg
    noise = correlated_noise(ts.noise, noise_key, cfg.noise_correlation)
    # erf(eps / sqrt 2) = 2 Phi(eps) - 1 turns N(0,1) noise into U(-1, 1) actions, keeping the
    # noise's temporal correlation (plain uniform warm-up when rho = 0).
    random_actions = jax.scipy.special.erf(noise / math.sqrt(2.0))
    obs = sac.prepare_obs(ts.learner, ts.obs, cfg.sac)
    policy_actions = loop.actor.act(ts.learner.actor_params, obs, noise, act_key)
    return noise, jnp.where(ts.env_steps < ts.random_until, random_actions, policy_actions)


def record_step(loop: Loop, ts: TrainState, actions, result: StepResult, render):
    """Insert the transitions (ts.obs, actions) -> result into the buffer and advance `ts`.

    Returns the new state and (sum of returns of episodes that ended, number that ended).
    """
    cfg, spec = loop.cfg, loop.spec
    next_obs = result.final_obs
    if spec.frame_channels:  # stacked pixels: store the newest frame only (replay.py)
        next_obs = next_obs[..., -spec.frame_channels:]
    done = jnp.logical_or(result.terminated, result.truncated)
    transition = replay.Transition(
        obs=ts.obs, action=actions, reward=result.reward, next_obs=next_obs,
        terminated=result.terminated.astype(jnp.float32), render_state=render,
        episode_end=done.astype(jnp.float32) if cfg.sac.n_step > 1 else None)
    episode_return = ts.episode_return + result.reward
    finished = (jnp.sum(jnp.where(done, episode_return, 0.0)), jnp.sum(done))
    learner = ts.learner
    if cfg.sac.normalize_obs:
        learner = learner.replace(obs_norm=learner.obs_norm.update(result.final_obs))
        learner = sync_prototype_states(loop, learner, ts.provenance)
    ts = ts.replace(
        learner=learner,
        buffer=replay.insert(ts.buffer, transition),
        env_state=result.env_state,
        obs=result.obs,
        episode_return=jnp.where(done, 0.0, episode_return),
        env_steps=ts.env_steps + cfg.num_envs,
    )
    return ts, finished


def env_step(loop: Loop, ts: TrainState):
    """Every device env takes one step; the transitions are inserted into the buffer."""
    cfg = loop.cfg
    rng, noise_key, act_key, step_key = jax.random.split(ts.rng, 4)
    noise, actions = choose_actions(loop, ts, noise_key, act_key)
    render = jax.vmap(loop.env.render_state)(ts.env_state)
    result = jax.vmap(loop.env.step)(jax.random.split(step_key, cfg.num_envs), ts.env_state,
                                     actions)
    return record_step(loop, ts.replace(rng=rng, noise=noise), actions, result, render)


def _candidates(loop: Loop, ts: TrainState):
    """Projection candidates: the replay buffer, or the frame reservoir for envs drawn from
    frames. (obs, render states, number of valid rows)."""
    if loop.spec.uses_reservoir:
        return ts.reservoir.data["obs"], ts.reservoir.data["frame"], ts.reservoir.size
    return ts.buffer.data.obs, ts.buffer.data.render_state, ts.buffer.size


def _newest_row(loop: Loop, ts: TrainState):
    """The candidate row written last: the replay buffer's, or the frame reservoir's (a ring
    of the newest `frame_reservoir` captures, so `recent_share` works there too)."""
    table = ts.reservoir if loop.spec.uses_reservoir else ts.buffer
    return jnp.mod(table.insert_position - 1, table.capacity)


def device_rollouts(env) -> bool:
    """Whether deterministic episodes of `env` can run inside the compiled step: gymnax/MJX
    envs, not Gymnasium (host) envs nor envs whose prototypes are drawn from frames."""
    return not getattr(env, "on_host", False) and not env.spec.uses_reservoir


def uses_rollouts(loop: Loop) -> bool:
    """`rollout_share` > 0 on a device env whose prototype states come from the buffer."""
    return (loop.is_proto and loop.actor.states_source and device_rollouts(loop.env)
            and not config_lib.is_static_zero(loop.cfg.proto.rollout_share))


def uses_guard(loop: Loop) -> bool:
    """`guard_episodes` > 0 on a device env whose prototype states come from the buffer."""
    return (loop.is_proto and loop.actor.states_source and device_rollouts(loop.env)
            and loop.cfg.proto.guard_episodes > 0)


def policy_scores(loop: Loop, learner: sac.SACState, actor_params, key):
    """Mean deterministic return of each of a stack of actor params [M, ...] (and of
    `learner`'s own params, last) on the same `guard_episodes` episodes: [M + 1]."""
    def score(params):
        return jnp.mean(evaluate(loop, learner.replace(actor_params=params), key,
                                 loop.cfg.proto.guard_episodes))

    # one traced evaluation for all M + 1 (the env step is compiled once, not twice)
    every = jax.tree_util.tree_map(lambda stack, own: jnp.concatenate([stack, own[None]]),
                                   actor_params, learner.actor_params)
    return jax.lax.map(score, every)


def guard_selection(loop: Loop, ts: TrainState, params, provenance: Provenance, key):
    """The re-selection at the end of training: among `selection_proposals` of them (params
    and provenance stacked [M, ...]), the one whose policy returns most on `guard_episodes`
    deterministic episodes (the same start states for all), taken only if it returns no
    less than the current selection, beyond `guard_tolerance` x |current mean|; otherwise
    the run ends with the current states and heads. The first selection is always taken
    (the placeholder prototypes are no policy to keep)."""
    cfg = loop.cfg.proto
    scores = policy_scores(loop, ts.learner, params, key)
    best = jnp.argmax(scores[:-1])
    pick = lambda x: x[best]  # noqa: E731
    params, provenance = jax.tree_util.tree_map(pick, (params, provenance))
    current = scores[-1]
    take = jnp.logical_or(scores[best] >= current - cfg.guard_tolerance * jnp.abs(current),
                          jnp.min(ts.provenance.update_step) < 0)
    return jax.tree_util.tree_map(lambda new, old: jnp.where(take, new, old),
                                  (params, provenance),
                                  (ts.learner.actor_params, ts.provenance))


def rollout_states(loop: Loop, learner: sac.SACState, key, num_episodes: int):
    """The live states of `num_episodes` deterministic episodes of the current policy, as
    projection candidates: (raw obs [E*T, ...], render states [E*T, ...], valid [E*T]); a
    state after its episode ended is not valid."""
    def record(env_state, obs, alive):
        return obs, jax.vmap(loop.env.render_state)(env_state), alive > 0

    _, (states, renders, valid) = deterministic_episodes(loop, learner, key, num_episodes,
                                                         record)
    flat = lambda x: x.reshape((-1,) + x.shape[2:])  # noqa: E731
    return flat(states), flat(renders), flat(valid)


def project(loop: Loop, ts: TrainState, final: bool = False) -> TrainState:
    """Projection: source "free" moves every prototype onto its nearest real state; source
    "states" re-chooses the states the prototypes encode (prototype.select_prototype_states).
    Both re-fit the Gaussians (blend) so the policy survives the move. At the end of
    training (`final`) with `guard_episodes` (source "states"), `selection_proposals`
    re-selections are played and the best is kept if it is no worse than the current states
    (guard_selection)."""
    obs, render, size = _candidates(loop, ts)
    proto_cfg = loop.cfg.proto
    transform = functools.partial(sac.prepare_obs, ts.learner, cfg=loop.cfg.sac)
    key = jax.random.fold_in(ts.rng, ts.learner.num_updates)
    if loop.actor.states_source:
        extra = None
        if uses_rollouts(loop):
            extra = rollout_states(loop, ts.learner, jax.random.fold_in(key, 5),
                                   proto_cfg.rollout_episodes)

        def select(key):
            return prototype.select_prototype_states(
                loop.actor, ts.learner.actor_params, obs, render, size, key,
                ts.learner.num_updates, jnp.min(ts.provenance.update_step) < 0,
                proto_cfg.projection_chunk, obs_transform=transform,
                refit=proto_cfg.refit_samples > 0,
                newest=_newest_row(loop, ts), extra=extra)

        if final and uses_guard(loop):
            # proposal 0 is the unguarded selection; the others draw other candidates
            keys = jnp.stack([key] + [jax.random.fold_in(key, 100 + i)
                                      for i in range(1, proto_cfg.selection_proposals)])
            params, provenance = guard_selection(loop, ts, *jax.lax.map(select, keys),
                                                 jax.random.fold_in(key, 11))
        else:
            params, provenance = select(key)
    else:
        refit_obs = None
        if proto_cfg.refit_samples > 0:  # states on which the policy is preserved
            refit_obs = replay.sample(ts.buffer, key, proto_cfg.refit_samples).obs
        params, provenance = project_prototypes(
            loop.actor, ts.learner.actor_params, obs, render, size, ts.learner.num_updates,
            proto_cfg.projection_chunk, obs_transform=transform, refit_obs=refit_obs)
    return ts.replace(learner=ts.learner.replace(actor_params=params), provenance=provenance)


def sync_prototype_states(loop: Loop, learner: sac.SACState, provenance: Provenance):
    """Source "states" with normalised obs: the stored network-ready prototype states follow
    the obs normaliser, so p_k = f(normalise(x_k)) with today's statistics, exactly."""
    if not (loop.is_proto and loop.actor.states_source and loop.cfg.sac.normalize_obs):
        return learner
    states = sac.prepare_obs(learner, provenance.obs, loop.cfg.sac)
    params = {**learner.actor_params, "prototype_states": states.astype(
        learner.actor_params["prototype_states"].dtype)}
    return learner.replace(actor_params=params)


def maybe_project(loop: Loop, ts: TrainState, updates_before) -> TrainState:
    """Project the prototypes when the update count, shifted by projection_phase x
    projection_every, crossed a multiple of projection_every."""
    every = loop.cfg.proto.projection_every
    if not loop.is_proto or every <= 0:
        return ts
    crossed = projection_due(loop.cfg.proto, updates_before, ts.learner.num_updates)
    crossed = jnp.logical_and(crossed, _candidates(loop, ts)[2] > 0)
    return jax.lax.cond(crossed, functools.partial(project, loop), lambda ts: ts, ts)


def projection_due(proto: config_lib.PrototypeConfig, updates_before, updates_after):
    """True where the updates (updates_before, updates_after] hold a scheduled projection:
    an update u with (u + projection_phase x projection_every) a multiple of
    projection_every. Works on Python ints and traced arrays."""
    every = proto.projection_every
    shift = int(round(proto.projection_phase * every)) % every
    return (updates_after + shift) // every > (updates_before + shift) // every


def needs_final_projection(loop: Loop, ts: TrainState) -> bool:
    """True when a ProtoSAC run ends without ever having projected (a run shorter than
    `projection_every` updates): it is projected once at the end so that every prototype is a
    real state. Source "states" with rollouts (`rollout_share`) or a guard
    (`guard_episodes`): the states are re-chosen once more at the end (partly from the final
    policy's own episodes; guarded: only if no worse), unless the last selection was at the
    final update. The checkpoint keeps the state before it, so resuming stays
    exact (trainer._final_projection)."""
    if not loop.is_proto or loop.cfg.proto.projection_every <= 0:
        return False
    if loop.actor.states_source:  # real from their first selection on
        last = int(jnp.max(ts.provenance.update_step))
        return ((uses_rollouts(loop) or uses_guard(loop))
                and 0 <= last < int(ts.learner.num_updates))
    never = int(jnp.min(ts.provenance.update_step)) < 0
    return never and int(ts.learner.num_updates) > 0 and int(_candidates(loop, ts)[2]) > 0


def kmeans_init(loop: Loop, ts: TrainState) -> TrainState:
    """`--proto-init kmeans`: prototypes <- k-means centres of encoded replay (warm-up) states."""
    key = jax.random.fold_in(ts.rng, 7919)
    obs = replay.sample(ts.buffer, key, loop.cfg.proto.kmeans_samples).obs
    params = prototype.kmeans_init(loop.actor, ts.learner.actor_params,
                                   sac.prepare_obs(ts.learner, obs, loop.cfg.sac))
    return ts.replace(learner=ts.learner.replace(actor_params=params))


def maybe_init_prototypes(loop: Loop, ts: TrainState, num_updates) -> TrainState:
    """Right before the very first gradient update: source "states" selects the first
    prototype states (from the warm-up states); source "free" with `--proto-init kmeans`
    puts the prototypes at k-means centres of encoded warm-up states."""
    if not loop.is_proto:
        return ts
    if loop.actor.states_source:
        init = functools.partial(project, loop)
    elif loop.cfg.proto.init == "kmeans":
        init = functools.partial(kmeans_init, loop)
    else:
        return ts
    first = (ts.learner.num_updates == 0) & (_candidates(loop, ts)[2] > 0) & (num_updates > 0)
    return jax.lax.cond(first, init, lambda ts: ts, ts)


def updates_due(loop: Loop, credit):
    """(new credit, gradient updates this iteration): the credit gains p, q of it make one
    update. With an integer ratio (q = 1) the count is the static int p."""
    p, q = loop.update_fraction
    if q == 1:
        return credit, p
    credit = credit + p
    return credit % q, credit // q


def update_step(loop: Loop, ts: TrainState):
    """The gradient steps due this iteration, then a projection if one is due.

    Returns (state, metrics averaged over the steps, number of steps)."""
    credit, num_updates = updates_due(loop, ts.update_credit)
    ts = maybe_init_prototypes(loop, ts, num_updates)
    rng, update_key = jax.random.split(ts.rng)
    updates_before = ts.learner.num_updates
    dynamic = None if isinstance(num_updates, int) else num_updates
    learner, metrics = sac.update_many(
        ts.learner, ts.buffer, update_key, loop.max_updates_per_iteration, loop.actor,
        loop.cfg.sac, loop.spec.action_dim, num_active=dynamic, stride=loop.cfg.num_envs)
    ts = ts.replace(learner=learner, rng=rng, update_credit=credit)
    metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
    return (maybe_project(loop, ts, updates_before), metrics,
            jnp.asarray(num_updates, jnp.int32))


def add_to_totals(totals, metrics, num_updates, started, finished):
    """Chunk totals: (metric sums weighted by the updates that produced them, gradient
    updates, iterations past the warm-up, sum of finished episodes' returns, episodes)."""
    sums, updates, started_count, return_sum, count = totals
    weight = num_updates.astype(jnp.float32)
    sums = {k: sums[k] + weight * metrics[k] for k in sums}
    return (sums, updates + num_updates, started_count + started.astype(jnp.int32),
            return_sum + finished[0], count + finished[1])


def iteration(loop: Loop, carry):
    """One env step of every env, then the due updates once env_steps > updates_start."""
    ts, totals = carry
    ts, finished = env_step(loop, ts)
    started = ts.env_steps > ts.updates_start

    def skip(ts):  # no update: zero metrics, shaped as the chunk's sums of them
        return ts, jax.tree_util.tree_map(jnp.zeros_like, totals[0]), jnp.zeros((), jnp.int32)

    ts, metrics, num_updates = jax.lax.cond(started, functools.partial(update_step, loop),
                                            skip, ts)
    return ts, add_to_totals(totals, metrics, num_updates, started, finished)


def episode_starts(loop: Loop, key, num_episodes: int, env_states=None):
    """(env states, obs) [E, ...] of `num_episodes` new episodes.

    With `env_states` (the training envs') and an env that keeps the first state of each env's
    episodes (MJX: `draw_starts`), they are `num_episodes` distinct ones of those first
    states, drawn with `key`; each was drawn by the env's reset with a key of its own, so the
    starts have the reset's distribution. The program then holds no reset: a compiled MJX
    reset costs about as much as its step (humanoid on one core of this CPU: 21.5 s vs
    24.9 s; benchmarks/RESULTS.md, "Where humanoid's cold start goes"). Otherwise (fewer
    training envs than episodes, or another env) the env's reset."""
    draw = getattr(loop.env, "draw_starts", None)
    if env_states is not None and draw is not None and loop.cfg.num_envs >= num_episodes:
        return draw(env_states, key, num_episodes)
    return jax.vmap(loop.env.reset)(jax.random.split(key, num_episodes))


def deterministic_episodes(loop: Loop, learner: sac.SACState, key, num_episodes: int,
                           record=None, env_states=None):
    """`num_episodes` full episodes of the deterministic policy, run in parallel: (their
    returns, and `record(env_state, obs, alive)` of every step before it, stacked [T, E, ...],
    or None without `record`). Starts: `episode_starts` (from `env_states` where it can)."""
    actor_params = learner.actor_params
    env = loop.env
    env_state, obs = episode_starts(loop, key, num_episodes, env_states)

    def step(carry, step_key):
        env_state, obs, total, alive = carry
        seen = None if record is None else record(env_state, obs, alive)
        actions = loop.actor.deterministic(actor_params,
                                           sac.prepare_obs(learner, obs, loop.cfg.sac))
        result = jax.vmap(env.step)(jax.random.split(step_key, num_episodes), env_state, actions)
        total = total + alive * result.reward
        alive = alive * (1.0 - jnp.logical_or(result.terminated, result.truncated))
        return (result.env_state, result.obs, total, alive), seen

    init = (env_state, obs, jnp.zeros((num_episodes,)), jnp.ones((num_episodes,)))
    (_, _, total, _), seen = jax.lax.scan(
        step, init, jax.random.split(jax.random.fold_in(key, 1), loop.spec.episode_length))
    return total, seen


def evaluate(loop: Loop, learner: sac.SACState, key, num_episodes: int, env_states=None):
    """Deterministic returns of `num_episodes` full episodes, run in parallel (starts:
    `episode_starts`)."""
    return deterministic_episodes(loop, learner, key, num_episodes,
                                  env_states=env_states)[0]


def summarize(loop: Loop, ts: TrainState, totals, num_iterations, returns):
    """The metrics of a chunk from its totals (`add_to_totals`) and the evaluation returns.
    Shared by the device chunk and the host loop."""
    metric_sums, num_updates, num_started, return_sum, count = totals
    # loss metrics averaged over the chunk's gradient updates (NaN -> null if none ran)
    out = {k: jnp.where(num_updates > 0, v / jnp.maximum(num_updates, 1), jnp.nan)
           for k, v in metric_sums.items()}
    out["charts/warmup"] = (num_iterations - num_started) / num_iterations
    # the update ratio achieved in this chunk's iterations past the warm-up (--updates-per-step)
    out["charts/updates_per_step"] = jnp.where(
        num_started > 0, num_updates / jnp.maximum(num_started * loop.cfg.num_envs, 1), jnp.nan)
    out["charts/chunk_updates"] = num_updates
    out["charts/episodic_return"] = jnp.where(count > 0, return_sum / jnp.maximum(count, 1),
                                              jnp.nan)
    out["charts/episodes"] = count
    out["eval/return_mean"] = jnp.mean(returns)
    out["eval/return_std"] = jnp.std(returns)
    out["eval/return_min"] = jnp.min(returns)
    out["charts/buffer_size"] = ts.buffer.size
    out["charts/updates"] = ts.learner.num_updates
    finite = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(
        (ts.learner.actor_params, ts.learner.critic_params, ts.learner.log_alpha))]
    out["health/params_finite"] = jnp.all(jnp.stack(finite)).astype(jnp.float32)
    if loop.is_proto:
        # latent distance each prototype moved at its last projection (0 before the first)
        out["proto/projection_churn"] = jnp.mean(ts.provenance.distance)
        out["proto/drift"] = prototype_drift(loop, ts.learner, ts.provenance)
        # update count of the last selection/projection taken (-1 before the first); after
        # a guarded end-of-training re-selection, below the update count if it was not taken
        out["proto/last_selection"] = jnp.max(ts.provenance.update_step)
    return out


def prototype_drift(loop: Loop, learner: sac.SACState, provenance: Provenance):
    """Mean latent distance between each prototype and the encoding of the state shown for
    it (0 by construction for source "states"; NaN before any state was chosen)."""
    gap = prototype.drift(loop.actor, learner.actor_params,
                          sac.prepare_obs(learner, provenance.obs, loop.cfg.sac))
    return jnp.where(jnp.min(provenance.update_step) >= 0, jnp.mean(gap), jnp.nan)


# fold_in tag of the evaluation key: evaluate with fold_in(ts.rng, EVAL_STREAM), which leaves
# the training stream untouched (chunk boundaries and extra evaluations change nothing).
EVAL_STREAM = 7


def eval_key(ts: TrainState):
    return jax.random.fold_in(ts.rng, EVAL_STREAM)


def empty_totals(loop: Loop, ts: TrainState):
    shapes = jax.eval_shape(lambda: update_step(loop, ts)[1])
    sums = {k: jnp.zeros(s.shape, jnp.float32) for k, s in shapes.items()}
    zero_i, zero_f = jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32)
    return sums, zero_i, zero_i, zero_f, zero_i


def run_chunk(loop: Loop, ts: TrainState, num_iterations):
    """`num_iterations` (traced) iterations, then a deterministic evaluation: one compiled
    program serves warm-up, refill, training and a shorter last chunk (jit with `loop`
    static)."""
    num_iterations = jnp.asarray(num_iterations, jnp.int32)
    ts, totals = jax.lax.fori_loop(
        0, num_iterations, lambda _, carry: iteration(loop, carry),
        (ts, empty_totals(loop, ts)))
    returns = evaluate(loop, ts.learner, eval_key(ts), loop.cfg.eval_episodes, ts.env_state)
    return ts, summarize(loop, ts, totals, num_iterations, returns)


run_chunk_jit = jax.jit(run_chunk, static_argnums=(0,), donate_argnums=(1,))
# not donating: the trainer keeps the state before the final projection for resuming
project_jit = jax.jit(project, static_argnums=(0,), static_argnames=("final",))
_init_state_program = jax.jit(init_state, static_argnums=(0,))


def init_state_jit(loop: Loop, key) -> TrainState:
    """`init_state` compiled, with the warm-up length passed in rather than written into the
    program: runs that differ only in `--learning-starts` load one program from the compile
    cache instead of compiling their own."""
    return _init_state_program(loop, key, jnp.asarray(loop.cfg.learning_starts, jnp.int32))


def chunk_iterations(cfg: TrainConfig) -> int:
    """Iterations per chunk: one evaluation every `eval_every` env steps."""
    return max(1, cfg.eval_every // cfg.num_envs)


def schedule(cfg: TrainConfig, done_iterations: int = 0) -> list[int]:
    """Sizes of the chunks still to run after `done_iterations`.

    Chunks end at multiples of `chunk_iterations` counted from the start of the run, and the
    last one ends at the run's end (`config.run_steps`), so it may be shorter. The chunk size
    is a traced argument of one compiled program, and the training does not depend on where
    chunks end, so a resumed run (or any other split) trains exactly as an uninterrupted one.
    """
    chunk = chunk_iterations(cfg)
    total_iters = config_lib.run_steps(cfg) // cfg.num_envs
    sizes, done = [], done_iterations
    while done < total_iters:
        end = min(total_iters, (done // chunk + 1) * chunk)
        sizes.append(end - done)
        done = end
    return sizes


# --------------------------------------------------------------------------- groups
# A group is several independent runs of one device env (seeds, swept values; trainer's
# `train_group`) trained by one program: every TrainState leaf gains a leading member axis
# and `run_group_chunk` vmaps the iteration over it. The schedule counters (env steps, update
# count and credit, buffer fill) depend only on the iteration number, so they are equal in all
# members; each iteration hands the vmapped body member 0's copy, unbatched, so the warm-up,
# update and projection `lax.cond`s stay real branches (a batched predicate would turn them
# into selects that run every branch: a projection in every iteration).


def member_loop(loop: Loop, values) -> Loop:
    """The Loop of one group member: swept settings (`values`, traced scalars inside the
    vmapped program) replace the config's, and the actor is rebuilt from that config."""
    if not values:
        return loop
    cfg = config_lib.with_values(loop.cfg, values)
    return Loop(env=loop.env, actor=make_actor(cfg, loop.spec.action_dim), cfg=cfg)


def _schedule_counters(ts: TrainState):
    return (ts.env_steps, ts.random_until, ts.updates_start, ts.update_credit,
            ts.learner.num_updates, ts.buffer.size, ts.buffer.insert_position)


def _with_schedule_counters(ts: TrainState, counters) -> TrainState:
    env_steps, random_until, updates_start, credit, num_updates, size, position = counters
    return ts.replace(
        env_steps=env_steps, random_until=random_until, updates_start=updates_start,
        update_credit=credit, learner=ts.learner.replace(num_updates=num_updates),
        buffer=ts.buffer.replace(size=size, insert_position=position))


def init_group(loop: Loop, keys, values, learning_starts=None) -> TrainState:
    """The states of a group's members, stacked: member i is `init_state` of its own loop
    and key (a lone run's `PRNGKey(seed)`), so its random streams are the lone run's.
    `learning_starts`: as in `init_state`."""
    return jax.vmap(lambda key, v: init_state(member_loop(loop, v), key, learning_starts))(
        keys, values)


def run_group_chunk(loop: Loop, ts: TrainState, values, num_iterations):
    """`run_chunk` of every member of a group (states stacked on a leading axis, swept values
    `values` {name: [G]}); metrics come back with the member axis."""
    num_iterations = jnp.asarray(num_iterations, jnp.int32)

    def body(_, carry):
        ts, totals = carry
        shared = jax.tree_util.tree_map(lambda x: x[0], _schedule_counters(ts))

        def one(ts, totals, v):
            return iteration(member_loop(loop, v),
                             (_with_schedule_counters(ts, shared), totals))

        return jax.vmap(one)(ts, totals, values)

    totals = jax.vmap(lambda ts, v: empty_totals(member_loop(loop, v), ts))(ts, values)
    ts, totals = jax.lax.fori_loop(0, num_iterations, body, (ts, totals))

    def finish(ts, totals, v):
        member = member_loop(loop, v)
        returns = evaluate(member, ts.learner, eval_key(ts), loop.cfg.eval_episodes,
                           ts.env_state)
        return summarize(member, ts, totals, num_iterations, returns)

    return ts, jax.vmap(finish)(ts, totals, values)


def project_group(loop: Loop, ts: TrainState, values, final: bool = False) -> TrainState:
    return jax.vmap(lambda ts, v: project(member_loop(loop, v), ts, final))(ts, values)


def group_member(tree, index: int):
    """Member `index` of a stacked group tree."""
    return jax.tree_util.tree_map(lambda x: x[index], tree)


_init_group_program = jax.jit(init_group, static_argnums=(0,))


def init_group_jit(loop: Loop, keys, values) -> TrainState:
    """`init_group` compiled, the warm-up length passed in (as `init_state_jit`)."""
    return _init_group_program(loop, keys, values,
                               jnp.asarray(loop.cfg.learning_starts, jnp.int32))


run_group_chunk_jit = jax.jit(run_group_chunk, static_argnums=(0,), donate_argnums=(1,))
project_group_jit = jax.jit(project_group, static_argnums=(0,), static_argnames=("final",))


# --------------------------------------------------------------------------- host loop
# Gymnasium envs step on the host. The same pieces as the device loop (choose_actions,
# record_step, update_step, summarize) run in one jitted call per vector step: the host sends
# the step's results for all envs at once and gets the next actions back.


def host_act(loop: Loop, ts: TrainState):
    """(state, actions) for the current `ts.obs` (same RNG stream as env_step)."""
    rng, noise_key, act_key, _ = jax.random.split(ts.rng, 4)
    noise, actions = choose_actions(loop, ts, noise_key, act_key)
    return ts.replace(rng=rng, noise=noise), actions


def host_record(loop: Loop, ts: TrainState, actions, obs, reward, terminated, truncated,
                final_obs, render):
    """Record one host vector step (the transitions into the buffer)."""
    result = StepResult(env_state=ts.env_state, obs=obs, reward=reward, terminated=terminated,
                        truncated=truncated, final_obs=final_obs)
    return record_step(loop, ts, actions, result, render)


def host_learn(loop: Loop, ts: TrainState, totals, finished, updating: bool):
    """Run the due updates (and projection) after a host step, pick the next actions.

    `updating` is static (the host knows the step count): no `lax.cond` around the update,
    which matters on CPU where convolutions inside control flow run ~5x slower.
    """
    if updating:
        ts, metrics, num_updates = update_step(loop, ts)
    else:
        metrics = {k: jnp.zeros_like(v) for k, v in totals[0].items()}
        num_updates = jnp.zeros((), jnp.int32)
    totals = add_to_totals(totals, metrics, num_updates, jnp.asarray(updating), finished)
    ts, next_actions = host_act(loop, ts)
    return ts, totals, next_actions


def start_episodes(loop: Loop, ts: TrainState, obs):
    """New episodes begin (run start or resume): set obs, zero running returns, act."""
    ts = ts.replace(obs=jnp.asarray(obs, ts.obs.dtype),
                    episode_return=jnp.zeros_like(ts.episode_return))
    return host_act(loop, ts)


def add_frame(ts: TrainState, frame):
    """Capture env 0's current (obs, rendered frame) into the reservoir."""
    item = {"obs": ts.obs[:1], "frame": frame[None]}
    return ts.replace(reservoir=replay.insert(ts.reservoir, item))


def deterministic_actions(loop: Loop, learner: sac.SACState, obs):
    return loop.actor.deterministic(learner.actor_params,
                                    sac.prepare_obs(learner, obs, loop.cfg.sac))


host_record_jit = jax.jit(host_record, static_argnums=(0,), donate_argnums=(1,))
host_learn_jit = jax.jit(host_learn, static_argnums=(0, 4), donate_argnums=(1, 2))


def host_iteration_jit(loop: Loop, ts: TrainState, totals, actions, obs, reward, terminated,
                       truncated, final_obs, render, updating: bool):
    """One host vector step: record it, then the due updates and the next actions.

    Two compiled programs, not one: in one program XLA (CPU) fuses the buffer write into the
    gathers of the first update's sample, which then read the old buffer while the write
    needs a new one, i.e. two whole-buffer copies per step (HalfCheetah-v5's 1M rows: 150 MB).
    Split, the write is in place; measured in benchmarks/RESULTS.md ("Host step")."""
    ts, finished = host_record_jit(loop, ts, actions, obs, reward, terminated, truncated,
                                   final_obs, render)
    return host_learn_jit(loop, ts, totals, finished, updating)


start_episodes_jit = jax.jit(start_episodes, static_argnums=(0,), donate_argnums=(1,))
add_frame_jit = jax.jit(add_frame, donate_argnums=(0,))
empty_totals_jit = jax.jit(empty_totals, static_argnums=(0,))
summarize_jit = jax.jit(summarize, static_argnums=(0,))
deterministic_actions_jit = jax.jit(deterministic_actions, static_argnums=(0,))


class HostRunner:
    """Runs chunks of a Gymnasium run: `runner(loop, ts, iterations) -> (ts, metrics)`, the
    same contract as `run_chunk_jit`, so the trainer drives both loops alike.

    The live envs start at the first chunk: seeded from (seed, env_steps), so a resumed run
    starts fresh episodes (Gymnasium env states are not checkpointed; the buffer, learner,
    noise and RNG are).
    """

    def __init__(self, loop: Loop):
        self.loop = loop
        self.envs = None
        self.eval_envs = None
        self.actions = None
        self.evaluations = 0
        self.eval_seconds = 0.0  # wall-clock spent in `evaluate` (benchmarks subtract it)
        # `stop() -> bool`, asked after every vector step (the trainer's signal flag): a host
        # chunk is a Python loop (minutes on LunarLander, CarRacing), so it ends at the step a
        # signal arrives, unevaluated; `iterations_done` says how far the last chunk got
        self.stop = None
        self.iterations_done = 0
        # Frames for the reservoir are only needed to draw prototypes: not for --baseline.
        self._captures = (loop.spec.uses_reservoir and loop.is_proto
                          and loop.cfg.frame_every > 0)

    def _start(self, ts: TrainState) -> TrainState:
        from protosac_jax.envs.gym_envs import GymVectorEnv

        cfg = self.loop.cfg
        self.envs = GymVectorEnv(self.loop.env, cfg.num_envs,
                                 seed=cfg.seed * 1_000_003 + int(ts.env_steps),
                                 render_first=self._captures)
        ts, self.actions = start_episodes_jit(self.loop, ts, self.envs.reset())
        return ts

    def __call__(self, loop: Loop, ts: TrainState, num_iterations: int):
        if self.envs is None:
            ts = self._start(ts)
        capture = self._captures
        totals = empty_totals_jit(loop, ts)
        env_steps, updates_start = int(ts.env_steps), int(ts.updates_start)
        done = 0
        for i in range(num_iterations):
            if done and self.stop is not None and self.stop():
                break
            done += 1
            env_steps += loop.cfg.num_envs  # as record_step counts: updates once past the start
            if capture and i % loop.cfg.frame_every == 0:
                ts = add_frame_jit(ts, self.envs.frame())
            render = self.envs.render_states()  # the state of ts.obs, before the step
            obs, reward, terminated, truncated, final_obs = self.envs.step(
                np.asarray(self.actions))
            ts, totals, self.actions = host_iteration_jit(
                loop, ts, totals, self.actions, obs, reward, terminated, truncated, final_obs,
                render, env_steps > updates_start)
        self.iterations_done = done
        if done < num_iterations:  # stopped: no evaluation (NaN, logged as null)
            returns = np.full(loop.cfg.eval_episodes, np.nan, np.float32)
        else:
            returns = self.evaluate(ts.learner, loop.cfg.eval_episodes, int(ts.env_steps))
        return ts, summarize_jit(loop, ts, totals, done, jnp.asarray(returns))

    def evaluate(self, learner: sac.SACState, num_episodes: int, env_steps: int) -> np.ndarray:
        """Deterministic returns of `num_episodes` episodes, one env each, stepped together.

        The evaluation at `env_steps` starts env i from seed base + env_steps * n + i: no two
        evaluations of a run share a start state (env_steps differ by >= 1), and the same
        evaluation after a resume starts from the same states."""
        from protosac_jax.envs.gym_envs import GymVectorEnv

        loop = self.loop
        t0 = time.perf_counter()
        if self.eval_envs is None:
            self.eval_envs = GymVectorEnv(loop.env, num_episodes, seed=0)
        self.eval_envs.seed = (loop.cfg.seed * 1_000_003 + 999_983
                               + env_steps * num_episodes)
        obs = self.eval_envs.reset()
        total = np.zeros(num_episodes)
        alive = np.ones(num_episodes, bool)
        for _ in range(loop.spec.episode_length):
            actions = np.asarray(deterministic_actions_jit(loop, learner, obs))
            obs, reward, terminated, truncated, _ = self.eval_envs.step(actions)
            total += np.where(alive, reward, 0.0)
            alive &= ~(terminated | truncated)
            if not alive.any():
                break
        self.evaluations += 1
        self.eval_seconds += time.perf_counter() - t0
        return total.astype(np.float32)

    def close(self) -> None:
        for envs in (self.envs, self.eval_envs):
            if envs is not None:
                envs.close()
