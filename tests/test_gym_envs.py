"""Gymnasium host backend: action rescaling, final observations, Discrete refusal, pixels,
frame reservoir, and the host loop writing what the device loop writes."""

import dataclasses

import gymnasium
import jax
import numpy as np
import pytest

from protosac_jax import envs, loops, replay
from protosac_jax.config import PrototypeConfig, SACConfig, TrainConfig
from protosac_jax.envs import EnvError
from protosac_jax.envs.gym_envs import (GymEnv, GymVectorEnv, rescale_actions,
                                        wrap_frame_stack)


class CounterEnv(gymnasium.Env):
    """obs = [t, t]; remembers the actions it received; terminates at t == terminate_at."""

    received: list = []

    def __init__(self, terminate_at=None):
        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (2,), np.float64)
        self.action_space = gymnasium.spaces.Box(np.array([0.0, -2.0], np.float32),
                                                 np.array([1.0, 6.0], np.float32),
                                                 dtype=np.float32)
        self.terminate_at = terminate_at
        self.t = 0

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0, 0.0]), {}

    def step(self, action):
        CounterEnv.received.append(np.asarray(action, np.float64).copy())
        self.t += 1
        terminated = self.terminate_at is not None and self.t >= self.terminate_at
        return np.array([self.t, self.t], np.float64), float(self.t), terminated, False, {}


gymnasium.register("ProtoCounter-v0", entry_point=CounterEnv, max_episode_steps=3)
gymnasium.register("ProtoCounterTerminal-v0", entry_point=CounterEnv, max_episode_steps=50,
                   kwargs={"terminate_at": 2})


def test_rescale_actions_to_a_non_symmetric_box():
    low, high = np.array([0.0, -2.0]), np.array([1.0, 6.0])
    np.testing.assert_allclose(rescale_actions([[-1, -1], [1, 1], [0, 0], [3, -3]], low, high),
                               [[0, -2], [1, 6], [0.5, 2], [1, -2]])


def test_the_env_receives_rescaled_actions_as_float32_observations_come_back():
    vec = GymVectorEnv(GymEnv("ProtoCounter-v0"), num_envs=2, seed=0)
    assert vec.reset().dtype == np.float32
    CounterEnv.received.clear()
    vec.step(np.array([[-1.0, 1.0], [0.0, 0.5]]))
    np.testing.assert_allclose(CounterEnv.received, [[0.0, 6.0], [0.5, 4.0]])


def test_final_observation_is_the_true_last_obs_not_the_reset_obs():
    vec = GymVectorEnv(GymEnv("ProtoCounter-v0"), num_envs=1, seed=0)
    vec.reset()
    for t in (1, 2):
        obs, _, terminated, truncated, final_obs = vec.step(np.zeros((1, 2)))
        assert obs[0, 0] == t and final_obs[0, 0] == t and not truncated[0]
    obs, reward, terminated, truncated, final_obs = vec.step(np.zeros((1, 2)))
    assert truncated[0] and not terminated[0]  # the time limit is a truncation
    assert final_obs[0, 0] == 3 and obs[0, 0] == 0  # the env was reset in the same step


def _host_loop(env_id, **overrides):
    cfg = TrainConfig(
        env=env_id, num_envs=2, total_steps=12, learning_starts=4, buffer_size=64,
        eval_every=12, eval_episodes=1, sac=SACConfig(hidden_sizes=(8,), batch_size=4),
        proto=PrototypeConfig(num_prototypes=3, latent_dim=4, projection_every=4), **overrides)
    env = envs.make_env_for(cfg)
    return loops.Loop(env, loops.make_actor(cfg, env.spec.action_dim), cfg)


def test_host_loop_stores_final_obs_terminal_flags_and_updates():
    loop = _host_loop("ProtoCounterTerminal-v0")
    runner = loops.HostRunner(loop)
    ts = loops.init_state_jit(loop, jax.random.PRNGKey(0))
    ts, metrics = runner(loop, ts, 6)  # 6 vector steps of 2 envs = 12 transitions
    runner.close()
    data = jax.device_get(ts.buffer.data)
    assert int(ts.buffer.size) == 12 and int(ts.env_steps) == 12
    obs, next_obs, term = data.obs[:12, 0], data.next_obs[:12, 0], data.terminated[:12]
    # episodes are 0 -> 1 -> 2 (terminal); each env's rows alternate in the buffer
    np.testing.assert_array_equal(obs, [0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1])
    np.testing.assert_array_equal(next_obs, [1, 1, 2, 2, 1, 1, 2, 2, 1, 1, 2, 2])
    np.testing.assert_array_equal(term, [0, 0, 1, 1] * 3)
    np.testing.assert_allclose(data.reward[:12], [1, 1, 2, 2] * 3)
    assert metrics["charts/episodes"] == 6 and metrics["charts/episodic_return"] == 3.0
    assert int(ts.learner.num_updates) == 8  # updates once env_steps > learning_starts (4)
    assert np.isfinite(float(metrics["losses/critic"]))


