"""gymnax backend: dynamics match Gymnasium step by step; auto-reset and truncation."""

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from protosac_jax import envs
from protosac_jax.envs import EnvError, make_env


def _actions(n, scale, seed=0):
    return np.random.default_rng(seed).uniform(-scale, scale, size=(n, 1)).astype(np.float32)


def test_pendulum_matches_gymnasium_step_by_step():
    env = make_env("pendulum")
    gym_env = gymnasium.make("Pendulum-v1").unwrapped
    gym_env.reset(seed=0)
    state, _ = env.reset(jax.random.PRNGKey(0))
    state = state.replace(theta=jnp.float32(2.5), theta_dot=jnp.float32(-0.7))
    gym_env.state = np.array([2.5, -0.7])
    step = jax.jit(env.step)
    for i, u in enumerate(_actions(150, 2.0)):
        result = step(jax.random.PRNGKey(i), state, jnp.asarray(u / 2.0))  # ours takes [-1, 1]
        gym_obs, gym_reward, _, _, _ = gym_env.step(u)
        np.testing.assert_allclose(np.asarray(result.final_obs), gym_obs, atol=2e-4)
        assert float(result.reward) == pytest.approx(gym_reward, abs=2e-3)
        state = result.env_state


def test_mountaincar_matches_gymnasium_including_wall_and_goal():
    env = make_env("mountaincar")
    gym_env = gymnasium.make("MountainCarContinuous-v0").unwrapped
    gym_env.reset(seed=0)
    state, _ = env.reset(jax.random.PRNGKey(0))
    # Start near the left wall moving left: exercises the wall rule, then push right to the goal.
    state = state.replace(position=jnp.float32(-1.15), velocity=jnp.float32(-0.05))
    gym_env.state = np.array([-1.15, -0.05], dtype=np.float32)
    actions = np.concatenate([-np.ones((3, 1)), _actions(30, 1.0), np.ones((300, 1))])
    step = jax.jit(env.step)
    reached = False
    for i, u in enumerate(actions.astype(np.float32)):
        result = step(jax.random.PRNGKey(i), state, jnp.asarray(u))
        gym_obs, gym_reward, gym_term, _, _ = gym_env.step(u)
        np.testing.assert_allclose(np.asarray(result.final_obs), gym_obs, atol=1e-4)
        assert float(result.reward) == pytest.approx(gym_reward, abs=1e-3)
        assert bool(result.terminated) == gym_term
        state = result.env_state
        if gym_term:
            reached = True
            break
    assert reached, "the scripted policy should reach the flag"


def test_truncation_at_time_limit_with_final_obs_and_auto_reset():
    env = make_env("pendulum")
    state, obs = env.reset(jax.random.PRNGKey(0))
    step = jax.jit(env.step)
    for t in range(200):
        result = step(jax.random.PRNGKey(t), state, jnp.zeros(1))
        state = result.env_state
        if t < 199:
            assert not bool(result.truncated)
    assert bool(result.truncated) and not bool(result.terminated)
    assert int(state.time) == 0  # auto-reset
    assert not np.allclose(np.asarray(result.obs), np.asarray(result.final_obs))


def test_action_rescaling_to_box_bounds():
    env = make_env("pendulum")
    state, _ = env.reset(jax.random.PRNGKey(0))
    result = env.step(jax.random.PRNGKey(1), state, jnp.array([1.0]))
    assert float(result.env_state.last_u) == pytest.approx(2.0)
    result = env.step(jax.random.PRNGKey(1), state, jnp.array([-0.5]))
    assert float(result.env_state.last_u) == pytest.approx(-1.0)


def test_vmapped_envs():
    env = make_env("mountaincar")
    states, obs = jax.vmap(env.reset)(jax.random.split(jax.random.PRNGKey(0), 8))
    assert obs.shape == (8, 2)
    result = jax.vmap(env.step)(jax.random.split(jax.random.PRNGKey(1), 8), states,
                                jnp.zeros((8, 1)))
    assert result.reward.shape == (8,) and result.terminated.shape == (8,)


def test_registry_names_indices_and_clear_errors():
    assert envs.resolve_name("Pendulum-v1") == "pendulum"
    assert envs.resolve_index(0) == "pendulum" and envs.resolve_index(2) == "mountaincar"
    assert envs.resolve_index(1) == "LunarLanderContinuous-v3"
    assert envs.resolve_index(5) == "Hopper-v5"  # the Gymnasium MuJoCo env, not brax's hopper
    assert envs.resolve_index(0, backend="gymnasium") == "Pendulum-v1"
    # ... and that canonical name really is the Gymnasium env, the alias the gymnax one
    assert envs.make_env(envs.resolve_index(0, backend="gymnasium")).on_host
    assert not getattr(envs.make_env(envs.resolve_index(0)), "on_host", False)
    assert not getattr(envs.make_env("pendulum-v1"), "on_host", False)
    with pytest.raises(EnvError, match="did you mean Hopper-v5"):
        envs.resolve_name("hopper-v5")
    assert envs.resolve_name("humanoid") == "humanoid"
    assert envs.resolve_name("Hopper") == "hopper"
    with pytest.raises(EnvError, match="unknown env 'nope'.*inverted_pendulum"):
        envs.resolve_name("nope")
    assert envs.resolve_name("fast") == "fast"  # any brax env name passes through
    # the names listed without importing brax are brax's registry
    from protosac_jax.envs import names
    from protosac_jax.envs.mjx_envs import brax_env_names

    assert names.BRAX_ENVS == brax_env_names()


def test_gymnax_imports_without_seaborn_which_loads_when_gymnax_renders():
    """gymnax's __init__ imports seaborn (and with it pandas, scipy.stats) for two envs'
    renderers; envs.gymnax_envs.import_gymnax defers it to first use."""
    import subprocess
    import sys

    code = """
import sys
import jax
from protosac_jax.envs import make_env
make_env("pendulum").reset(jax.random.PRNGKey(0))
assert "gymnax" in sys.modules
print(sorted(m for m in ("seaborn", "pandas", "scipy.stats") if m in sys.modules))
from gymnax.environments.misc import pong
print(len(pong.sns.color_palette("Set1", 3)))   # the renderer's module works when used
import seaborn
print(type(seaborn).__name__, bool(seaborn.__version__))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split("\n")
    assert out[:3] == ["[]", "3", "module True"], out
