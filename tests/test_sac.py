import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from protosac_jax import replay, sac
from protosac_jax.config import PrototypeConfig, SACConfig
from protosac_jax.networks import GaussianActor
from protosac_jax.prototype import ProtoActor

CFG = SACConfig(hidden_sizes=(32, 32), batch_size=16, tau=0.1)


def _batch(n=16, terminated=0.0):
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    return replay.Transition(
        obs=jax.random.normal(k[0], (n, 3)), action=jax.random.uniform(k[1], (n, 1), minval=-1),
        reward=jax.random.normal(k[2], (n,)), next_obs=jax.random.normal(k[3], (n, 3)),
        terminated=jnp.full((n,), terminated), render_state=jnp.zeros((n, 1)))


ACTORS = {
    "baseline": GaussianActor(1, (32, 32)),
    "blend": ProtoActor(1, PrototypeConfig(num_prototypes=8, latent_dim=8), (32, 32)),
    "mixture": ProtoActor(1, PrototypeConfig(num_prototypes=8, latent_dim=8,
                                             distribution="mixture"), (32, 32)),
}


def _named_leaves(tree):
    return [(jax.tree_util.keystr(path), np.asarray(leaf))
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)]


@pytest.mark.parametrize("name", list(ACTORS))
def test_update_changes_everything_and_polyak_is_exact(name):
    actor = ACTORS[name]
    state = sac.init(jax.random.PRNGKey(1), actor, CFG, jnp.zeros(3), 1)
    constants = {}
    if name != "baseline":  # distinct prototype states (the zero placeholders are all alike)
        constants = {"prototype_states": jax.random.normal(jax.random.PRNGKey(3), (8, 3))}
        state = state.replace(actor_params={**state.actor_params, **constants})
    new, metrics = jax.jit(sac.update, static_argnums=(3, 4, 5))(
        state, _batch(), jax.random.PRNGKey(2), actor, CFG, 1)
    assert int(new.num_updates) == 1
    # the stored prototype states are constants of the step: untouched, and not optimised
    for key, value in constants.items():
        np.testing.assert_array_equal(np.asarray(new.actor_params[key]), np.asarray(value))
        assert key not in str(jax.tree_util.tree_structure(new.actor_opt_state))
    state = state.replace(actor_params=sac.trainable(state.actor_params))
    new = new.replace(actor_params=sac.trainable(new.actor_params))
    for key in ("losses/critic", "losses/actor", "charts/alpha", "charts/entropy"):
        assert np.isfinite(float(metrics[key]))
    # Every learned leaf takes a step: each actor and critic parameter, each optimizer-state
    # leaf (Adam's count and both moments, for actor, critic and temperature), and log_alpha.
    for part in ("actor_params", "critic_params", "actor_opt_state", "critic_opt_state",
                 "alpha_opt_state", "log_alpha"):
        old_leaves, new_leaves = (_named_leaves(getattr(s, part)) for s in (state, new))
        assert len(old_leaves) == len(new_leaves) > 0, part
        for (path, a), (_, b) in zip(old_leaves, new_leaves):
            assert a.shape == b.shape and a.dtype == b.dtype, (part, path)
            assert not np.array_equal(a, b), f"{part}{path} did not change in the update"
    # Adam's first step moves each parameter by at most ~lr (|m/sqrt(v)| <= 1 at step 1)
    for part, lr in (("actor_params", CFG.actor_lr), ("critic_params", CFG.critic_lr)):
        for (path, a), (_, b) in zip(_named_leaves(getattr(state, part)),
                                     _named_leaves(getattr(new, part))):
            assert np.abs(b - a).max() <= 1.001 * lr, (part, path)
    # target <- tau * online + (1 - tau) * target, for every leaf, with the new online params
    tau = CFG.tau
    targets = _named_leaves(new.target_critic_params)
    assert [p for p, _ in targets] == [p for p, _ in _named_leaves(new.critic_params)]
    for (path, tgt), (_, old_tgt), (_, online) in zip(
            targets, _named_leaves(state.target_critic_params),
            _named_leaves(new.critic_params)):
        expected = (tau * online.astype(np.float64) + (1.0 - tau) * old_tgt.astype(np.float64))
        np.testing.assert_allclose(tgt, expected, rtol=1e-6, atol=1e-9, err_msg=path)
        # and it is neither the old target nor a copy of the online critic
        assert not np.array_equal(tgt, old_tgt) and not np.array_equal(tgt, online), path


