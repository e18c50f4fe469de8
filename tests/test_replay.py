import jax
import jax.numpy as jnp
import numpy as np
import pytest

from protosac_jax import replay


def _item(value, pixels=False):
    obs = jnp.full((2, 2, 3), value, jnp.uint8) if pixels else jnp.full((3,), value, jnp.float32)
    return {"obs": obs, "reward": jnp.asarray(value, jnp.float32)}


def _batch(values, pixels=False):
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *[_item(v, pixels) for v in values])


def test_insert_wraps_around_and_overwrites_oldest():
    state = replay.init(5, _item(0))
    state = replay.insert(state, _batch([1, 2, 3]))
    assert int(state.size) == 3 and int(state.insert_position) == 3
    state = replay.insert(state, _batch([4, 5, 6, 7]))  # 6 and 7 wrap to rows 0 and 1
    assert int(state.size) == 5 and int(state.insert_position) == 2
    np.testing.assert_array_equal(np.asarray(state.data["reward"]), [6, 7, 3, 4, 5])
    np.testing.assert_array_equal(np.asarray(state.data["obs"][:, 0]), [6, 7, 3, 4, 5])


def test_insert_exactly_full_wraps_position_to_zero():
    state = replay.insert(replay.init(4, _item(0)), _batch([1, 2, 3, 4]))
    assert int(state.insert_position) == 0 and int(state.size) == 4


def test_batch_larger_than_buffer_is_refused():
    with pytest.raises(ValueError, match="does not fit"):
        replay.insert(replay.init(2, _item(0)), _batch([1, 2, 3]))


def test_dtype_preserved_for_uint8_pixels():
    state = replay.insert(replay.init(4, _item(0, pixels=True)), _batch([7, 255], pixels=True))
    assert state.data["obs"].dtype == jnp.uint8
    batch = replay.sample(state, jax.random.PRNGKey(0), 16)
    assert batch["obs"].dtype == jnp.uint8
    assert set(np.unique(np.asarray(batch["obs"]))) <= {7, 255}


def test_sample_only_returns_written_rows_and_covers_them():
    state = replay.insert(replay.init(100, _item(0)), _batch([1, 2, 3]))
    batch = replay.sample(state, jax.random.PRNGKey(0), 3000)
    values = np.asarray(batch["reward"])
    assert set(np.unique(values)) == {1, 2, 3}
    counts = np.bincount(values.astype(int))[1:]
    assert counts.min() > 800  # roughly uniform


def test_insert_and_sample_jit():
    state = replay.init(8, _item(0))
    insert = jax.jit(replay.insert)
    for i in range(5):
        state = insert(state, _batch([i, i + 10]))
    assert int(state.size) == 8 and int(state.insert_position) == 2


@pytest.mark.parametrize("first", [[1, 2, 3], [1, 2, 3, 4]])  # partly filled, exactly full
def test_resize_of_an_unwrapped_buffer_is_the_buffer_that_was_big_from_the_start(first):
    small = replay.insert(replay.init(4, _item(0)), _batch(first))
    big = replay.insert(replay.init(8, _item(0)), _batch(first))
    grown = replay.resize(small, 8)
    assert grown.capacity == 8
    for a, b in zip(jax.tree_util.tree_leaves(grown), jax.tree_util.tree_leaves(big)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # and it goes on exactly alike
    grown = replay.insert(grown, _batch([9, 10]))
    big = replay.insert(big, _batch([9, 10]))
    np.testing.assert_array_equal(np.asarray(grown.data["reward"]), np.asarray(big.data["reward"]))
    assert int(grown.insert_position) == int(big.insert_position)


def test_resize_of_a_wrapped_buffer_keeps_every_transition_oldest_first():
    state = replay.insert(replay.init(4, _item(0)), _batch([1, 2, 3, 4]))
    state = replay.insert(state, _batch([5, 6]))  # rows [5 6 3 4]
    grown = replay.resize(state, 6)
    np.testing.assert_array_equal(np.asarray(grown.data["reward"]), [3, 4, 5, 6, 0, 0])
    assert int(grown.size) == 4 and int(grown.insert_position) == 4
    grown = replay.insert(grown, _batch([7, 8, 9]))  # fills the new rows, then the oldest (3)
    np.testing.assert_array_equal(np.asarray(grown.data["reward"]), [9, 4, 5, 6, 7, 8])
    with pytest.raises(ValueError, match="shrink"):
        replay.resize(state, 3)


def _n_step_buffer(capacity=8):
    """Two envs (stride 2), steps t = 0..5 at global index g = 2t + e, written into 8 rows
    (so rows hold g = 4..11 after the wrap). obs = g, reward = g + 1, next_obs = g + 100; env 0's
    episode terminates at g = 6, env 1's is truncated at g = 5."""
    example = replay.Transition(obs=jnp.zeros(1), action=jnp.zeros(1), reward=jnp.zeros(()),
                                next_obs=jnp.zeros(1), terminated=jnp.zeros(()),
                                render_state=jnp.zeros(1), episode_end=jnp.zeros(()))
    state = replay.init(capacity, example)
    for t in range(6):
        g = np.array([2 * t, 2 * t + 1], np.float32)
        state = replay.insert(state, replay.Transition(
            obs=g[:, None], action=np.zeros((2, 1)), reward=g + 1, next_obs=g[:, None] + 100,
            terminated=np.float32(g == 6), render_state=np.zeros((2, 1)),
            episode_end=np.float32((g == 6) | (g == 5))))
    return state


def test_n_step_sample_sums_rewards_within_the_episode_and_across_the_wrap():
    gamma = 0.9
    state = _n_step_buffer()
    batch = jax.jit(replay.sample_n_step, static_argnums=(2, 3, 4))(
        state, jax.random.PRNGKey(0), 4000, 3, 2, gamma)
    # start g -> (n-step return, next obs, terminated, discount), worked out by hand
    expected = {
        4: (5 + gamma * 7, 106, 1.0, gamma**2),   # env 0: g 4, then 6 terminates
        5: (6, 105, 0.0, gamma),                  # env 1: truncated at once, bootstrap
        6: (7, 106, 1.0, gamma),                  # terminates at once
        7: (8 + gamma * 10 + gamma**2 * 12, 111, 0.0, gamma**3),  # g 7, 9, 11 (wraps)
    }
    starts = np.asarray(batch.obs[:, 0]).astype(int)
    assert set(starts) == set(expected)  # 8, 9, 10, 11 lack 2 written successors
    assert np.bincount(starts)[4:].min() > 800
    for g, (ret, nxt, term, disc) in expected.items():
        rows = starts == g
        np.testing.assert_allclose(np.asarray(batch.reward)[rows], ret, rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(batch.next_obs)[rows, 0], nxt)
        np.testing.assert_array_equal(np.asarray(batch.terminated)[rows], term)
        np.testing.assert_allclose(np.asarray(batch.discount)[rows], disc, rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(batch.action)[rows], 0.0)


def test_n_step_of_one_is_the_one_step_transition():
    state = _n_step_buffer()
    batch = replay.sample_n_step(state, jax.random.PRNGKey(1), 500, 1, 2, 0.9)
    starts = np.asarray(batch.obs[:, 0])
    assert set(starts.astype(int)) == set(range(4, 12))
    np.testing.assert_array_equal(np.asarray(batch.reward), starts + 1)
    np.testing.assert_array_equal(np.asarray(batch.next_obs[:, 0]), starts + 100)
    np.testing.assert_allclose(np.asarray(batch.discount), 0.9)
