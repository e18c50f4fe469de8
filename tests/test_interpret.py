"""interpret.py on hand-built agents where the answer is known."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from protosac_jax import interpret
from protosac_jax.config import PrototypeConfig
from protosac_jax.prototype import ProtoActor


def test_deleting_the_dominant_prototype_moves_the_action_to_the_next_ones_mean():
    actor = ProtoActor(2, PrototypeConfig(num_prototypes=3, latent_dim=2), (8,))
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


@pytest.mark.parametrize("distribution", ["blend", "mixture"])
def test_explanation_decomposes_the_action(distribution):
    actor = ProtoActor(2, PrototypeConfig(num_prototypes=4, latent_dim=3,
                                          distribution=distribution), (8,))
    obs = jax.random.normal(jax.random.PRNGKey(1), (7, 5))
    params = actor.init(jax.random.PRNGKey(2), obs)
    e = interpret.explain(actor, params, obs, top_k=2)
    np.testing.assert_allclose(e["action"], np.asarray(actor.deterministic(params, obs)),
                               atol=1e-5)
    if distribution == "blend":
        np.testing.assert_allclose(np.tanh(e["contributions"].sum(1)), e["action"], atol=1e-5)
    np.testing.assert_allclose(e["contribution_share"].sum(1), 1.0, rtol=1e-5)
    assert e["top_k"].shape == (7, 2) and e["top_k_share"].shape == (7, 2, 2)
    assert np.all(e["top_k_weights"][:, 0] >= e["top_k_weights"][:, 1])


def test_action_change_curves_on_a_crisp_agent_favour_the_top_prototype():
    """Prototype k sits on obs k's latent (softmax, sharp): deleting the top prototype of each
    state moves its action far more than deleting a random one."""
    cfg = PrototypeConfig(num_prototypes=8, latent_dim=4, similarity="softmax",
                          temperature=0.05)
    actor = ProtoActor(1, cfg, (8,))
    obs = jax.random.normal(jax.random.PRNGKey(3), (8, 4))
    params = actor.init(jax.random.PRNGKey(4), obs)
    inner = dict(params["params"])
    inner["prototypes"] = actor.encode(params, obs)
    inner["proto_means"] = jnp.linspace(-2, 2, 8)[:, None]
    params = {**params, "params": inner}
    curves = interpret.action_change_curves(actor, params, obs, [1, 2])
    assert curves["action_change_top"][0] > 3 * curves["action_change_random"][0]