def test_discrete_and_unknown_gymnasium_envs_are_refused_clearly():
    with pytest.raises(EnvError, match="Discrete action space.*continuous"):
        envs.make_env("CartPole-v1")
    with pytest.raises(EnvError, match="unknown Gymnasium id"):
        envs.make_env("NoSuchEnv-v9")


def test_frame_stack_next_obs_is_obs_shifted_by_one_frame():
    env = wrap_frame_stack(gymnasium.make("CarRacing-v3"), 3)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (96, 96, 9) and obs.dtype == np.uint8
    for _ in range(3):
        nxt, *_ = env.step(np.array([0.0, 1.0, 0.0], np.float32))
        rebuilt = replay.full_next_obs(obs[None], nxt[None, ..., -3:])[0]
        np.testing.assert_array_equal(np.asarray(rebuilt), nxt)
        obs = nxt
    env.close()


def test_pixel_spec_cnn_and_frame_once_buffer():
    env = envs.make_env("CarRacing-v3", frame_stack=3, action_repeat=2)
    spec = env.spec
    assert spec.obs_shape == (96, 96, 9) and spec.obs_dtype == "uint8"
    assert spec.frame_channels == 3 and spec.render_kind == "pixels"
    assert spec.action_low == (-1.0, 0.0, 0.0) and spec.episode_length == 500
    loop = _host_loop("CarRacing-v3", frame_stack=3, action_repeat=2)
    ts = jax.eval_shape(lambda: loops.init_state(loop, jax.random.PRNGKey(0)))
    assert ts.buffer.data.obs.dtype == np.uint8
    # the newest frame only; 12 rows: --buffer-size 64 capped at the run's 12 env steps
    assert ts.buffer.data.next_obs.shape == (12, 96, 96, 3)
    # a first patch layer over the 9 stacked channels in each of the two critics and the actor
    critic_shapes = [x.shape for x in jax.tree_util.tree_leaves(ts.learner.critic_params)]
    actor_shapes = [x.shape for x in jax.tree_util.tree_leaves(ts.learner.actor_params)]
    assert critic_shapes.count((144, 32)) == 2 and (144, 32) in actor_shapes  # 4x4x9 patches


def test_reservoir_env_spec_and_state():
    loop = _host_loop("LunarLanderContinuous-v3", frame_reservoir=8, frame_every=1)
    assert loop.spec.render_kind == "frames" and loop.spec.uses_reservoir
    runner = loops.HostRunner(loop)
    ts = loops.init_state_jit(loop, jax.random.PRNGKey(0))
    ts, _ = runner(loop, ts, 6)
    runner.close()
    assert int(ts.reservoir.size) == 6
    frames = np.asarray(ts.reservoir.data["frame"][:6])
    assert frames.shape == (6, 96, 144, 3) and frames.std() > 10  # real renders, not blank
    # each capture pairs the frame with env 0's obs of that step (= its buffer row's obs)
    np.testing.assert_array_equal(np.asarray(ts.reservoir.data["obs"][:6]),
                                  np.asarray(ts.buffer.data.obs[0:12:2]))
    prov = jax.device_get(ts.provenance)
    assert (prov.buffer_index >= 0).all() and (prov.buffer_index < 6).all()  # projected
    for i, row in enumerate(prov.buffer_index):
        np.testing.assert_array_equal(prov.render_state[i], frames[row])


def test_recent_share_draws_from_the_newest_reservoir_frames():
    """--recent-share on a frame-reservoir env: the reservoir is a ring of the newest captures,
    so candidates (and so prototype states) come from its newest --recent-window rows."""
    loop = _host_loop("LunarLanderContinuous-v3", frame_reservoir=8, frame_every=1)
    runner = loops.HostRunner(loop)
    ts = loops.init_state_jit(loop, jax.random.PRNGKey(0))
    ts, _ = runner(loop, ts, 6)  # 6 captures, rows 0..5
    runner.close()
    recent = dataclasses.replace(loop.cfg, proto=dataclasses.replace(
        loop.cfg.proto, recent_share=1.0, recent_window=0.5))
    recent_loop = loops.Loop(loop.env, loops.make_actor(recent, loop.spec.action_dim), recent)

    def chosen_rows(some_loop):  # reservoir rows of the prototype states over 3 selections
        return {int(row) for seed in range(3) for row in loops.project(
            some_loop, ts.replace(rng=jax.random.PRNGKey(seed))).provenance.buffer_index}

    # the newest half of 6 captures; 3 prototypes, distinct rows
    assert chosen_rows(recent_loop) == {3, 4, 5}
    assert chosen_rows(loop) - {3, 4, 5}  # without it, older captures are chosen too


def test_mujoco_render_state_is_qpos_qvel():
    vec = GymVectorEnv(GymEnv("Hopper-v5"), num_envs=2, seed=0)
    vec.reset()
    states = vec.render_states()
    assert states.shape == (2, 12) and vec.spec.render_kind == "mujoco"
    np.testing.assert_allclose(states[0, :6], vec.vec.envs[0].unwrapped.data.qpos, atol=1e-6)
    assert dataclasses.asdict(vec.spec)["render_dim"] == 12
    vec.close()
