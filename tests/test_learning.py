"""Honest learning tests: real training, real returns.

The short ones run in CI; the full Foundation checks (10k steps x 3 seeds x 2 actors on
Pendulum, 100k steps x 3 seeds on MountainCar) are marked slow: `make test-slow`.
"""

import dataclasses

import pytest

import protosac_jax
from protosac_jax import config as config_lib


def _train(tmp_path, env="pendulum", **overrides):
    cfg = dataclasses.replace(config_lib.preset(env), log_tensorboard=False, **overrides)
    return protosac_jax.train(cfg, out=tmp_path / f"{cfg.algo}-{cfg.seed}", progress=False,
                              quiet=True)


@pytest.mark.parametrize("baseline", [False, True])
def test_pendulum_improves_clearly_over_random_in_5k_steps(tmp_path, baseline):
    result = _train(tmp_path, baseline=baseline, total_steps=5_000, eval_every=1_000)
    random_policy_return = result.history[0]["eval/return_mean"]  # after the random warm-up
    assert random_policy_return < -900
    assert result.final_eval > -600
    assert result.final_eval > random_policy_return + 500


@pytest.mark.slow
@pytest.mark.parametrize("baseline", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pendulum_default_preset_10k_steps_reaches_minus_200(tmp_path, baseline, seed):
    result = _train(tmp_path, baseline=baseline, seed=seed)
    assert result.history[-1]["env_steps"] == 10_000
    assert result.final_eval >= -200


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mountaincar_protosac_reaches_the_flag_within_100k_steps(tmp_path, seed):
    result = _train(tmp_path, env="mountaincar", seed=seed)
    assert result.history[-1]["env_steps"] <= 100_000
    assert max(h["eval/return_mean"] for h in result.history) >= 80
