"""The ProtoSAC math: log-probs, weights, aux losses, projection."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from protosac_jax import prototype
from protosac_jax.config import PrototypeConfig

WEIGHTS = jnp.array([0.2, 0.5, 0.3])
MEANS = jnp.array([[-1.0], [0.4], [1.5]])
LOG_STDS = jnp.log(jnp.array([[0.3], [0.5], [0.8]]))


def _density_on_grid(log_prob_fn, n=200_001):
    """p(a) on a fine grid of a in (-1, 1) via u = atanh(a)."""
    a = jnp.linspace(-1 + 1e-6, 1 - 1e-6, n)
    u = jnp.arctanh(a)[:, None]
    return a, jnp.exp(log_prob_fn(u))


@pytest.mark.parametrize("kind", ["blend", "mixture"])
def test_squashed_log_prob_integrates_to_one(kind):
    fn = {"blend": prototype.squashed_blend_log_prob,
          "mixture": prototype.squashed_mixture_log_prob}[kind]
    a, p = _density_on_grid(lambda u: fn(u, WEIGHTS, MEANS, LOG_STDS))
    assert float(jnp.trapezoid(p, a)) == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize("kind", ["blend", "mixture"])
def test_squashed_log_prob_matches_monte_carlo_histogram(kind):
    key_c, key_e = jax.random.split(jax.random.PRNGKey(0))
    n = 400_000
    if kind == "blend":
        mean, std = prototype.blend_params(WEIGHTS, MEANS, LOG_STDS)
        u = mean + std * jax.random.normal(key_e, (n, 1))
        fn = prototype.squashed_blend_log_prob
    else:
        comp = jax.random.choice(key_c, 3, (n,), p=WEIGHTS)
        u = MEANS[comp] + jnp.exp(LOG_STDS[comp]) * jax.random.normal(key_e, (n, 1))
        fn = prototype.squashed_mixture_log_prob
    actions = np.asarray(jnp.tanh(u[:, 0]))
    hist, edges = np.histogram(actions, bins=40, range=(-0.98, 0.98))
    empirical = hist / n
    # exact probability of each bin: the analytic density integrated over the bin
    fine = np.linspace(edges[:-1], edges[1:], 201, axis=-1)  # [bins, 201]
    density = np.exp(np.asarray(fn(jnp.arctanh(jnp.asarray(fine.reshape(-1)))[:, None],
                                   WEIGHTS, MEANS, LOG_STDS))).reshape(fine.shape)
    analytic = np.trapezoid(density, fine, axis=-1)
    # ~400k samples: bins hold >= 1k samples, so MC noise is a few %
    np.testing.assert_allclose(empirical, analytic, rtol=0.05, atol=2e-4)


def test_blend_params_are_weighted_sums():
    mean, std = prototype.blend_params(WEIGHTS, MEANS, LOG_STDS)
    assert float(mean[0]) == pytest.approx(0.2 * -1.0 + 0.5 * 0.4 + 0.3 * 1.5)
    assert float(std[0]) == pytest.approx(0.2 * 0.3 + 0.5 * 0.5 + 0.3 * 0.8)


@pytest.mark.parametrize("kind", ["log", "rbf", "softmax"])
def test_weights_are_normalised_and_prefer_near_prototypes(kind):
    d = jnp.array([[0.0, 1.0, 4.0], [9.0, 0.5, 0.1]])
    w = prototype.proto_weights(d, kind, temperature=1.0)
    np.testing.assert_allclose(np.asarray(w.sum(-1)), 1.0, rtol=1e-6)
    assert np.all(np.asarray(w) >= 0)
    assert int(jnp.argmax(w[0])) == 0 and int(jnp.argmax(w[1])) == 2


def test_log_similarity_formula():
    d = jnp.array([0.0, 1.0, 3.0])
    s = prototype.similarities(d, "log", log_eps=1e-4)
    np.testing.assert_allclose(np.asarray(s), np.log((np.array([0, 1, 3.]) + 1)
                                                     / (np.array([0, 1, 3.]) + 1e-4)), rtol=1e-5)


def test_squared_distances_match_direct_computation():
    z = jax.random.normal(jax.random.PRNGKey(1), (7, 5))
    p = jax.random.normal(jax.random.PRNGKey(2), (4, 5))
    direct = jnp.sum((z[:, None] - p[None]) ** 2, -1)
    np.testing.assert_allclose(np.asarray(prototype.squared_distances(z, p)),
                               np.asarray(direct), rtol=1e-4, atol=1e-4)


def test_orthogonality_loss_hand_made():
    assert float(prototype.orthogonality_loss(jnp.eye(3) * 5.0)) == pytest.approx(0.0, abs=1e-6)
    # two identical unit rows: off-diagonal entries are 1 -> loss 2
    assert float(prototype.orthogonality_loss(jnp.array([[1.0, 0.0], [2.0, 0.0]]))) == \
        pytest.approx(2.0, abs=1e-5)


def test_entropy_terms_hand_made():
    crisp = jnp.array([[1.0, 0.0], [0.0, 1.0]])  # crisp per state, both prototypes used
    assert float(jnp.mean(prototype.entropy(crisp))) == pytest.approx(0.0, abs=1e-6)
    assert float(prototype.entropy(crisp.mean(0))) == pytest.approx(math.log(2), rel=1e-6)
    collapsed = jnp.array([[1.0, 0.0], [1.0, 0.0]])  # one prototype does everything
    assert float(prototype.entropy(collapsed.mean(0))) == pytest.approx(0.0, abs=1e-6)


# The original ProtoSAC actor: free latent prototypes, ProtoPNet log similarity, fixed tau.
FREE = dict(source="free", normalize_latent=False, target_weight_entropy=None,
            similarity="log", temperature=1.0, decide="auto", target_action_spread=None,
            constraint_share=1.0)


def _actor(**kw):
    """A small actor; free prototypes (the projection tests' subject) unless `kw` says."""
    cfg = PrototypeConfig(num_prototypes=4, latent_dim=3, **{**FREE, **kw})
    return prototype.ProtoActor(action_dim=2, cfg=cfg, hidden_sizes=(16,))


def _states_actor(**kw):
    """A small actor with the defaults: prototypes are encodings of stored states."""
    cfg = PrototypeConfig(num_prototypes=4, latent_dim=3, **kw)
    return prototype.ProtoActor(action_dim=2, cfg=cfg, hidden_sizes=(16,))


@pytest.mark.parametrize("make", [_actor, _states_actor])
def test_aux_loss_combines_terms_with_coefficients(make):
    actor = make(ortho_coef=0.5, weight_entropy_coef=0.25, usage_entropy_coef=2.0,
                 proximity_coef=0.3)
    obs = jax.random.normal(jax.random.PRNGKey(0), (10, 3))
    params = actor.init(jax.random.PRNGKey(1), obs)
    if actor.states_source:
        params = {**params, "prototype_states": obs[:4] * 2.0}
    loss, m = actor.aux_loss(params, obs)
    expected = (0.5 * m["proto/orthogonality"] + 0.25 * m["proto/weight_entropy"]
                - 2.0 * m["proto/usage_entropy"] + 0.3 * m["proto/proximity"])
    if actor.learns_temperature:  # dual term of the learned temperature
        expected += params["params"]["log_temperature"] * (
            m["proto/weight_entropy_held"] - actor.cfg.target_weight_entropy)
    if actor.cfg.target_action_spread is not None:  # lambda = exp(0) = 1 at init
        expected += m["proto/action_spread_held"]
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_tail_mean_is_the_mean_of_the_largest_share():
    values = jnp.array([0.0, 4.0, 1.0, 3.0, 2.0, 5.0, 0.5, 0.5])
    assert float(prototype.tail_mean(values, 0.25)) == pytest.approx(4.5)  # top 2 of 8
    assert float(prototype.tail_mean(values, 1.0)) == pytest.approx(float(values.mean()))
    assert float(prototype.tail_mean(values, 0.01)) == pytest.approx(5.0)  # at least one


def test_duals_hold_the_most_blended_share_not_the_batch_mean():
    """A batch where 2 of 8 decisions blend two prototypes 50/50 (H = ln 2, spread 0.085) and
    6 are crisp: the batch means (H 0.17, spread 0.021) are below the targets (0.3, 0.04), the
    most blended quarter's above. With share 0.25 the temperature falls and the spread
    penalty's coefficient rises; with share 1 (the batch mean) both relax."""
    crisp = jnp.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]] * 2)
    blended = jnp.array([[0.5, 0.5, 0, 0]] * 2)
    weights = jnp.concatenate([crisp, blended])
    means = jnp.array([[0.3, 0.3], [-0.3, -0.3], [0.0, 0.0], [0.5, 0.5]])
    out = prototype.ProtoOutputs(
        latents=jnp.ones((8, 3)), distances=jnp.zeros((8, 4)), weights=weights, means=means,
        log_stds=jnp.zeros((4, 2)), prototypes=jnp.eye(4, 3))
    for share, sign in ((0.25, 1.0), (1.0, -1.0)):
        actor = _states_actor(target_weight_entropy=0.3, target_action_spread=0.04,
                              constraint_share=share)
        params = actor.init(jax.random.PRNGKey(0), jnp.zeros((1, 3)))
        grads = jax.grad(lambda p: actor._aux(p, out)[0])(params)["params"]
        # descent: log tau moves by -gap (falls while the held entropy is above target);
        # log lambda by +gap (rises while the held spread is above target)
        assert sign * float(grads["log_temperature"]) > 0, share
        assert sign * float(grads["log_spread_coef"]) < 0, share
        metrics = actor._aux(params, out)[1]
        held = {0.25: (math.log(2.0), 0.0848), 1.0: (math.log(2.0) / 4, 0.0848 / 4)}[share]
        assert float(metrics["proto/weight_entropy_held"]) == pytest.approx(held[0], rel=1e-3)
        assert float(metrics["proto/action_spread_held"]) == pytest.approx(held[1], rel=1e-2)