# One vector step of three envs, built by hand: env 0 hit the time limit (truncated: the env
# reset itself, `obs` is the new episode's first obs, `final_obs` the real last one), env 1
# reached a terminal state, env 2 simply went on.
TRUNCATED, TERMINATED, RUNNING = 0, 1, 2
STEP_TERMINATED = np.array([0.0, 1.0, 0.0], np.float32)  # what only true terminations give


@functools.lru_cache(maxsize=None)
def _recorded_step():
    """(state before, actions, the StepResult, state after `loops.record_step`, finished)."""
    import types

    from protosac_jax import loops
    from protosac_jax.config import TrainConfig
    from protosac_jax.envs.base import EnvSpec, StepResult

    # Pendulum-shaped spec and a bare state: all record_step reads (no env is built or run)
    spec = EnvSpec(name="pendulum", env_id="Pendulum-v1", backend="gymnax", obs_shape=(3,),
                   action_dim=1, action_low=(-2.0,), action_high=(2.0,), episode_length=200,
                   render_dim=1)
    cfg = TrainConfig(env="pendulum", baseline=True, num_envs=3, buffer_size=8, sac=CFG)
    loop = loops.Loop(env=types.SimpleNamespace(spec=spec), actor=None, cfg=cfg)
    example = jax.tree_util.tree_map(lambda x: x[0], _batch(1))
    ts = loops.TrainState(
        learner=None, buffer=replay.init(cfg.buffer_size, example), env_state=jnp.zeros(3),
        obs=jnp.array([[0.1, 0.2, 0.3], [0.4, -0.5, 0.6], [-0.7, 0.8, -0.9]]),
        noise=jnp.zeros((3, 1)), episode_return=jnp.array([-10.0, -20.0, -30.0]),
        provenance=None, rng=jax.random.PRNGKey(0), env_steps=jnp.zeros((), jnp.int32),
        random_until=jnp.zeros((), jnp.int32), updates_start=jnp.zeros((), jnp.int32),
        update_credit=jnp.zeros((), jnp.int32))
    result = StepResult(
        env_state=jnp.ones(3),
        obs=jnp.array([[9.0, 9.0, 9.0], [8.0, 8.0, 8.0], [0.3, -0.2, 0.5]]),  # after resets
        reward=jnp.array([-1.5, 2.0, 0.7]),
        terminated=jnp.array([False, True, False]),
        truncated=jnp.array([True, False, False]),
        final_obs=jnp.array([[0.9, -0.4, 1.2], [-0.6, 0.1, 0.5], [0.3, -0.2, 0.5]]))
    actions = jnp.array([[0.5], [-0.25], [0.75]])
    after, finished = loops.record_step(loop, ts, actions, result, jnp.zeros((3, 1)))
    return ts, actions, result, after, finished


def test_record_step_stores_truncation_as_bootstrappable_with_the_real_final_obs():
    before, actions, result, after, finished = _recorded_step()
    data = jax.tree_util.tree_map(lambda x: np.asarray(x[:3]), after.buffer.data)
    assert int(after.buffer.size) == 3
    np.testing.assert_array_equal(data.terminated, STEP_TERMINATED)  # truncated: 0, not done
    np.testing.assert_array_equal(data.next_obs, np.asarray(result.final_obs))  # not the reset
    assert not np.allclose(data.next_obs[TRUNCATED], np.asarray(result.obs[TRUNCATED]))
    np.testing.assert_array_equal(data.obs, np.asarray(before.obs))
    np.testing.assert_array_equal(data.action, np.asarray(actions))
    np.testing.assert_array_equal(data.reward, np.asarray(result.reward))
    np.testing.assert_array_equal(np.asarray(after.obs), np.asarray(result.obs))
    # both ended episodes are counted and reset; the running one keeps accumulating
    assert float(finished[1]) == 2 and float(finished[0]) == pytest.approx(-11.5 + -18.0)
    assert int(after.env_steps) == 3
    np.testing.assert_allclose(np.asarray(after.episode_return), [0.0, 0.0, -29.3], rtol=1e-6)


