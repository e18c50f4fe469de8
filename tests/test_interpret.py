"""interpret.py on hand-built agents where the answer is known."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from protosac_jax import interpret
from protosac_jax.config import PrototypeConfig
from protosac_jax.prototype import ProtoActor


@pytest.mark.parametrize("decide", ["top1", "mean"])
def test_deleting_the_dominant_prototype_moves_the_action_to_the_next_ones_mean(decide):
    actor = ProtoActor(2, PrototypeConfig(num_prototypes=3, latent_dim=2, decide=decide), (8,))
    means = jnp.array([[2.0, -1.0], [-0.5, 0.7], [1.5, 1.5]])
    weights = jnp.array([[1 - 1e-3 - 1e-6, 1e-3, 1e-6]])  # p0 owns (almost) all weight
    full = interpret.action_from_weights(actor, weights, means)
    np.testing.assert_allclose(full[0], np.tanh(means[0]), atol=1e-2)
    keep = interpret.top_k_mask(weights, 1)
    np.testing.assert_array_equal(keep, [[0.0, 1.0, 1.0]])
    deleted = interpret.action_from_weights(actor, interpret.masked_weights(weights, keep), means)
    np.testing.assert_allclose(deleted[0], np.tanh(means[1]), atol=1e-2)  # the next one's mean


def test_masks_delete_exactly_k_and_weights_renormalise():
    weights = jax.random.dirichlet(jax.random.PRNGKey(0), jnp.ones(6), (5,))
    for k in (1, 3):
        for keep in (interpret.top_k_mask(weights, k),
                     interpret.random_k_mask(jax.random.PRNGKey(k), weights, k)):
            assert np.all(np.asarray(keep).sum(-1) == 6 - k)
            w = interpret.masked_weights(weights, keep)
            np.testing.assert_allclose(np.asarray(w).sum(-1), 1.0, rtol=1e-6)
            assert np.all(np.asarray(w)[np.asarray(keep) == 0] == 0)
    top = interpret.top_k_mask(weights, 1)
    assert np.all(np.asarray(weights)[np.asarray(top) == 0] == np.asarray(weights).max(-1))


@pytest.mark.parametrize("distribution,decide", [("blend", "mean"), ("blend", "top1"),
                                                  ("mixture", "top1")])
def test_explanation_decomposes_the_action(distribution, decide):
    actor = ProtoActor(2, PrototypeConfig(num_prototypes=4, latent_dim=3, decide=decide,
                                          distribution=distribution, init_log_std=-1.0,
                                          target_weight_entropy=None, temperature=1.0), (8,))
    obs = jax.random.normal(jax.random.PRNGKey(1), (7, 5))
    params = actor.init(jax.random.PRNGKey(2), obs)
    inner = dict(params["params"])  # distinct heads, large enough that tanh(m) != m
    inner["proto_means"] = jnp.array([[-1.2, 0.8], [0.9, 1.1], [0.3, -1.0], [1.4, -0.6]])
    params = {**params, "params": inner, "prototype_states": 3.0 * obs[:4]}
    e = interpret.explain(actor, params, obs, top_k=2)
    np.testing.assert_allclose(e["action"], np.asarray(actor.deterministic(params, obs)),
                               atol=1e-5)
    np.testing.assert_allclose(e["contributions"].sum(1), e["pre_squash_mean"], atol=1e-6)
    np.testing.assert_allclose(e["contribution_share"].sum(1), 1.0, rtol=1e-5)
    assert e["top_k"].shape == (7, 2) and e["top_k_share"].shape == (7, 2, 2)
    assert np.all(e["top_k_weights"][:, 0] >= e["top_k_weights"][:, 1])
    # Checked against what the actor itself does, not against a copy of explain's formula.
    # `act` draws the policy: blend u = w@m + std*noise; mixture: a component c ~ w, then
    # u = m_c + std_c*noise. Each state's pre-squash mean E[u] = sum_k w_k m_k is the sum of
    # the contributions, and contribution k = E[u 1{the action came from prototype k}].
    n = 20_000
    keys = jax.random.split(jax.random.PRNGKey(3), n)
    act = jax.jit(jax.vmap(lambda noise, key: actor.act(params, obs, noise, key)))
    noise = jax.random.normal(jax.random.PRNGKey(4), (n, 7, 2))
    u = np.arctanh(np.clip(np.asarray(act(noise, keys), np.float64), -1 + 1e-7, 1 - 1e-7))
    # 20k samples of u (std < 1.2): standard error of the mean < 0.01
    np.testing.assert_allclose(u.mean(0), e["pre_squash_mean"], atol=0.03)
    if decide == "top1":  # the action taken is the top prototype's own
        np.testing.assert_allclose(e["action"], np.tanh(np.asarray(inner["proto_means"])[
            e["top_k"][:, 0]]), atol=1e-5)
    if distribution == "blend":
        if decide == "mean":
            np.testing.assert_allclose(np.tanh(e["contributions"].sum(1)), e["action"],
                                       atol=1e-5)
        return
    # Without noise each action is tanh(m_c) exactly: which prototype acted is visible.
    u0 = np.arctanh(np.asarray(act(jnp.zeros((n, 7, 2)), keys), np.float64))  # [n, 7, A]
    means = np.asarray(params["params"]["proto_means"], np.float64)  # [K, A]
    chosen = np.argmin(((u0[:, :, None] - means[None, None]) ** 2).sum(-1), axis=-1)  # [n, 7]
    np.testing.assert_allclose(u0, means[chosen], atol=1e-4)
    onehot = chosen[..., None] == np.arange(4)  # [n, 7, K]
    np.testing.assert_allclose(onehot.mean(0), e["weights"], atol=0.02)  # w = P(component)
    empirical = (onehot[..., None] * u0[:, :, None, :]).mean(0)  # E[u0 1{c=k}]: [7, K, A]
    np.testing.assert_allclose(e["contributions"], empirical, atol=0.02)
    # the decision explained is the most-weighted prototype: (one of) the actor's most frequent
    freq = onehot.mean(0)
    assert np.all(np.take_along_axis(freq, e["top_k"][:, :1], -1)[:, 0] >= freq.max(-1) - 0.02)
    np.testing.assert_allclose(e["action"], np.tanh(means[e["top_k"][:, 0]]), atol=1e-5)


def test_action_change_curves_on_a_crisp_agent_favour_the_top_prototype():
    """Prototype k sits on obs k's latent (softmax, sharp): deleting the top prototype of each
    state moves its action far more than deleting a random one."""
    cfg = PrototypeConfig(num_prototypes=8, latent_dim=4, similarity="softmax",
                          temperature=0.05, target_weight_entropy=None)
    actor = ProtoActor(1, cfg, (8,))
    obs = jax.random.normal(jax.random.PRNGKey(3), (8, 4))
    params = actor.init(jax.random.PRNGKey(4), obs)
    inner = dict(params["params"])
    inner["proto_means"] = jnp.linspace(-2, 2, 8)[:, None]
    params = {**params, "params": inner, "prototype_states": obs}
    curves = interpret.action_change_curves(actor, params, obs, [1, 2])
    assert curves["action_change_top"][0] > 3 * curves["action_change_random"][0]


# ----------------------------------------------------------------------------- pruning
def test_keep_for_share_takes_the_fewest_most_used():
    usage = np.array([0.05, 0.6, 0.3, 0.05])
    np.testing.assert_array_equal(interpret.keep_for_share(usage, 0.9), [1, 2])
    np.testing.assert_array_equal(interpret.keep_for_share(usage, 0.5), [1])
    assert len(interpret.keep_for_share(usage, 1.0)) == 4
    np.testing.assert_allclose(interpret.usage_mass(np.array([[1, 0], [0.5, 0.5]])), [.75, .25])


def _tiny_agent(tmp_path=None, similarity="log", source="states"):
    """A real (untrained) Pendulum agent built the way `load` builds one."""
    from protosac_jax import loops, sac
    from protosac_jax.agent import Agent
    from protosac_jax.config import SACConfig, TrainConfig
    from protosac_jax.envs import make_env
    from protosac_jax.prototype import Provenance

    cfg = TrainConfig(env="pendulum", sac=SACConfig(hidden_sizes=(16,)),
                      proto=PrototypeConfig(num_prototypes=6, latent_dim=3,
                                            similarity=similarity, source=source))
    spec = make_env("pendulum").spec
    actor = loops.make_actor(cfg, spec.action_dim)
    learner = sac.init(jax.random.PRNGKey(0), actor, cfg.sac, spec.obs_example(),
                       spec.action_dim)
    prov = Provenance.empty(6, spec.obs_example(), spec.render_example())
    prov = prov.replace(buffer_index=jnp.arange(6, dtype=jnp.int32),
                        obs=jax.random.normal(jax.random.PRNGKey(1), (6, 3)))
    if source == "states":  # prototype k is the encoding of its state
        learner = learner.replace(actor_params={**learner.actor_params,
                                                "prototype_states": prov.obs})
    prototypes = {k: np.asarray(getattr(prov, k)) for k in
                  ("buffer_index", "obs", "render_state", "update_step", "distance")}
    return Agent(config=cfg, spec=spec, actor=actor, learner=learner, prototypes=prototypes,
                 meta={"env_steps": 123, "format_version": 2})


@pytest.mark.parametrize("similarity,source", [("log", "free"), ("softmax", "free"),
                                               ("softmax", "states")])
def test_pruned_agent_acts_like_the_masked_original(similarity, source):
    agent = _tiny_agent(similarity=similarity, source=source)
    keep = np.array([4, 1, 2])
    pruned = interpret.prune_agent(agent, keep)
    assert pruned.config.proto.num_prototypes == 3
    p = pruned.params["params"]
    if source == "free":
        np.testing.assert_array_equal(p["prototypes"], agent.params["params"]["prototypes"][keep])
    else:
        np.testing.assert_array_equal(pruned.params["prototype_states"],
                                      agent.params["prototype_states"][keep])
    np.testing.assert_array_equal(p["proto_means"], agent.params["params"]["proto_means"][keep])
    np.testing.assert_array_equal(pruned.prototypes["buffer_index"], keep)
    # Adam moments follow the params they belong to
    assert jax.tree_util.tree_structure(pruned.learner.actor_opt_state) == \
        jax.tree_util.tree_structure(agent.learner.actor_opt_state)
    obs = np.random.default_rng(0).normal(size=(9, 3)).astype(np.float32)
    out = agent.actor.forward(agent.params, jnp.asarray(obs))
    mask = jnp.zeros((1, 6)).at[0, keep].set(1.0)
    expected = interpret.action_from_weights(agent.actor, interpret.masked_weights(
        out.weights, mask), out.means)
    np.testing.assert_allclose(pruned.act(obs), 2.0 * np.asarray(expected), atol=1e-5)
    assert not np.allclose(agent.act(obs), pruned.act(obs), atol=1e-3)  # pruning did something
    with pytest.raises(ValueError, match="distinct"):
        interpret.prune_agent(agent, [1, 1])


def test_pruned_agent_saves_loads_and_refuses_to_resume(tmp_path):
    import protosac_jax
    from protosac_jax import checkpoint, trainer

    pruned = interpret.prune_agent(_tiny_agent(), [0, 5])
    checkpoint.save_agent(tmp_path / "pruned", pruned)
    assert checkpoint.is_inference_only(tmp_path / "pruned")
    loaded = protosac_jax.load(tmp_path / "pruned")
    assert loaded.config.proto.num_prototypes == 2 and loaded.meta["kept_prototypes"] == [0, 5]
    obs = np.zeros((4, 3), np.float32) + np.arange(4, dtype=np.float32)[:, None]
    np.testing.assert_allclose(loaded.act(obs), pruned.act(obs), atol=1e-6)
    np.testing.assert_array_equal(loaded.prototypes["buffer_index"], [0, 5])
    with pytest.raises(checkpoint.CheckpointError, match="inference-only"):
        trainer.resume(tmp_path / "pruned", progress=False, quiet=True)


def test_lookalike_hand_made():
    """Points on a line; the decision at x=0 is explained by a prototype at 0.5: the evaluated
    states farther than 0.5 from it are known exactly."""
    states = np.array([[0.0], [1.0], [2.0], [3.0], [-3.0]])
    top1 = np.zeros(5, np.int64)
    # distances are scaled by the std over the states, which the ranks do not depend on
    share = interpret.lookalike(states[:1].repeat(5, 0) * 0 + states, np.array([[0.5]]), top1,
                                resolution=0.0)
    # per decision: x=0 -> proto at 0.5, farther: 1,2,3,-3 -> 4/5; x=1 -> 0.5 away, farther
    # than 0.5: 0,2,3,-3 -> 4/5; x=2 -> 1.5: 0,3,-3 (2.0, 1.0!, 5.0) -> 3 and 0 at 2.0 -> 3/5
    # x=3 -> 2.5: 0 (3), -3 (6) -> 2/5; x=-3 -> 3.5: 1 (4), 2 (5), 3 (6) -> 3/5
    assert share == pytest.approx(np.median([0.8, 0.8, 0.6, 0.4, 0.6]))
    # the prototype equal to each decision's own state: every other state is farther
    assert interpret.lookalike(states, states, np.arange(5), resolution=0.0) == 0.8
    # repeats of a state (a fixed point) are one state at the resolution, not "more alike"
    settled = np.array([[0.0]] * 8 + [[1.0], [2.0]])
    proto = np.array([[0.1]])
    assert interpret.lookalike(settled, proto, np.zeros(10, np.int64), resolution=0.0) <= 0.2
    assert interpret.lookalike(settled, proto, np.zeros(10, np.int64)) >= 0.9


def test_lookalike_on_pixels_uses_small_grayscale_frames():
    frames = np.zeros((3, 96, 96, 3), np.uint8)
    frames[1, :48] = 255  # top half white
    frames[2, :, :48] = 255  # left half white
    proto = frames[1:2].copy()
    proto[0, :2] = 0  # nearly frame 1
    feats = interpret.lookalike_features(frames, pixels=True)
    assert feats.shape == (3, 576) and feats.max() <= 1.0
    # decision 1 is explained by a prototype that looks like it: both others are farther
    assert interpret.lookalike(frames[1:2], proto, np.zeros(1, np.int64), pixels=True,
                               resolution=0.0) == 0.0  # only itself to compare: none farther
    share = interpret.lookalike(frames, proto, np.zeros(3, np.int64), pixels=True,
                                resolution=0.0)
    # squared distances on the 24x24 frames: any two of the three differ in 288 cells; the
    # prototype differs from frame 1 in 24 half cells (6), from frame 0 by 270 and from frame
    # 2 by 282: for every decision both other frames are farther than its prototype -> 2/3
    assert share == pytest.approx(2 / 3)


def test_decision_metrics_scores_the_nearest_prototype_return():
    weights = np.array([[0.9, 0.1], [0.2, 0.8]])
    means = np.array([[0.0], [1.0]])
    actions = np.tanh(weights @ means)
    states = np.array([[0.0], [1.0]])
    m = interpret.decision_metrics(weights, means, actions, states, states,
                                   return_full=-100.0, return_nearest=-190.0,
                                   return_random=-1000.0)
    assert m["nearest_prototype_score"] == pytest.approx(0.9)
    assert m["decisions"] == 2 and m["top1_weight"] == pytest.approx(0.85)
    assert m["top1_agreement"] == 1.0  # |tanh(0.1) - 0| and |tanh(0.8) - tanh(1)| <= 0.25
    assert m["lookalike"] == 1.0  # each decision's prototype is its own state
    no_span = interpret.decision_metrics(weights, means, actions, states, states, 0, 0, 0, 0)
    assert no_span["nearest_prototype_score"] is None
