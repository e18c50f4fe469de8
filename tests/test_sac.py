import dataclasses

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


@pytest.mark.parametrize("name", list(ACTORS))
def test_update_changes_everything_and_polyak_is_exact(name):
    actor = ACTORS[name]
    state = sac.init(jax.random.PRNGKey(1), actor, CFG, jnp.zeros(3), 1)
    new, metrics = jax.jit(sac.update, static_argnums=(3, 4, 5))(
        state, _batch(), jax.random.PRNGKey(2), actor, CFG, 1)
    assert int(new.num_updates) == 1
    for key in ("losses/critic", "losses/actor", "charts/alpha", "charts/entropy"):
        assert np.isfinite(float(metrics[key]))
    leaves = lambda t: jax.tree_util.tree_leaves(t)  # noqa: E731
    assert any(not np.allclose(a, b) for a, b in zip(leaves(new.actor_params),
                                                      leaves(state.actor_params)))
    # target <- tau * online + (1 - tau) * target
    for tgt, old_tgt, online in zip(leaves(new.target_critic_params),
                                    leaves(state.target_critic_params),
                                    leaves(new.critic_params)):
        np.testing.assert_allclose(tgt, 0.1 * online + 0.9 * old_tgt, rtol=1e-5, atol=1e-6)


def test_terminated_transitions_do_not_bootstrap_truncated_do():
    actor = ACTORS["baseline"]
    state = sac.init(jax.random.PRNGKey(1), actor, CFG, jnp.zeros(3), 1)
    # Make Q == 0 for the online critic by zeroing its params: loss = 0.5 * 2 * mean(y^2).
    zero = jax.tree_util.tree_map(jnp.zeros_like, state.critic_params)
    for terminated in (1.0, 0.0):
        batch = _batch(terminated=terminated)
        loss, _ = sac.critic_loss(zero, state, batch, jax.random.PRNGKey(3), actor, CFG)
        reward_only = float(jnp.mean(batch.reward ** 2))
        if terminated:
            assert float(loss) == pytest.approx(reward_only, rel=1e-5)
        else:
            assert float(loss) != pytest.approx(reward_only, rel=1e-3)


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