@pytest.mark.parametrize("name", ["baseline", "mixture"])
def test_terminated_transitions_do_not_bootstrap_truncated_do(name):
    """Critic targets of the recorded step, recomputed here from the networks themselves:
    y = r + gamma V(next_obs) for the truncated and the running transition, y = r exactly for
    the terminated one, V(s') = sum_s w_s [min_i Q'_i(s', a'_s) - alpha log pi(a'_s|s')]."""
    actor = ACTORS[name]
    critic = sac.make_critic(CFG)
    _, _, _, after, _ = _recorded_step()
    # each recorded transition as its own one-row batch: [3, 1, ...]
    rows = jax.tree_util.tree_map(lambda x: x[:3, None], after.buffer.data)
    state = sac.init(jax.random.PRNGKey(1), actor, CFG, jnp.zeros(3), 1)
    # a target critic unlike the online one and alpha != 1, so each term is visible
    target_params = jax.tree_util.tree_map(
        lambda x: x + 0.3 * jax.random.normal(jax.random.PRNGKey(7), x.shape),
        state.critic_params)
    state = state.replace(target_critic_params=target_params, log_alpha=jnp.log(0.4))
    key = jax.random.PRNGKey(3)

    def target_value(next_obs):  # V(next_obs [1, 3]) from the actor and the target critic
        a, log_p, w = actor.samples(state.actor_params, next_obs, key)
        s_obs = jnp.broadcast_to(next_obs[:, None], (1, a.shape[1], 3))
        q = jnp.min(critic.apply(target_params, s_obs, a), axis=0)
        return jnp.sum(w * (q - 0.4 * log_p), axis=-1)[0]

    @jax.jit
    def losses_and_parts(rows):
        loss = jax.vmap(lambda one: sac.critic_loss(state.critic_params, state, one, key,
                                                    actor, CFG)[0])(rows)
        q = jax.vmap(lambda one: critic.apply(state.critic_params, one.obs, one.action)[:, 0])(
            rows)  # [3, 2] online Q of each transition
        return loss, q, jax.vmap(target_value)(rows.next_obs)

    loss, q, value = (np.asarray(x, np.float64) for x in losses_and_parts(rows))
    reward = np.asarray(rows.reward[:, 0], np.float64)
    bootstrap = reward + CFG.gamma * value
    for row, y, wrong in ((TRUNCATED, bootstrap[TRUNCATED], reward[TRUNCATED]),
                          (RUNNING, bootstrap[RUNNING], reward[RUNNING]),
                          (TERMINATED, reward[TERMINATED], bootstrap[TERMINATED])):
        expected = 0.5 * np.sum((q[row] - y) ** 2)
        assert loss[row] == pytest.approx(expected, rel=1e-4, abs=1e-6), (row, loss[row], y)
        # the test can tell: the other target would give a clearly different loss
        assert abs(0.5 * np.sum((q[row] - wrong) ** 2) - expected) > 1e-2, row


def test_temperature_falls_when_entropy_exceeds_target():
    actor = ACTORS["baseline"]
    # A very high target entropy cannot be met -> alpha must grow; a very low one -> shrink.
    for target, direction in ((100.0, 1), (-100.0, -1)):
        cfg = dataclasses.replace(CFG, target_entropy=target)
        state = sac.init(jax.random.PRNGKey(1), actor, cfg, jnp.zeros(3), 1)
        new, _ = sac.update(state, _batch(), jax.random.PRNGKey(2), actor, cfg, 1)
        assert direction * (float(new.log_alpha) - float(state.log_alpha)) > 0