def test_states_prototypes_are_the_encodings_of_their_states():
    """Source "states": p_k = f(x_k) at every call, unit-length latents, one encoder pass."""
    actor = _states_actor()
    obs = jax.random.normal(jax.random.PRNGKey(0), (7, 3))
    params = actor.init(jax.random.PRNGKey(1), obs)
    assert "prototypes" not in params["params"] and params["prototype_states"].shape == (4, 3)
    states = jax.random.normal(jax.random.PRNGKey(2), (4, 3))
    params = {**params, "prototype_states": states}
    out = actor.forward(params, obs)
    encoded = actor.encode(params, states)
    np.testing.assert_allclose(np.asarray(out.prototypes), np.asarray(encoded), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(out.latents), axis=-1), 1.0, rtol=1e-5)
    # a state that IS prototype 2 is decided by prototype 2
    assert int(np.argmax(np.asarray(actor.forward(params, states[2:3]).weights))) == 2


def test_learned_temperature_moves_against_the_entropy_gap():
    """log tau gets gradient only from the dual term: it falls while the weights are more
    diffuse than the target entropy and rises while they are crisper."""
    obs = jax.random.normal(jax.random.PRNGKey(0), (32, 3))
    for target, sign in ((0.0, 1.0), (math.log(4.0), -1.0)):  # below / above any H(w)
        actor = _states_actor(target_weight_entropy=target, temperature=0.5)
        params = actor.init(jax.random.PRNGKey(1), obs)
        params = {**params, "prototype_states": obs[:4]}
        grads = jax.grad(lambda p: actor.aux_loss(p, obs)[0])(params)
        assert sign * float(grads["params"]["log_temperature"]) > 0
        assert float(actor.temperature(params)) == pytest.approx(0.5, rel=1e-6)


