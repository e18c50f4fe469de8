"""The training loop's counters: chunk schedule, exact update ratios, evaluation streams."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from protosac_jax import config as config_lib
from protosac_jax import loops
from protosac_jax.config import ConfigError
from protosac_jax.envs import make_env


def small_cfg(**kw):
    kw = {"learning_starts": 8, "eval_episodes": 2, "buffer_size": 1000, **kw}
    cfg = dataclasses.replace(config_lib.preset("pendulum"), **kw)
    return dataclasses.replace(
        cfg, sac=dataclasses.replace(cfg.sac, hidden_sizes=(16,), batch_size=8),
        proto=dataclasses.replace(cfg.proto, num_prototypes=4, latent_dim=4,
                                  projection_every=0))


def make(cfg):
    env = make_env("pendulum")
    loop = loops.Loop(env, loops.make_actor(cfg, 1), cfg)
    return loop, loops.init_state_jit(loop, jax.random.PRNGKey(cfg.seed))


def leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(leaves(a), leaves(b)))


@pytest.mark.parametrize("total,num_envs,eval_every,done,expected", [
    (10_000, 1, 1_000, 0, [1000] * 10),
    (2_500, 1, 1_000, 0, [1000, 1000, 500]),          # a shorter last chunk, not 3000 steps
    (2_500, 1, 1_000, 1_200, [800, 500]),             # resumed mid-chunk: back on the grid
    (300, 4, 1_000, 0, [75]),                          # shorter than eval_every: one chunk
    (301, 4, 100, 0, [25, 25, 25, 1]),                 # rounded up to whole iterations only
    (5_600, 16, 10_000, 0, [350]),
    (11_200, 16, 10_000, 350, [275, 75]),
])
def test_schedule_ends_chunks_on_the_eval_grid_and_at_the_run_end(total, num_envs, eval_every,
                                                                   done, expected):
    cfg = dataclasses.replace(config_lib.TrainConfig(), total_steps=total, num_envs=num_envs,
                              eval_every=eval_every)
    assert loops.schedule(cfg, done) == expected


def test_a_short_run_then_the_rest_runs_the_chunks_of_the_whole_run():
    whole = dataclasses.replace(config_lib.TrainConfig(), total_steps=2_400, eval_every=1_000)
    short = dataclasses.replace(whole, total_steps=1_200)
    first = loops.schedule(short)
    rest = loops.schedule(whole, sum(first))
    assert sum(first) + sum(rest) == sum(loops.schedule(whole)) == 2_400
    # evaluations of the resumed run fall where the whole run's do (plus the short run's end)
    ends = np.cumsum(first + rest).tolist()
    assert set(np.cumsum(loops.schedule(whole)).tolist()) <= set(ends)


# One config for the tests below, so they share one compiled chunk: a fractional ratio (one
# update every fourth iteration) exercises the update credit.
QUARTER = dict(updates_per_step=0.25, learning_starts=0)


def test_where_chunks_end_does_not_change_training():
    """Two chunks of 30 iterations are bitwise one chunk of 60: the evaluation at the end of a
    chunk draws its key beside the training stream (resume and eval_every rely on this)."""
    cfg = small_cfg(**QUARTER)
    loop, ts = make(cfg)
    split, _ = loops.run_chunk_jit(loop, ts, 30)
    split, _ = loops.run_chunk_jit(loop, split, 30)
    _, ts = make(cfg)
    whole, _ = loops.run_chunk_jit(loop, ts, 60)
    assert int(whole.learner.num_updates) == 15
    assert same(split, whole)


@pytest.mark.parametrize("num_envs,ups,iterations,expected", [
    (1, 0.25, 40, 10),     # was 40 (rounded up to 1 per iteration)
    (5, 0.5, 10, 25),      # was 20 (Python rounds 2.5 to 2)
])
def test_updates_per_step_is_honoured_exactly(num_envs, ups, iterations, expected):
    cfg = small_cfg(num_envs=num_envs, updates_per_step=ups, learning_starts=0)
    loop, ts = make(cfg)
    ts, metrics = loops.run_chunk_jit(loop, ts, iterations)
    assert int(ts.learner.num_updates) == expected
    assert float(metrics["charts/updates_per_step"]) == pytest.approx(ups)
    assert int(metrics["charts/chunk_updates"]) == expected
    assert np.isfinite(float(metrics["losses/critic"]))


def test_fractional_update_credit_carries_across_chunks():
    """7 chunks of 3 iterations at 0.25 updates per iteration: 21 iterations -> 5 updates, the
    same as one chunk of 21 (the credit is part of the state, and so of checkpoints)."""
    cfg = small_cfg(**QUARTER)
    loop, ts = make(cfg)
    for _ in range(7):
        ts, _ = loops.run_chunk_jit(loop, ts, 3)
    _, fresh = make(cfg)
    whole, _ = loops.run_chunk_jit(loop, fresh, 21)
    assert int(ts.learner.num_updates) == 5 and int(ts.update_credit) == 1
    assert same(ts, whole)


def test_update_fraction_takes_the_decimal_exactly_or_refuses():
    fraction = lambda n, ups: config_lib.update_fraction(  # noqa: E731
        dataclasses.replace(config_lib.TrainConfig(), num_envs=n, updates_per_step=ups))
    assert fraction(1, 0.1) == (1, 10)
    assert fraction(3, 0.1) == (3, 10)
    assert fraction(128, 0.125) == (16, 1)
    assert fraction(5, 0.5) == (5, 2)
    with pytest.raises(ConfigError, match="cannot be honoured exactly"):
        fraction(1, 1.23456789e-3)
    with pytest.raises(ConfigError, match="updates-per-step"):
        config_lib.validate(dataclasses.replace(config_lib.TrainConfig(),
                                                updates_per_step=float("nan")))


def test_gymnasium_evaluations_never_share_start_states(monkeypatch):
    """Evaluation e used to seed env i with base + e + i: 9 of 10 start states repeated in
    the next evaluation. Now each evaluation has its own block of seeds."""
    from protosac_jax.envs import gym_envs, make_env_for

    cfg = dataclasses.replace(small_cfg(env="Pendulum-v1"), eval_episodes=4)
    env = make_env_for(cfg)
    assert env.on_host
    loop = loops.Loop(env, loops.make_actor(cfg, 1), cfg)
    ts = loops.init_state_jit(loop, jax.random.PRNGKey(0))
    starts = []
    reset = gym_envs.GymVectorEnv.reset

    def recording_reset(self):
        obs = reset(self)
        starts.append(np.asarray(obs).copy())
        return obs

    monkeypatch.setattr(gym_envs.GymVectorEnv, "reset", recording_reset)
    runner = loops.HostRunner(loop)
    try:
        for env_steps in (1000, 1001, 2000, 1000):
            runner.evaluate(ts.learner, 4, env_steps)
    finally:
        runner.close()
    first, second, third, again = starts
    rows = np.concatenate([first, second, third])
    assert len({tuple(np.round(r, 6)) for r in rows}) == 12  # 3 evaluations x 4 fresh states
    np.testing.assert_array_equal(first, again)  # the same evaluation step: the same states


def test_runs_differing_only_in_host_settings_share_their_programs():
    """Runs that differ only in host-side settings (loops.HOST_ONLY_FIELDS: warm-up length,
    seed, schedules, loggers; and length or asked buffer that leave its capacity alone) lower
    to the same programs, so the persistent compile cache (keyed by HLO) serves one to the
    other, and their Loops are equal, so one process reuses the traced programs (JAX's jit
    cache keys static arguments by equality). The warm-up still reaches the state."""
    import jax.numpy as jnp

    # buffers of 1000 rows (the capacity is in the programs): capped by a's length, b's size
    a = small_cfg(learning_starts=8, total_steps=1000, buffer_size=5000)
    b = small_cfg(learning_starts=30, total_steps=3000, seed=3, buffer_size=1000,
                  eval_every=700, log_tensorboard=False, log_wandb=True, save_every=100,
                  keep_checkpoints=1, save_buffer=False, video_every=500)
    assert {f for f in loops.HOST_ONLY_FIELDS if getattr(a, f) == getattr(b, f)} == set()
    key = jax.random.PRNGKey(0)
    (loop_a, ts_a), (loop_b, ts_b) = make(a), make(b)
    assert loop_a == loop_b and hash(loop_a) == hash(loop_b)
    assert loop_b.cfg.seed == 3  # host code still reads the run's own settings
    assert loop_a != make(small_cfg(total_steps=999))[0]  # a buffer of 999 rows: not equal
    assert loop_a != make(small_cfg(total_steps=1000, eval_episodes=3))[0]
    assert (int(ts_a.random_until), int(ts_a.updates_start)) == (8, 8)
    assert (int(ts_b.random_until), int(ts_b.updates_start)) == (30, 30)

    # each lowered from a closure over its own loop: traced afresh, not taken from the jit
    # cache that the equal Loops share
    def text(fn, *args):
        return jax.jit(fn).lower(*args).as_text()

    def init(loop, warm_up):
        return text(lambda k, w: loops.init_state(loop, k, w), key, warm_up)

    assert init(loop_a, jnp.int32(8)) == init(loop_b, jnp.int32(30))
    # the warm-up written in as a constant would make two programs (hence the argument)
    assert (text(lambda k: loops.init_state(loop_a, k), key)
            != text(lambda k: loops.init_state(loop_b, k), key))
    for program, args in [(loops.run_chunk, (1,)), (loops.project, ())]:
        assert (text(lambda ts, *x: program(loop_a, ts, *x), ts_a, *args)
                == text(lambda ts, *x: program(loop_b, ts, *x), ts_b, *args)), program
    keys = jnp.stack([key, key])
    assert (text(lambda k, w: loops.init_group(loop_a, k, {}, w), keys, jnp.int32(8))
            == text(lambda k, w: loops.init_group(loop_b, k, {}, w), keys, jnp.int32(30)))


@pytest.mark.parametrize("heads,first,taken", [
    ([0.3, 0.0, 0.2], False, 1),    # the best proposal returns as much as the current: taken
    ([0.3, 0.05, 0.2], False, 1),   # 5 % less, within the 10 % tolerance: taken
    ([0.3, 0.2], False, None),      # the best returns 20 % less: the current states are kept
    ([0.1, -0.5, 0.2], False, 1),   # more than the current: taken
    ([0.3, 0.2], True, 1),          # the first selection is always taken (its best)
])
def test_the_final_re_selection_keeps_the_best_proposal_if_it_is_no_worse(monkeypatch, heads,
                                                                          first, taken):
    """loops.guard_selection plays every proposal and the current policy on the same
    episodes. Here a stand-in evaluation scores a policy -100 (1 + its first head's mean), so
    the answer is known for each set of proposals."""
    import jax.numpy as jnp

    cfg = small_cfg()
    cfg = dataclasses.replace(cfg, proto=dataclasses.replace(
        cfg.proto, guard_episodes=3, selection_proposals=len(heads)))
    loop, ts = make(cfg)
    assert loops.uses_guard(loop)
    seen = []

    def evaluate(loop_, learner, key, num_episodes):
        seen.append((num_episodes, np.asarray(key)))
        score = -100.0 * (1.0 + learner.actor_params["params"]["proto_means"][0, 0])
        return jnp.full((num_episodes,), score)

    monkeypatch.setattr(loops, "evaluate", evaluate)
    params = ts.learner.actor_params
    inner = dict(params["params"])
    inner["proto_means"] = jnp.zeros_like(inner["proto_means"])
    current = {**params, "params": inner}
    step = -1 if first else 5
    provenance = ts.provenance.replace(update_step=jnp.full_like(ts.provenance.update_step,
                                                                 step))
    ts = ts.replace(learner=ts.learner.replace(actor_params=current), provenance=provenance)
    proposals = [{**current, "params": {**inner, "proto_means": inner["proto_means"] + h}}
                 for h in heads]
    proposed_provenance = [provenance.replace(
        update_step=jnp.full_like(provenance.update_step, 9),
        buffer_index=jnp.full_like(provenance.buffer_index, i)) for i in range(len(heads))]
    stack = lambda trees: jax.tree_util.tree_map(lambda *x: jnp.stack(x), *trees)  # noqa
    got, got_provenance = loops.guard_selection(loop, ts, stack(proposals),
                                                stack(proposed_provenance),
                                                jax.random.PRNGKey(3))
    want = (current, provenance) if taken is None else (proposals[taken],
                                                        proposed_provenance[taken])
    assert same(got, want[0]) and same(got_provenance, want[1])
    # every policy (the proposals under lax.map: traced once) was played on the same
    # episodes, guard_episodes of them
    assert all(n == 3 for n, _ in seen) and all(np.array_equal(seen[0][1], k) for _, k in seen)


def test_a_guarded_run_logs_its_last_selection():
    """Through training (the compiled chunk): the metric that shows whether scheduled
    re-selections were taken, and prototypes that are real states at the end."""
    cfg = small_cfg(total_steps=200, eval_every=200)
    cfg = dataclasses.replace(cfg, proto=dataclasses.replace(
        cfg.proto, guard_episodes=2, projection_every=50))
    loop, ts = make(cfg)
    ts, metrics = loops.run_chunk_jit(loop, ts, 200 // cfg.num_envs)
    last = int(metrics["proto/last_selection"])
    assert last >= 0 and last % 50 == 0 and last <= int(ts.learner.num_updates)
    assert int(np.max(np.asarray(ts.provenance.update_step))) == last


@pytest.mark.parametrize("phase, want", [(0.0, [100, 200, 300]), (0.5, [50, 150, 250]),
                                         (0.25, [75, 175, 275])])
def test_projections_fall_at_their_phase_of_the_cycle(phase, want):
    """--projection-phase moves the scheduled projections within each cycle (the Gymnasium
    MuJoCo preset's 0.5 keeps them off the updates right before its evaluations)."""
    proto = dataclasses.replace(config_lib.PrototypeConfig(), projection_every=100,
                                projection_phase=phase)
    due = [u for u in range(1, 301) if loops.projection_due(proto, u - 1, u)]
    assert due == want
    # a chunk of many updates at once: due exactly when one of them is scheduled
    assert bool(loops.projection_due(proto, jnp.int32(want[0] - 1), jnp.int32(want[0] + 20)))
    assert not bool(loops.projection_due(proto, jnp.int32(want[0]), jnp.int32(want[1] - 1)))