def test_update_many_runs_a_scan_of_updates():
    actor = ACTORS["blend"]
    state = sac.init(jax.random.PRNGKey(1), actor, CFG, jnp.zeros(3), 1)
    buf = replay.insert(replay.init(64, jax.tree_util.tree_map(lambda x: x[0], _batch())),
                        _batch(32))
    new, metrics = jax.jit(sac.update_many, static_argnums=(3, 4, 5, 6))(
        state, buf, jax.random.PRNGKey(0), 5, actor, CFG, 1)
    assert int(new.num_updates) == 5
    assert metrics["losses/critic"].shape == ()


@pytest.mark.parametrize("n_step", [1, 3])
def test_sample_once_draws_every_update_s_batch_in_one_call(n_step):
    """cfg.sample_once: all batches of a call drawn up front ([updates, batch, ...], each
    update its own rows, n-step sums included), then the updates run on them in order; with
    a fractional ratio (num_active) only that many run."""
    cfg = dataclasses.replace(CFG, sample_once=True, n_step=n_step)
    actor = ACTORS["blend"]
    example = jax.tree_util.tree_map(lambda x: x[0], _batch())
    if n_step > 1:
        example = example.replace(episode_end=jnp.zeros(()))
    rows = _batch(64).replace(episode_end=jnp.zeros(64)) if n_step > 1 else _batch(64)
    buf = replay.insert(replay.init(64, example), rows)
    batches = sac.sample_batches(buf, jax.random.PRNGKey(5), cfg, 1, 4)
    assert batches.obs.shape == (4, 16, 3) and batches.reward.shape == (4, 16)
    obs = np.asarray(batches.obs)
    assert len({tuple(o.ravel()) for o in obs}) == 4  # four different batches
    written = {tuple(r) for r in np.asarray(rows.obs)}
    assert all(tuple(r) in written for r in obs.reshape(-1, 3))
    if n_step > 1:  # 3-step transitions: no episode ends in the rows, so bootstrap gamma^3
        assert float(batches.discount[0, 0]) == pytest.approx(CFG.gamma ** 3)

    state = sac.init(jax.random.PRNGKey(1), actor, cfg, jnp.zeros(3), 1)
    # distinct prototype states, as after a projection: with the initial all-zero states the
    # weights are uniform and the encoder's gradient is rounding noise, whose sign Adam turns
    # into steps of +-lr (two programs of the same math then differ by whatever XLA's
    # fusion decisions round differently; the suite compiles without its fusion emitters)
    states = state.actor_params["prototype_states"]
    state = state.replace(actor_params={
        **state.actor_params,
        "prototype_states": jax.random.normal(jax.random.PRNGKey(7), states.shape)})
    many = jax.jit(sac.update_many, static_argnums=(3, 4, 5, 6))
    new, metrics = many(state, buf, jax.random.PRNGKey(0), 4, actor, cfg, 1)
    # the same as drawing the batches with the key's first split and stepping through them
    # (both compiled: eager Adam steps differ in the last bits, which Adam's scaling amplifies)
    @jax.jit
    def by_hand(state):  # a scan over the drawn batches, not 4 unrolled updates (compile time)
        key, sample_key = jax.random.split(jax.random.PRNGKey(0))
        drawn = sac.sample_batches(buf, sample_key, cfg, 1, 4)

        def one(state, batch_and_key):
            return sac.update(state, *batch_and_key, actor, cfg, 1)

        new, metrics = jax.lax.scan(one, state, (drawn, jax.random.split(key, 4)))
        return new, jax.tree_util.tree_map(jnp.mean, metrics)

    hand, hand_metrics = by_hand(state)
    for a, b in zip(jax.tree_util.tree_leaves((new, metrics)),
                    jax.tree_util.tree_leaves((hand, hand_metrics))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert np.isfinite(float(metrics["losses/critic"]))
    partial, _ = many(state, buf, jax.random.PRNGKey(0), 4, actor, cfg, 1, jnp.int32(2))
    assert int(partial.num_updates) == 2


def test_critic_regression_fits_fixed_targets():
    """Repeated updates on one terminal batch drive the critic loss down (Q -> r)."""
    actor = ACTORS["baseline"]
    cfg = dataclasses.replace(CFG, critic_lr=3e-3)
    state = sac.init(jax.random.PRNGKey(1), actor, cfg, jnp.zeros(3), 1)
    batch = _batch(terminated=1.0)
    step = jax.jit(sac.update, static_argnums=(3, 4, 5))
    first = None
    for i in range(300):
        state, m = step(state, batch, jax.random.PRNGKey(i), actor, cfg, 1)
        first = first if first is not None else float(m["losses/critic"])
    assert float(m["losses/critic"]) < 0.1 * first


def test_n_step_discount_replaces_gamma_in_the_critic_target():
    """A batch's own bootstrap discount (gamma^m of an n-step sample) is the one used: with
    discount 0 the target is the reward alone, whatever gamma and the next states are."""
    actor = ACTORS["baseline"]
    state = sac.init(jax.random.PRNGKey(1), actor, CFG, jnp.zeros(3), 1)
    batch = _batch().replace(discount=jnp.zeros(16))
    loss, _ = sac.critic_loss(state.critic_params, state, batch, jax.random.PRNGKey(2), actor,
                              CFG)
    q = sac.make_critic(CFG).apply(state.critic_params, batch.obs, batch.action)
    expected = 0.5 * jnp.sum(jnp.mean((q - batch.reward[None]) ** 2, axis=-1))
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-6)
    one_step, _ = sac.critic_loss(state.critic_params, state, _batch(), jax.random.PRNGKey(2),
                                  actor, CFG)
    assert abs(float(one_step) - float(loss)) > 1e-3