@pytest.mark.parametrize("distribution", ["blend", "mixture"])
def test_actor_samples_are_bounded_and_weighted(distribution):
    actor = _actor(distribution=distribution)
    obs = jax.random.normal(jax.random.PRNGKey(0), (6, 3))
    params = actor.init(jax.random.PRNGKey(1), obs)
    actions, log_probs, weights = actor.samples(params, obs, jax.random.PRNGKey(2))
    s = 1 if distribution == "blend" else 4
    assert actions.shape == (6, s, 2) and log_probs.shape == (6, s) and weights.shape == (6, s)
    assert np.all(np.abs(np.asarray(actions)) < 1)
    np.testing.assert_allclose(np.asarray(weights.sum(-1)), 1.0, rtol=1e-5)
    assert np.all(np.isfinite(np.asarray(log_probs)))
    det = actor.deterministic(params, obs)
    assert det.shape == (6, 2)


def test_mixture_gradient_reaches_weights():
    """The Rao-Blackwellised mixture loss is differentiable in the prototype positions."""
    actor = _actor(distribution="mixture")
    obs = jax.random.normal(jax.random.PRNGKey(0), (6, 3))
    params = actor.init(jax.random.PRNGKey(1), obs)

    def loss(params):  # noqa: E306
        a, lp, w = actor.samples(params, obs, jax.random.PRNGKey(2))
        return jnp.mean(jnp.sum(w * a[..., 0], -1))

    grads = jax.grad(loss)(params)
    assert float(jnp.abs(grads["params"]["prototypes"]).sum()) > 0


def test_projection_puts_each_prototype_exactly_on_an_encoded_buffer_state():
    actor = _actor()
    buffer_obs = jax.random.normal(jax.random.PRNGKey(3), (50, 3))
    render = jnp.arange(50, dtype=jnp.float32)[:, None] * jnp.ones((1, 2))
    params = actor.init(jax.random.PRNGKey(4), buffer_obs)
    size = 37  # rows >= 37 are not data yet and must never be chosen
    new_params, prov = prototype.project_prototypes(actor, params, buffer_obs, render, size,
                                                    update_step=123, chunk=16)
    encoded = np.asarray(actor.encode(params, buffer_obs))
    old = np.asarray(params["params"]["prototypes"])
    new = np.asarray(new_params["params"]["prototypes"])
    index = np.asarray(prov.buffer_index)
    assert len(set(index.tolist())) == 4  # distinct states
    first = int(np.argmin([((encoded[:size] - old[k]) ** 2).sum(-1).min() for k in range(4)]))
    for k in range(4):
        d = ((encoded[:size] - old[k]) ** 2).sum(-1)
        assert index[k] < size and index[k] in np.argsort(d)[:4]  # among its nearest valid rows
        if k == first:
            assert index[k] == int(np.argmin(d))  # the closest prototype gets its nearest row
        np.testing.assert_allclose(new[k], encoded[index[k]], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(prov.obs[k]), np.asarray(buffer_obs[index[k]]))
        assert float(prov.render_state[k, 0]) == index[k]
    assert np.all(np.asarray(prov.update_step) == 123)
    # everything but the prototypes is untouched
    for name in ("proto_means", "proto_log_stds"):
        np.testing.assert_array_equal(np.asarray(new_params["params"][name]),
                                      np.asarray(params["params"][name]))


