"""MJX backend (brax.envs): auto-reset, truncation vs termination, obs normaliser, sharding,
and a short humanoid smoke run."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import protosac_jax
from protosac_jax import config as config_lib
from protosac_jax.config import ConfigError
from protosac_jax.envs import EnvError, make_env
from protosac_jax.envs.mjx_envs import MjxEnv
from protosac_jax.sac import ObsNormalizer
from tiny import xla_flags

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pendulum_steps():
    env = MjxEnv("inverted_pendulum", episode_length=5)
    return env, jax.jit(env.reset), jax.jit(env.step)


def test_truncation_at_episode_length_then_auto_reset(pendulum_steps):
    env, reset, step = pendulum_steps
    state, first_obs = reset(jax.random.PRNGKey(0))
    for t in range(5):
        result = step(jax.random.PRNGKey(t), state, jnp.zeros(1))
        state = result.env_state
        assert not bool(result.terminated)
        assert bool(result.truncated) == (t == 4)
    # back to the first state of this env's stream; final_obs is the real last obs
    np.testing.assert_allclose(np.asarray(result.obs), np.asarray(first_obs), atol=1e-6)
    assert not np.allclose(np.asarray(result.final_obs), np.asarray(first_obs))
    assert int(state.time) == 0


def test_evaluation_starts_are_distinct_first_states_of_the_training_envs(pendulum_steps):
    """The evaluation draws its episodes' starts from the training envs' first states (no
    MJX reset in the chunk's program), distinct ones; with fewer training envs than
    episodes it resets as before."""
    from protosac_jax import loops

    env, _, step = pendulum_steps
    cfg = dataclasses.replace(config_lib.preset("inverted_pendulum"), num_envs=6)
    loop = loops.Loop(env=env, actor=None, cfg=cfg)
    states, _ = jax.vmap(env.reset)(jax.random.split(jax.random.PRNGKey(0), 6))
    states = jax.vmap(step)(jax.random.split(jax.random.PRNGKey(1), 6), states,
                            jnp.ones((6, 1))).env_state  # current != first state
    starts, obs = jax.jit(lambda k: loops.episode_starts(loop, k, 4, states))(
        jax.random.PRNGKey(2))
    first = np.asarray(states.first_state.obs)
    rows = [int(np.flatnonzero(np.all(first == o, axis=1))[0]) for o in np.asarray(obs)]
    assert len(set(rows)) == 4
    np.testing.assert_array_equal(np.asarray(starts.brax_state.obs), np.asarray(obs))
    np.testing.assert_array_equal(np.asarray(starts.time), np.zeros(4))
    assert not np.any(np.all(np.asarray(states.brax_state.obs)[:, None] == obs[None], -1))
    other, _ = loops.episode_starts(loop, jax.random.PRNGKey(3), 4, states)
    assert not np.array_equal(np.asarray(other.brax_state.obs), np.asarray(obs))
    few = loops.Loop(env=env, actor=None, cfg=dataclasses.replace(cfg, num_envs=2))
    _, reset_obs = loops.episode_starts(few, jax.random.PRNGKey(2), 4, states)
    assert reset_obs.shape == (4,) + env.spec.obs_shape


def test_termination_is_not_truncation():
    env = MjxEnv("inverted_pendulum", episode_length=1000)
    state, _ = jax.jit(env.reset)(jax.random.PRNGKey(0))
    step = jax.jit(env.step)
    for t in range(200):  # full push: the pole falls past the limit and the episode ends
        result = step(jax.random.PRNGKey(t), state, jnp.ones(1))
        state = result.env_state
        if bool(result.terminated):
            break
    assert bool(result.terminated) and not bool(result.truncated)
    assert int(state.time) == 0


def test_spec_and_render_state():
    env = make_env("hopper")
    spec = env.spec
    assert spec.backend == "mjx" and spec.obs_shape == (11,) and spec.action_dim == 3
    state, obs = jax.jit(env.reset)(jax.random.PRNGKey(0))
    render = env.render_state(state)
    assert render.shape == (spec.render_dim,) == (12,)  # qpos 6 + qvel 6


def test_unknown_brax_name_lists_valid_ones():
    with pytest.raises(EnvError, match="humanoid.*walker2d|walker2d"):
        make_env("humanoidz")


def test_obs_normaliser_matches_numpy_over_batches():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=(n, 4)).astype(np.float32) for n in (5, 17, 1, 64)]
    norm = ObsNormalizer.create((4,))
    for b in batches:
        norm = norm.update(jnp.asarray(b))
    everything = np.concatenate(batches)
    np.testing.assert_allclose(np.asarray(norm.mean), everything.mean(0), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(norm.var), everything.var(0), rtol=1e-4)
    assert float(norm.count) == len(everything)
    z = np.asarray(norm.normalize(jnp.asarray(everything)))
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(z.std(0), 1.0, atol=1e-3)


def test_num_envs_must_divide_device_count():
    from protosac_jax import parallel

    cfg = dataclasses.replace(config_lib.preset("pendulum"), num_envs=3)
    with pytest.raises(ConfigError, match="divisible by the 2 devices"):
        parallel.check_divisible(cfg, num_devices=2)
    parallel.check_divisible(dataclasses.replace(cfg, num_envs=4, buffer_size=1000), 2)


# The suite's tiny Pendulum run with 4 envs (tests/tiny.py), as in test_two_device_training_run
# and test_checkpoint's two-device run: compiled once for all of them.
SHARDED_UPDATE_SCRIPT = """
import sys; sys.path.insert(0, "tests")
import jax, numpy as np
from protosac_jax import loops, parallel, sac, trainer
from protosac_jax.envs import make_env
from tiny import tiny_cfg
assert jax.device_count() == 2
trainer.enable_compilation_cache()
cfg = tiny_cfg(num_envs=4, learning_starts=400)
loop = loops.Loop(make_env("pendulum"), loops.make_actor(cfg, 1), cfg)
ts = loops.init_state_jit(loop, jax.random.PRNGKey(0))
ts, _ = loops.run_chunk_jit(loop, ts, 100)  # warm-up: fill 400 rows
# as the loop does right before its first update: choose the prototype states (until then
# all prototypes are one placeholder, the encoder's true gradient is 0 and Adam would turn
# float noise into full steps)
ts = loops.project_jit(loop, ts)
mesh = parallel.make_mesh()
shardings = parallel.state_shardings(ts, mesh, cfg.num_envs)
sharded = jax.device_put(ts, shardings)
assert len(sharded.buffer.data.obs.sharding.device_set) == 2
assert len(sharded.obs.sharding.device_set) == 2
update = jax.jit(sac.update_many, static_argnums=(3, 4, 5, 6))
args = (jax.random.PRNGKey(1), 20, loop.actor, cfg.sac, 1)
one, _ = update(ts.learner, ts.buffer, *args)
two, _ = update(sharded.learner, sharded.buffer, *args)
worst = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
            for a, b in zip(jax.tree_util.tree_leaves(one), jax.tree_util.tree_leaves(two)))