@pytest.mark.parametrize("layer_norm", ["none", "critic", "all"])
def test_layer_norm_goes_where_asked(layer_norm):
    from protosac_jax import loops
    from protosac_jax.config import TrainConfig

    cfg = dataclasses.replace(CFG, layer_norm=layer_norm)
    for baseline in (True, False):
        actor = loops.make_actor(TrainConfig(baseline=baseline, sac=cfg), 1)
        state = sac.init(jax.random.PRNGKey(1), actor, cfg, jnp.zeros(3), 1)
        in_critic = "LayerNorm" in str(jax.tree_util.tree_structure(state.critic_params))
        in_actor = "LayerNorm" in str(jax.tree_util.tree_structure(state.actor_params))
        assert (in_critic, in_actor) == (layer_norm != "none", layer_norm == "all")
        # hidden features are normalised: the critic's output is finite and stays so for
        # inputs 1e4 times larger (the first hidden layer's LayerNorm absorbs the scale)
        if layer_norm != "none":
            big = sac.make_critic(cfg).apply(state.critic_params, jnp.full((2, 3), 1e4),
                                             jnp.zeros((2, 1)))
            small = sac.make_critic(cfg).apply(state.critic_params, jnp.full((2, 3), 1.0),
                                               jnp.zeros((2, 1)))
            assert np.all(np.isfinite(np.asarray(big)))
            assert float(jnp.max(jnp.abs(big))) < 100 * float(jnp.max(jnp.abs(small))) + 10