def test_refit_after_projection_preserves_the_policy_and_keeps_prototypes():
    """refit_heads promises the closest blend policy under the projected prototypes' weights:
    on the refit states the refitted Gaussians' blended mean w' @ m' and std w' @ exp(l')
    reproduce the pre-projection ones about as well as an unconstrained least-squares fit of
    the heads (computed here with numpy), and far better than projecting without a refit."""
    actor = _actor()
    obs = jax.random.normal(jax.random.PRNGKey(5), (400, 3))
    params = actor.init(jax.random.PRNGKey(6), obs)
    inner = dict(params["params"])  # distinct heads, so moving prototypes changes the policy
    inner["proto_means"] = jax.random.normal(jax.random.PRNGKey(7), inner["proto_means"].shape)
    # distinct stds too (equal stds blend to the same std whatever the weights)
    inner["proto_log_stds"] = jax.random.uniform(
        jax.random.PRNGKey(8), inner["proto_log_stds"].shape, minval=-2.0, maxval=0.5)
    inner["prototypes"] = inner["prototypes"] * 3.0  # far from the data: projection moves them
    params = {**params, "params": inner}

    def blended(p):  # the pre-squash Gaussian of every state: (w @ m, w @ exp(l)), and w
        out = actor.forward(p, obs)
        return (np.asarray(out.weights @ out.means, np.float64),
                np.asarray(out.weights @ jnp.exp(out.log_stds), np.float64),
                np.asarray(out.weights, np.float64))

    mean0, std0, _ = blended(params)
    before = np.asarray(actor.deterministic(params, obs))
    plain, _ = prototype.project_prototypes(actor, params, obs, obs[:, :1], 400, 0)
    refit, prov = prototype.project_prototypes(actor, params, obs, obs[:, :1], 400, 0,
                                               refit_obs=obs)
    np.testing.assert_array_equal(np.asarray(plain["params"]["prototypes"]),
                                  np.asarray(refit["params"]["prototypes"]))
    assert float(np.asarray(prov.distance).min()) > 0.1  # the projection did move them
    mean_plain, std_plain, new_weights = blended(plain)
    mean_refit, std_refit, refit_weights = blended(refit)
    np.testing.assert_allclose(refit_weights, new_weights, rtol=1e-5, atol=1e-7)
    # the best any heads can do under the new weights W': least squares W' X = old blend
    best_mean = new_weights @ np.linalg.lstsq(new_weights, mean0, rcond=None)[0]
    best_std = new_weights @ np.linalg.lstsq(new_weights, std0, rcond=None)[0]
    mse = lambda a, b: float(np.mean((a - b) ** 2))  # noqa: E731
    for name, old, fitted, unfitted, best in (("mean", mean0, mean_refit, mean_plain, best_mean),
                                              ("std", std0, std_refit, std_plain, best_std)):
        err_refit, err_plain, err_best = mse(fitted, old), mse(unfitted, old), mse(best, old)
        assert err_plain > 1e-2, (name, err_plain)  # projection alone changes the policy
        assert err_refit < 0.05 * err_plain, (name, err_refit, err_plain)
        assert err_refit <= 1.1 * err_best + 1e-6, (name, err_refit, err_best)
    err_plain = np.abs(np.asarray(actor.deterministic(plain, obs)) - before).mean()
    err_refit = np.abs(np.asarray(actor.deterministic(refit, obs)) - before).mean()
    assert err_plain > 0.05 and err_refit < 0.3 * err_plain


def test_projection_never_puts_two_prototypes_on_the_same_state():
    actor = _actor()
    buffer_obs = jax.random.normal(jax.random.PRNGKey(8), (30, 3))
    params = actor.init(jax.random.PRNGKey(9), buffer_obs)
    inner = dict(params["params"])
    inner["prototypes"] = jnp.zeros_like(inner["prototypes"])  # all four identical
    params = {**params, "params": inner}
    for chunk in (7, 30):
        index = np.asarray(prototype.nearest_buffer_states(actor, params, buffer_obs, 30, chunk))
        d = (np.asarray(actor.encode(params, buffer_obs)) ** 2).sum(-1)
        assert sorted(index.tolist()) == sorted(np.argsort(d)[:4].tolist())  # 4 nearest rows
    # fewer valid rows than prototypes: duplicates are unavoidable, still valid rows
    index = np.asarray(prototype.nearest_buffer_states(actor, params, buffer_obs, 2, 7))
    assert set(index.tolist()) == {0, 1}


def test_kmeans_recovers_separated_clusters():
    from protosac_jax.prototype import kmeans

    centres = jnp.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    key = jax.random.PRNGKey(0)
    labels = jax.random.permutation(key, jnp.arange(300) % 3)
    points = centres[labels] + 0.1 * jax.random.normal(jax.random.PRNGKey(1), (300, 2))
    found = np.asarray(kmeans(points, 3, 20))
    d = np.linalg.norm(found[:, None] - np.asarray(centres)[None], axis=-1)
    assert sorted(d.argmin(1).tolist()) == [0, 1, 2] and d.min(1).max() < 0.1


