"""Honest learning tests: real training, real returns.

The short ones run in CI; the full Foundation checks (10k steps x 3 seeds x 2 actors on
Pendulum, 100k steps x 3 seeds on MountainCar, each actor's seeds trained as one group,
train.py --num-seeds) are marked slow: `make test-slow`.
"""

import dataclasses

import pytest

import protosac_jax
from protosac_jax import config as config_lib


def _train(tmp_path, env="pendulum", **overrides):
    cfg = dataclasses.replace(config_lib.preset(env), log_tensorboard=False, **overrides)
    return protosac_jax.train(cfg, out=tmp_path / f"{cfg.algo}-{cfg.seed}", progress=False,
                              quiet=True)


def _uniform_random_return(env_name="pendulum", episodes=16, seed=123):
    """Mean return of `episodes` episodes of uniformly random actions in [-1, 1] (what the
    envs take; they rescale to the action box), played in the env itself: a real random
    baseline, not a policy of any kind."""
    import jax
    import jax.numpy as jnp

    from protosac_jax.envs import make_env

    env = make_env(env_name)
    spec = env.spec

    @jax.jit
    def play(key):
        reset_key, run_key = jax.random.split(key)
        env_state, _ = jax.vmap(env.reset)(jax.random.split(reset_key, episodes))

        def step(carry, step_key):
            env_state, total, alive = carry
            action_key, env_key = jax.random.split(step_key)
            actions = jax.random.uniform(action_key, (episodes, spec.action_dim),
                                         minval=-1.0, maxval=1.0)
            result = jax.vmap(env.step)(jax.random.split(env_key, episodes), env_state,
                                        actions)
            total = total + alive * result.reward
            alive = alive * (1.0 - jnp.logical_or(result.terminated, result.truncated))
            return (result.env_state, total, alive), None

        init = (env_state, jnp.zeros(episodes), jnp.ones(episodes))
        (_, total, alive), _ = jax.lax.scan(step, init,
                                            jax.random.split(run_key, spec.episode_length))
        return total, alive

    total, alive = play(jax.random.PRNGKey(seed))
    assert float(alive.sum()) == 0  # every episode ran to its end (Pendulum: the time limit)
    return float(total.mean())


@pytest.mark.parametrize("baseline", [False, True])
def test_pendulum_improves_clearly_over_random_actions_in_5k_steps(tmp_path, baseline):
    random_actions_return = _uniform_random_return()
    assert random_actions_return < -900  # Pendulum-v1's random policy: about -1200
    result = _train(tmp_path, baseline=baseline, total_steps=5_000, eval_every=1_000)
    # the first evaluation comes before any gradient update: the untrained (deterministic,
    # randomly initialised) policy, which is not a random-action baseline
    first = result.history[0]
    assert first["charts/updates"] == 0 and first["charts/warmup"] == 1.0
    untrained_policy_return = first["eval/return_mean"]
    assert result.final_eval > -600
    assert result.final_eval > random_actions_return + 500
    assert result.final_eval > untrained_policy_return + 300
    if not baseline:  # decisions are crisp and the prototypes are their states, while learning
        last = result.history[-1]
        assert last["proto/effective"] <= 2.0 and last["proto/top1_weight"] >= 0.7
        assert abs(last["proto/drift"]) < 1e-5
        # and faithful: deleting each evaluated decision's top prototype moves its action far
        # more than deleting a random one (seed 0: 0.79 vs 0.029)
        import jax.numpy as jnp
        import numpy as np

        from protosac_jax import interpret, sac, visualize

        agent = protosac_jax.load(result.run_dir)
        eps = visualize.play_episodes(agent.config, agent.spec, agent.actor, agent.learner, 2)
        obs = sac.prepare_obs(agent.learner, jnp.asarray(np.concatenate([e.obs for e in eps])),
                              agent.config.sac)
        change = interpret.action_change_curves(agent.actor, agent.params, obs, [1])
        assert change["action_change_top"][0] >= 3 * change["action_change_random"][0]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pendulum_default_decisions_are_readable(tmp_path, seed):
    """issue #15's floors on the default preset (10k steps), measured as viz.py does. Top-1
    agreement is not asserted: with the suite's XLA flags (other float rounding, so another
    run) seed 0 holds the pendulum at -0.26 rad in 3 of 5 episodes with a blend of two
    prototypes, agreement 0.49 (the 2026-12-06 preset; 0.83-0.99 on seeds 0-27 without those
    flags; benchmarks/RESULTS.md)."""
    import jax.numpy as jnp
    import numpy as np

    from protosac_jax import interpret, sac, visualize

    _train(tmp_path, seed=seed)
    agent = protosac_jax.load(tmp_path / f"protosac-{seed}")
    eps = visualize.play_episodes(agent.config, agent.spec, agent.actor, agent.learner, 5)
    d = visualize.decisions(agent, eps)
    assert d["effective_prototypes"] <= 2.0 and d["lookalike"] >= 0.8
    assert d["nearest_prototype_score"] >= 0.9 and d["return_full"] >= -200
    obs = sac.prepare_obs(agent.learner, jnp.asarray(np.concatenate([e.obs for e in eps])),
                          agent.config.sac)
    change = interpret.action_change_curves(agent.actor, agent.params, obs, [1])
    assert change["action_change_top"][0] >= 3 * change["action_change_random"][0]


def _train_seeds(tmp_path, seeds: int, env="pendulum", **overrides):
    """Seeds 0..seeds-1 as one group (train.py --num-seeds): each a complete run."""
    from protosac_jax import groups

    cfg = dataclasses.replace(config_lib.preset(env), log_tensorboard=False, **overrides)
    return groups.train_group(cfg, seeds, out=tmp_path / f"{cfg.algo}-seeds", progress=False,
                              quiet=True).members


@pytest.mark.slow
@pytest.mark.parametrize("baseline", [False, True])
def test_pendulum_default_preset_10k_steps_reaches_minus_200(tmp_path, baseline):
    for member in _train_seeds(tmp_path, 3, baseline=baseline):
        assert member.history[-1]["env_steps"] == 10_000
        assert member.final_eval >= -200, member.run_dir


@pytest.mark.slow
def test_mountaincar_protosac_reaches_the_flag_within_100k_steps(tmp_path):
    for member in _train_seeds(tmp_path, 3, env="mountaincar"):
        assert member.history[-1]["env_steps"] <= 100_000
        assert max(h["eval/return_mean"] for h in member.history) >= 80, member.run_dir