def test_weight_decay_shrinks_dense_kernels_only():
    """AdamW: each kernel takes Adam's step minus lr * wd * kernel; biases, LayerNorm scales,
    prototype heads and the learned temperature / penalty are not decayed."""
    actor = ProtoActor(1, PrototypeConfig(num_prototypes=8, latent_dim=8, local_gain=0.25),
                       (32, 32), layer_norm=True)
    mask = sac.decayed(sac.trainable(actor.init(jax.random.PRNGKey(0), jnp.zeros((1, 3)))))
    flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(mask)}
    assert flat and all(v == ("kernel" in k) for k, v in flat.items())
    assert any("proto_means" in k for k in flat) and any("log_temperature" in k for k in flat)

    plain = dataclasses.replace(CFG, layer_norm="critic")
    decay = dataclasses.replace(plain, weight_decay=0.5)
    state = sac.init(jax.random.PRNGKey(1), actor, plain, jnp.zeros(3), 1)
    step = jax.jit(sac.update, static_argnums=(3, 4, 5))
    a, _ = step(state, _batch(), jax.random.PRNGKey(2), actor, plain, 1)
    b, _ = step(sac.init(jax.random.PRNGKey(1), actor, decay, jnp.zeros(3), 1), _batch(),
                jax.random.PRNGKey(2), actor, decay, 1)
    old = dict(_named_leaves(state.critic_params))
    for (name, x), (_, y) in zip(_named_leaves(a.critic_params), _named_leaves(b.critic_params)):
        shrink = plain.critic_lr * 0.5 * old[name] if "kernel" in name else 0.0
        np.testing.assert_allclose(y, x - shrink, atol=1e-7, err_msg=name)
    # the actor's temperature is not decayed (its first Adam step is the same either way)
    np.testing.assert_allclose(
        np.asarray(b.actor_params["params"]["log_temperature"]),
        np.asarray(a.actor_params["params"]["log_temperature"]), atol=1e-7)


C51 = dataclasses.replace(CFG, num_atoms=11, v_min=-5.0, v_max=5.0)  # support -5, -4, ..., 5


def test_categorical_projection_splits_mass_between_neighbours_and_keeps_the_mean():
    atoms = jnp.asarray([[-4.0, 0.5, 2.25, 9.0]])  # on a point, halfway, a quarter, clipped
    probs = jnp.asarray([[0.1, 0.2, 0.3, 0.4]])
    out = np.asarray(sac.project_categorical(atoms, probs, C51))[0]
    expected = np.zeros(11)
    expected[1] = 0.1
    expected[5] = expected[6] = 0.1
    expected[7], expected[8] = 0.75 * 0.3, 0.25 * 0.3
    expected[10] = 0.4
    np.testing.assert_allclose(out, expected, atol=1e-6)
    inside = jnp.asarray([[-4.7, -0.3, 3.9, 5.0]])
    p = np.asarray(sac.project_categorical(inside, probs, C51))[0]
    np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(p @ np.arange(-5, 6), float(jnp.sum(inside * probs)), rtol=1e-5)


def test_distributional_critic_learns_terminal_rewards():
    """On terminal transitions the target is the reward itself: a few hundred Adam steps of
    the cross-entropy bring each critic's mean Q to it."""
    import optax

    actor = ACTORS["baseline"]
    state = sac.init(jax.random.PRNGKey(1), actor, C51, jnp.zeros(3), 1)
    batch = _batch(terminated=1.0)
    batch = batch.replace(reward=jnp.clip(batch.reward * 2, -4.5, 4.5))
    opt = optax.adam(3e-3)

    @jax.jit
    def step(params, opt_state, _):
        grads, (metrics, _) = jax.grad(sac.critic_loss, has_aux=True)(
            params, state, batch, jax.random.PRNGKey(2), actor, C51)
        updates, opt_state = opt.update(grads, opt_state)
        return (optax.apply_updates(params, updates), opt_state), metrics["losses/critic"]

    (params, _), losses = jax.lax.scan(lambda c, x: step(*c, x),
                                       (state.critic_params, opt.init(state.critic_params)),
                                       None, length=600)
    assert float(losses[-1]) < 0.5 * float(losses[0])
    q = sac.q_values(sac.make_critic(C51).apply(params, batch.obs, batch.action), C51)
    assert q.shape == (2, 16)
    np.testing.assert_allclose(np.asarray(q), np.broadcast_to(np.asarray(batch.reward), (2, 16)),
                               atol=0.25)