@pytest.mark.parametrize("init", ["kmeans", "random"])
def test_proto_init_kmeans_puts_prototypes_on_encoded_warmup_states(init):
    """`--proto-init kmeans`: right before the first update the prototypes become k-means
    centres of encoded warm-up states, so they sit among the data (low quantisation error);
    `random` leaves the N(0, 1) init alone."""
    import dataclasses

    from protosac_jax import loops, sac
    from protosac_jax.config import SACConfig, TrainConfig
    from protosac_jax.trainer import make_loop

    cfg = TrainConfig(env="pendulum", learning_starts=256, sac=SACConfig(hidden_sizes=(16,)),
                      proto=PrototypeConfig(num_prototypes=4, latent_dim=3, init=init,
                                            kmeans_samples=256, projection_every=0, **FREE))
    loop = make_loop(cfg)
    ts = loops.init_state(loop, jax.random.PRNGKey(0))
    step = jax.jit(lambda ts: loops.env_step(loop, ts)[0])
    for _ in range(256):
        ts = step(ts)
    after = jax.jit(lambda ts: loops.maybe_init_prototypes(loop, ts, 1))(ts)  # 1 update due

    def quantisation_error(ts):
        z = loop.actor.encode(ts.learner.actor_params, sac.prepare_obs(
            ts.learner, ts.buffer.data.obs[:256], cfg.sac))
        return float(jnp.mean(jnp.min(prototype.squared_distances(
            z, ts.learner.actor_params["params"]["prototypes"]), axis=1)))

    if init == "random":
        np.testing.assert_array_equal(after.learner.actor_params["params"]["prototypes"],
                                      ts.learner.actor_params["params"]["prototypes"])
    else:
        assert quantisation_error(after) < 0.2 * quantisation_error(ts)
        # not on an iteration where no update is due (a fractional --updates-per-step)
        idle = loops.maybe_init_prototypes(loop, ts, 0)
        np.testing.assert_array_equal(idle.learner.actor_params["params"]["prototypes"],
                                      ts.learner.actor_params["params"]["prototypes"])
        # only once: after the first update nothing changes any more
        later = dataclasses.replace(after, learner=after.learner.replace(num_updates=1))
        again = loops.maybe_init_prototypes(loop, later, 1)
        np.testing.assert_array_equal(again.learner.actor_params["params"]["prototypes"],
                                      after.learner.actor_params["params"]["prototypes"])


def test_mixture_projection_keeps_its_gaussians():
    """The ridge re-fit matches a blend's mean/std, which a mixture does not have: with
    `mixture` the projection leaves the heads alone."""
    actor = _actor(distribution="mixture")
    obs = jax.random.normal(jax.random.PRNGKey(5), (64, 3))
    params = actor.init(jax.random.PRNGKey(6), obs)
    new, _ = prototype.project_prototypes(actor, params, obs, obs[:, :1], 64, 0, refit_obs=obs)
    for name in ("proto_means", "proto_log_stds"):
        np.testing.assert_array_equal(np.asarray(new["params"][name]),
                                      np.asarray(params["params"][name]))


def test_select_prototype_states_picks_distinct_real_rows_and_refits_after_the_first():
    actor = _states_actor(kmeans_samples=64, kmeans_iters=5)
    buffer_obs = jax.random.normal(jax.random.PRNGKey(3), (80, 3))
    render = jnp.arange(80, dtype=jnp.float32)[:, None]
    params = actor.init(jax.random.PRNGKey(4), buffer_obs)
    inner = dict(params["params"])
    inner["proto_means"] = jax.random.normal(jax.random.PRNGKey(7), inner["proto_means"].shape)
    params = {**params, "params": inner}
    size = 50  # rows >= 50 are not data yet
    first, prov = prototype.select_prototype_states(
        actor, params, buffer_obs, render, size, jax.random.PRNGKey(0), 9, True, chunk=16)
    index = np.asarray(prov.buffer_index)
    assert len(set(index.tolist())) == 4 and index.max() < size
    np.testing.assert_array_equal(np.asarray(first["prototype_states"]),
                                  np.asarray(buffer_obs[index]))
    np.testing.assert_array_equal(np.asarray(prov.obs), np.asarray(buffer_obs[index]))
    np.testing.assert_array_equal(np.asarray(prov.render_state[:, 0]), index)
    assert np.all(np.asarray(prov.update_step) == 9)
    # first selection: the heads are kept (the placeholders gave no policy worth fitting)
    np.testing.assert_array_equal(np.asarray(first["params"]["proto_means"]),
                                  np.asarray(inner["proto_means"]))
    # a later selection re-fits them (blend), starting from the current prototypes
    again, prov2 = prototype.select_prototype_states(
        actor, first, buffer_obs, render, size, jax.random.PRNGKey(1), 10, False, chunk=16)
    assert np.asarray(prov2.buffer_index).max() < size
    if not np.array_equal(np.asarray(prov2.buffer_index), index):
        assert not np.array_equal(np.asarray(again["params"]["proto_means"]),
                                  np.asarray(first["params"]["proto_means"]))


def test_decision_stats_hand_made():
    weights = jnp.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.1, 0.9]])
    means = jnp.array([[0.0], [1.0], [-1.0]])  # pre-squash
    actions = jnp.array([[0.1], [0.9], [jnp.tanh(-1.0)]])
    s = prototype.decision_stats(weights, means, actions)
    h2 = math.exp(-(0.1 * math.log(0.1) + 0.9 * math.log(0.9)))
    assert float(s["effective_prototypes"]) == pytest.approx((1.0 + 2.0 + h2) / 3, rel=1e-5)
    assert float(s["top1_weight"]) == pytest.approx((1.0 + 0.5 + 0.9) / 3, rel=1e-6)
    # row 0: |0.1 - 0| ok; row 1: top-1 is p0 (first max), |0.9 - 0| too far; row 2: exact
    assert float(s["top1_agreement"]) == pytest.approx(2 / 3, rel=1e-6)