print("max abs diff", worst)
assert worst < 1e-5, worst
"""


def test_two_device_sharded_update_equals_one_device_update():
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": xla_flags(2)}
    proc = subprocess.run([sys.executable, "-c", SHARDED_UPDATE_SCRIPT], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr + proc.stdout


SHARDED_RUN_SCRIPT = """
import sys; sys.path.insert(0, "tests")
import jax, numpy as np, protosac_jax
from tiny import tiny_cfg
cfg = tiny_cfg(num_envs=4, total_steps=600, learning_starts=400, eval_every=200)
r = protosac_jax.train(cfg, out=sys.argv[1], progress=False, quiet=True)
np.savez(sys.argv[2], devices=jax.device_count(),
         buffer=np.asarray(jax.device_get(r.state.buffer.data.obs)),
         final_eval=r.final_eval)
"""


def test_two_device_training_run(tmp_path):
    """A whole sharded run: the random warm-up data are bitwise those of 1 device; after
    updates start, float reassociation in the sharded reductions (1e-7) is amplified by the
    feedback loop (policy -> data -> gradients), so later data agree only roughly."""
    results = {}
    for devices in (1, 2):
        env = {**os.environ, "JAX_PLATFORMS": "cpu",
               "XLA_FLAGS": xla_flags(devices, fusion_emitters=True)}
        proc = subprocess.run([sys.executable, "-c", SHARDED_RUN_SCRIPT,
                               str(tmp_path / f"r{devices}"), str(tmp_path / f"p{devices}.npz")],
                              env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        results[devices] = np.load(tmp_path / f"p{devices}.npz")
    assert int(results[2]["devices"]) == 2 and int(results[1]["devices"]) == 1
    np.testing.assert_array_equal(results[1]["buffer"][:400], results[2]["buffer"][:400])
    assert np.isfinite(float(results[2]["final_eval"]))
    assert protosac_jax.load(tmp_path / "r2").act(np.zeros(3, np.float32)).shape == (1,)


def test_humanoid_smoke_run(tmp_path):
    cfg = dataclasses.replace(config_lib.preset("humanoid"), num_envs=8, total_steps=256,
                              learning_starts=128, eval_every=128, eval_episodes=2,
                              buffer_size=4096, log_tensorboard=False)
    result = protosac_jax.train(cfg, out=tmp_path / "h", progress=False, quiet=True)
    assert [h["env_steps"] for h in result.history] == [128, 256]
    assert result.history[-1]["losses/critic"] is not None
    assert np.isfinite(result.final_eval)
    agent = protosac_jax.load(tmp_path / "h")
    obs = np.zeros(agent.spec.obs_shape, np.float32)
    assert agent.act(obs).shape == (17,)
    assert float(agent.learner.obs_norm.count) == 256  # normaliser saved with the policy