@pytest.mark.parametrize("name", list(ACTORS))
def test_distributional_update_runs_for_every_actor(name):
    actor = ACTORS[name]
    cfg = dataclasses.replace(C51, n_step=3)
    state = sac.init(jax.random.PRNGKey(1), actor, cfg, jnp.zeros(3), 1)
    batch = _batch().replace(discount=jnp.full((16,), 0.97))
    new, metrics = jax.jit(sac.update, static_argnums=(3, 4, 5))(
        state, batch, jax.random.PRNGKey(2), actor, cfg, 1)
    assert all(np.isfinite(float(v)) for v in metrics.values())
    out = sac.make_critic(cfg).apply(new.critic_params, batch.obs, batch.action)
    assert out.shape == (2, 16, 11)


@pytest.mark.parametrize("name", ["baseline", "blend"])
def test_zero_init_heads_start_every_action_mean_at_zero_and_they_learn(name):
    """cfg.zero_init_heads (FastSAC): the deterministic action is tanh(0) = 0 in every state at
    the start (the default is not), and one update moves the heads off zero."""
    actor = dataclasses.replace(ACTORS[name], zero_init_heads=True)
    obs = jax.random.normal(jax.random.PRNGKey(3), (16, 3))
    params = actor.init(jax.random.PRNGKey(1), obs[:1])
    default = ACTORS[name].init(jax.random.PRNGKey(1), obs[:1])
    assert np.all(np.asarray(actor.deterministic(params, obs)) == 0.0)
    assert np.abs(np.asarray(ACTORS[name].deterministic(default, obs))).max() > 1e-3
    if name == "baseline":  # log-std 0 too: std 1 everywhere
        _, std = actor._mean_std(params, obs)
        assert np.all(np.asarray(std) == 1.0)
    else:  # the prototypes' heads only: the encoder and the rest keep their init
        for (path, a), (_, b) in zip(_named_leaves(params), _named_leaves(default)):
            assert np.array_equal(a, b) != ("proto_means" in path), path

    cfg = dataclasses.replace(CFG, zero_init_heads=True)
    state = sac.init(jax.random.PRNGKey(1), actor, cfg, jnp.zeros(3), 1)
    buf = replay.insert(replay.init(64, jax.tree_util.tree_map(lambda x: x[0], _batch())),
                        _batch(32))
    new, _ = jax.jit(sac.update_many, static_argnums=(3, 4, 5, 6))(
        state, buf, jax.random.PRNGKey(0), 2, actor, cfg, 1)
    assert np.abs(np.asarray(actor.deterministic(new.actor_params, obs))).max() > 0.0