def test_gradients_stay_finite_when_a_prototype_state_encodes_to_zero():
    """An all-zero obs through zero-initialised biases encodes to exactly 0: the unit scaling
    and the orthogonality loss must not divide 0 by 0 in the gradient."""
    actor = _states_actor()
    obs = jnp.concatenate([jnp.zeros((1, 3)), jax.random.normal(jax.random.PRNGKey(0), (5, 3))])
    params = actor.init(jax.random.PRNGKey(1), obs)
    params = {**params, "prototype_states": obs[:4]}
    assert float(jnp.abs(actor.prototypes(params)[0]).max()) == 0.0
    grads = jax.grad(lambda p: actor.aux_loss(p, obs)[0] + jnp.sum(
        actor.samples(p, obs, jax.random.PRNGKey(2))[0]))(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))


def test_decide_top1_acts_as_the_top_prototype_and_mean_as_the_blend():
    weights = jnp.array([[0.54, 0.46, 0.0], [0.1, 0.2, 0.7]])
    means = jnp.array([[1.25], [-1.2], [0.3]])
    top1 = _states_actor(decide="top1")
    np.testing.assert_allclose(np.asarray(top1.action_from_weights(weights, means)),
                               np.tanh([[1.25], [0.3]]), rtol=1e-6)
    mean = _states_actor(decide="mean")
    np.testing.assert_allclose(np.asarray(mean.action_from_weights(weights, means)),
                               np.tanh(np.asarray(weights @ means)), rtol=1e-6)
    # "auto" is the original: the blend's mean, a mixture's top component
    assert not _states_actor(decide="auto").decides_top1
    assert _states_actor(decide="auto", distribution="mixture").decides_top1


def test_candidate_rows_draw_the_recent_share_from_the_newest_rows():
    from protosac_jax.prototype import candidate_rows

    key = jax.random.PRNGKey(0)
    # a buffer of 1000 valid rows, not yet wrapped: the newest 20% are rows 800..999
    rows = np.asarray(candidate_rows(key, 20_000, 1000, 999, 1.0, 0.2))
    assert rows.min() == 800 and rows.max() == 999
    rows = np.asarray(candidate_rows(key, 20_000, 1000, 999, 0.5, 0.2))
    recent = (rows >= 800).mean()
    assert 0.55 < recent < 0.65  # half drawn from the window, plus uniform ones landing there
    # a full ring of 1000 rows whose last write was row 99: the newest 200 wrap around
    rows = np.asarray(candidate_rows(key, 20_000, 1000, 99, 1.0, 0.2))
    assert set(np.unique(rows)) == set(range(0, 100)) | set(range(900, 1000))
    uniform = np.asarray(candidate_rows(key, 20_000, 1000, 99, 0.0, 0.2))
    assert uniform.min() == 0 and uniform.max() == 999 and abs(uniform.mean() - 499.5) < 10
    # share 0 (e.g. a swept, traced 0) draws the plain uniform selection's rows
    plain = jax.random.randint(key, (20_000,), 0, 1000)
    np.testing.assert_array_equal(uniform, np.asarray(plain))


def test_spd_solve_matches_lapack_and_the_refit_calls_no_lapack_kernel():
    """refit_heads solves its ridge system with `spd_solve` (plain XLA ops): a batched LAPACK
    solve (a seed group vmaps the refit) hung a 14-seed, 128-prototype Pendulum group on this
    2-core machine at its first projection."""
    for k in (1, 5, 32):
        a = jax.random.normal(jax.random.PRNGKey(k), (k, k))
        a = a @ a.T + 0.1 * jnp.eye(k)
        b = jax.random.normal(jax.random.PRNGKey(k + 1), (k, 3))
        np.testing.assert_allclose(np.asarray(prototype.spd_solve(a, b)),
                                   np.linalg.solve(np.asarray(a, np.float64),
                                                   np.asarray(b, np.float64)),
                                   rtol=1e-3, atol=1e-4)
    actor = _actor()
    obs = jax.random.normal(jax.random.PRNGKey(5), (64, 3))
    params = actor.init(jax.random.PRNGKey(6), obs)
    group = jax.tree_util.tree_map(lambda x: jnp.stack([x, x]), params)
    refit = jax.vmap(lambda p: prototype.refit_heads(actor, p, p, obs, 1e-3))
    text = str(jax.make_jaxpr(refit)(group))
    assert "lu[" not in text and "cholesky" not in text and "custom_linear_solve" not in text


def _gained(bound=0.25, **kw):
    """A states actor with local feedback, random gains and heads, prototype states set."""
    actor = _states_actor(local_gain=bound, **kw)
    obs = jax.random.normal(jax.random.PRNGKey(11), (64, 3))
    params = actor.init(jax.random.PRNGKey(12), obs)
    inner = dict(params["params"])
    inner["proto_gains"] = 3.0 * jax.random.normal(jax.random.PRNGKey(13),
                                                   inner["proto_gains"].shape)
    inner["proto_means"] = jax.random.normal(jax.random.PRNGKey(14), inner["proto_means"].shape)
    return actor, {**params, "params": inner, "prototype_states": obs[:4]}, obs


def test_local_gain_is_zero_at_the_prototype_bounded_and_its_slope_is_the_gain():
    actor, params, obs = _gained(bound=0.25)
    assert params["params"]["proto_gains"].shape == (4, 2, 3)  # [K, A, D]
    out = actor.forward(params, obs)
    c = np.asarray(out.corrections)  # [B, K, A]
    assert c.shape == (64, 4, 2) and np.abs(c).max() <= 0.25 + 1e-6
    assert np.abs(c).max() > 0.2  # large random gains saturate somewhere: the bound binds
    # prototype k's own state (rows 0..3 of obs): its correction is 0, so it acts m_k there
    own = np.asarray(actor.forward(params, obs[:4]).corrections)
    np.testing.assert_allclose(own[np.arange(4), np.arange(4)], 0.0, atol=1e-6)
    # by hand: c_bk = b tanh(G_k (z_b - p_k) / b)
    z, p = np.asarray(out.latents), np.asarray(out.prototypes)
    gains = np.asarray(params["params"]["proto_gains"])
    by_hand = 0.25 * np.tanh(np.einsum("kad,bkd->bka", gains, z[:, None] - p[None]) / 0.25)
    np.testing.assert_allclose(c, by_hand, atol=1e-5)
    # the deterministic action: tanh(sum_k w_k (m_k + c_bk)); top1: tanh(m_top + c_b,top)
    w, m = np.asarray(out.weights), np.asarray(out.means)
    np.testing.assert_allclose(np.asarray(actor.deterministic(params, obs)),
                               np.tanh(w @ m + np.einsum("bk,bka->ba", w, c)), atol=1e-5)
    top1 = _states_actor(local_gain=0.25, decide="top1")
    top = w.argmax(-1)
    np.testing.assert_allclose(np.asarray(top1.deterministic(params, obs)),
                               np.tanh(m[top] + c[np.arange(64), top]), atol=1e-5)


def test_local_gain_off_is_the_constant_actor_and_gains_start_at_zero():
    plain = _states_actor(local_gain=0.0)
    assert "proto_gains" not in plain.init(jax.random.PRNGKey(0), jnp.zeros((2, 3)))["params"]
    assert plain.forward(plain.init(jax.random.PRNGKey(0), jnp.ones((2, 3))),
                         jnp.ones((2, 3))).corrections is None
    gained = _states_actor(local_gain=0.25)
    obs = jax.random.normal(jax.random.PRNGKey(1), (8, 3))
    params = gained.init(jax.random.PRNGKey(2), obs)
    params = {**params, "prototype_states": obs[:4]}
    # zero gains at init: the same policy as without them, yet the gains get a gradient
    no_gains = {**params, "params": {k: v for k, v in params["params"].items()
                                     if k != "proto_gains"}}
    np.testing.assert_allclose(np.asarray(gained.deterministic(params, obs)),
                               np.asarray(plain.deterministic(no_gains, obs)), atol=1e-6)
    grad = jax.grad(lambda p: jnp.sum(gained.samples(p, obs, jax.random.PRNGKey(3))[0]))(params)
    assert float(jnp.abs(grad["params"]["proto_gains"]).max()) > 0


def test_a_zero_bound_is_no_feedback_with_finite_gradients():
    """--sweep local_gain=0,...: the gains exist for every member, and a member with bound 0
    (a traced 0) acts with constant actions, its gradients finite (no 0/0)."""
    gains = jax.random.normal(jax.random.PRNGKey(0), (4, 2, 3))
    z, p = jax.random.normal(jax.random.PRNGKey(1), (5, 3)), jax.random.normal(
        jax.random.PRNGKey(2), (4, 3))
    f = lambda b, g: jnp.sum(prototype.local_corrections(g, z, p, b) ** 2)  # noqa: E731
    zero = jax.jit(lambda b: prototype.local_corrections(gains, z, p, b))(0.0)
    assert float(jnp.abs(zero).max()) == 0.0
    grad = jax.jit(jax.grad(f, argnums=(0, 1)))(0.0, gains)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in grad)


def test_refit_with_local_gain_fits_what_the_corrections_leave_over():
    """After a re-selection the heads are re-fitted to the old policy's mean minus the new
    corrections (gains kept): the refitted policy is much closer to the old one than the
    unfitted move, and the gains are unchanged."""
    actor, params, obs = _gained(bound=0.25, refit_ridge=1e-6)
    moved = {**params, "prototype_states": obs[10:14]}
    refit = prototype.refit_heads(actor, params, moved, obs, 1e-6)
    np.testing.assert_array_equal(np.asarray(refit["params"]["proto_gains"]),
                                  np.asarray(params["params"]["proto_gains"]))

    def pre_mean(p):
        out = actor.forward(p, obs)
        return np.asarray(prototype.blend_mean(out.weights, out.means, out.corrections))

    old = pre_mean(params)
    err_moved = np.mean((pre_mean(moved) - old) ** 2)
    err_refit = np.mean((pre_mean(refit) - old) ** 2)
    # the best any heads can do under the new weights, corrections fixed
    out = actor.forward(moved, obs)
    w = np.asarray(out.weights, np.float64)
    residual = old - np.einsum("bk,bka->ba", w, np.asarray(out.corrections))
    best = np.mean((w @ np.linalg.lstsq(w, residual, rcond=None)[0] - residual) ** 2)
    assert err_refit < 0.5 * err_moved, (err_refit, err_moved)
    assert err_refit <= 1.1 * best + 1e-6, (err_refit, best)