def test_batch_renorm_uses_the_batch_then_corrects_it_towards_the_running_statistics():
    """CrossQ's BatchRenorm: batch norm during its warm-up; after it, the batch's statistics
    corrected by r = clip(sigma_B / sigma, 1/3, 3) and d = clip((mu_B - mu) / sigma, -5, 5)
    (equal to the running normalisation where neither is clipped); running statistics move by
    1 - momentum per training call; evaluation normalises with them and changes nothing."""
    from protosac_jax.networks import BatchRenorm

    x = (jax.random.normal(jax.random.PRNGKey(0), (64, 3)) * jnp.array([1.0, 2.0, 3.0])
         + jnp.array([5.0, -1.0, 0.0]))
    xs = np.asarray(x, np.float64)
    mean, var = xs.mean(0), xs.var(0)
    variables = BatchRenorm().init(jax.random.PRNGKey(1), x)
    assert set(variables) == {"params", "batch_stats"}
    layer = BatchRenorm(train=True, warmup=2)
    y, updated = layer.apply(variables, x, mutable=["batch_stats"])
    np.testing.assert_allclose(np.asarray(y), (xs - mean) / np.sqrt(var + 1e-3), atol=1e-4)
    stats = updated["batch_stats"]
    np.testing.assert_allclose(np.asarray(stats["mean"]), 0.01 * mean, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(stats["var"]), 0.99 + 0.01 * var, rtol=1e-4)
    assert int(stats["steps"]) == 1

    running = {"mean": jnp.array([4.5, -1.0, 0.0]), "var": jnp.array([1.0, 4.0, 100.0]),
               "steps": jnp.array(2, jnp.int32)}  # warmed up; feature 2's r is clipped to 1/3
    y, _ = layer.apply({**variables, "batch_stats": running}, x, mutable=["batch_stats"])
    sigma_b, sigma = np.sqrt(var + 1e-3), np.sqrt(np.asarray(running["var"]) + 1e-3)
    r = np.clip(sigma_b / sigma, 1 / 3, 3)
    d = np.clip((mean - np.asarray(running["mean"])) / sigma, -5, 5)
    assert r[2] == 1 / 3
    np.testing.assert_allclose(np.asarray(y), (xs - mean) / sigma_b * r + d, atol=1e-4)
    unclipped = (xs[:, :2] - np.asarray(running["mean"][:2])) / sigma[:2]
    np.testing.assert_allclose(np.asarray(y[:, :2]), unclipped, atol=1e-4)

    y = BatchRenorm(train=False).apply({**variables, "batch_stats": running}, x)
    np.testing.assert_allclose(np.asarray(y), (xs - np.asarray(running["mean"])) / sigma,
                               atol=1e-4)


@pytest.mark.parametrize("name", list(ACTORS))
def test_crossq_critic_has_no_target_network_and_learns_its_statistics_from_both_pairs(name):
    """cfg.crossq: the critic's target comes from the online critic (the target network's
    values change nothing), its running statistics move once per update over the current and
    next pairs together, and they are not optimised."""
    actor, cfg = ACTORS[name], dataclasses.replace(CFG, crossq=True)
    state = sac.init(jax.random.PRNGKey(1), actor, cfg, jnp.zeros(3), 1)
    assert "batch_stats" in state.critic_params
    assert "batch_stats" not in str(jax.tree_util.tree_structure(state.critic_opt_state))
    batch, key = _batch(), jax.random.PRNGKey(2)
    loss = lambda s: float(sac.critic_loss(s.critic_params, s, batch, key, actor, cfg)[0])  # noqa: E731
    garbage = jax.tree_util.tree_map(lambda x: x + 1, state.target_critic_params)
    assert loss(state) == loss(state.replace(target_critic_params=garbage))

    new, metrics = jax.jit(sac.update, static_argnums=(3, 4, 5))(state, batch, key, actor, cfg, 1)
    for value in metrics.values():
        assert np.isfinite(float(value))
    stats = new.critic_params["batch_stats"]["VmapMLP_0"]
    for layer in stats.values():  # [2]: one count per critic
        np.testing.assert_array_equal(np.asarray(layer["steps"]), [1, 1])
    samples = 8 if name == "mixture" else 1  # next pairs per state: one per prototype
    joint_obs = np.concatenate([np.asarray(batch.obs),
                                np.repeat(np.asarray(batch.next_obs), samples, axis=0)])
    for critic in range(2):  # the input layer's first 3 features are the observation
        np.testing.assert_allclose(np.asarray(stats["BatchRenorm_0"]["mean"][critic, :3]),
                                   0.01 * joint_obs.mean(0), rtol=1e-4, atol=1e-7)
    for (path, target), (_, online) in zip(_named_leaves(new.target_critic_params),
                                           _named_leaves(new.critic_params), strict=True):
        np.testing.assert_array_equal(target, online, err_msg=path)  # no separate target
    # and it learns: the critic regresses towards its own bootstrapped targets
    first = loss(new)
    for i in range(30):
        new, _ = jax.jit(sac.update, static_argnums=(3, 4, 5))(new, batch, key, actor, cfg, 1)
    assert loss(new) < first