def test_local_gain_is_refused_with_a_mixture():
    from protosac_jax import config as config_lib

    cfg = config_lib.preset("pendulum")
    bad = dataclasses.replace(cfg, proto=dataclasses.replace(
        cfg.proto, distribution="mixture", local_gain=0.25))
    with pytest.raises(config_lib.ConfigError, match="--local-gain needs --distribution blend"):
        config_lib.validate(bad)
    # a mixture's actor never applies a gain, even when built directly from such a config
    assert not prototype.ProtoActor(action_dim=1, cfg=bad.proto).has_local_gain
    config_lib.validate(dataclasses.replace(cfg, proto=dataclasses.replace(
        cfg.proto, local_gain=0.25)))


def test_extra_candidates_replace_their_share_and_only_valid_rows():
    key = jax.random.PRNGKey(0)
    ids = jnp.arange(20_000) % 100  # buffer rows (capacity 100)
    valid = jnp.arange(10) < 6  # extra rows 6..9 are not valid (after an episode ended)
    out = np.asarray(prototype.with_extra_candidates(key, ids, 100, valid, 0.25))
    extra = out >= 100
    assert 0.23 < extra.mean() < 0.27
    assert set(np.unique(out[extra] - 100)) == set(range(6))
    np.testing.assert_array_equal(out[~extra], np.asarray(ids)[~extra])
    none_valid = prototype.with_extra_candidates(key, ids, 100, valid & False, 0.25)
    np.testing.assert_array_equal(np.asarray(none_valid), np.asarray(ids))


def test_select_prototype_states_can_choose_rollout_states_exactly():
    """With an extra pool (the policy's own rollouts) a prototype may be one of its states:
    its state, render state and encoding are that state's, and its buffer_index is -2."""
    actor = _states_actor(kmeans_samples=64, kmeans_iters=5, rollout_share=1.0)
    buffer_obs = jax.random.normal(jax.random.PRNGKey(3), (80, 3))
    render = jnp.arange(80, dtype=jnp.float32)[:, None]
    params = actor.init(jax.random.PRNGKey(4), buffer_obs)
    extra_obs = 5.0 + jax.random.normal(jax.random.PRNGKey(8), (12, 3))
    extra_render = 1000.0 + jnp.arange(12, dtype=jnp.float32)[:, None]
    valid = jnp.arange(12) < 8
    new, prov = prototype.select_prototype_states(
        actor, params, buffer_obs, render, 50, jax.random.PRNGKey(0), 3, True, chunk=16,
        extra=(extra_obs, extra_render, valid))
    index = np.asarray(prov.buffer_index)
    assert np.all(index == -2)  # share 1: every candidate is a rollout state
    rows = np.asarray(prov.render_state[:, 0]).astype(int) - 1000
    assert len(set(rows.tolist())) == 4 and rows.max() < 8  # distinct, valid rollout states
    np.testing.assert_array_equal(np.asarray(prov.obs), np.asarray(extra_obs[rows]))
    np.testing.assert_array_equal(np.asarray(new["prototype_states"]),
                                  np.asarray(extra_obs[rows]))
    np.testing.assert_allclose(np.asarray(prototype.drift(actor, new, new["prototype_states"])),
                               0.0, atol=1e-6)


def test_backward_temperature_scale_acts_crisp_and_learns_through_softer_weights():
    """c > 1: the actor loss's samples (actions, log-probs) are c = 1's to float rounding,
    the weights are the crisp ones and their derivative is that of the weights at temperature
    c x tau (straight-through), so the encoder's gradient differs from the crisp one's."""
    obs = jax.random.normal(jax.random.PRNGKey(0), (16, 3))
    crisp = _states_actor(temperature=0.05)
    st = _states_actor(temperature=0.05, backward_temperature_scale=4.0)
    params = crisp.init(jax.random.PRNGKey(1), obs)
    params = {**params, "prototype_states": jax.random.normal(jax.random.PRNGKey(2), (4, 3))}
    params["params"] = {**params["params"], "proto_means": jax.random.normal(
        jax.random.PRNGKey(3), params["params"]["proto_means"].shape)}
    key = jax.random.PRNGKey(4)
    for a, b in zip(crisp.samples_with_aux(params, obs, key)[0],
                    st.samples_with_aux(params, obs, key)[0]):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)

    out = st.forward(params, obs)
    learned = lambda d: st._learning_weights(params, out.replace(distances=d)).weights  # noqa
    np.testing.assert_allclose(np.asarray(learned(out.distances)), np.asarray(out.weights),
                               atol=1e-6)
    soft = jax.jacobian(lambda d: prototype.proto_weights(d, "softmax", 0.2))(out.distances)
    np.testing.assert_allclose(np.asarray(jax.jacobian(learned)(out.distances)),
                               np.asarray(soft), atol=1e-5)

    def encoder_grad(actor):
        def loss(p):
            actions, log_probs, _ = actor.samples_with_aux(p, obs, key)[0]
            return jnp.mean(actions[..., 0] ** 2 + 0.1 * log_probs)
        g = jax.grad(loss)(params)["params"]["encoder"]
        return np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(g)])

    g_crisp, g_st = encoder_grad(crisp), encoder_grad(st)
    assert np.all(np.isfinite(g_st))
    assert np.linalg.norm(g_st - g_crisp) > 0.1 * np.linalg.norm(g_crisp)
