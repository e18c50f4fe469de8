"""Pure-functional replay buffer living on the device.

Like brax's replay buffers, the buffer has no state of its own: `init` returns a pytree,
`insert(state, batch) -> state`, `sample(state, key, n) -> batch`. It is jittable, shardable and
saved like any other pytree. Storage keeps each field's dtype (uint8 pixels stay uint8).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class Transition:
    obs: Any
    action: jax.Array
    reward: jax.Array
    next_obs: Any
    terminated: jax.Array  # 1.0 at a true terminal state (no bootstrap); 0.0 on truncation
    render_state: jax.Array  # what the env needs to draw `obs` (for prototype provenance)
    # 1.0 where the env's episode ended at this step (terminated or truncated). Stored only
    # for n-step returns (None otherwise, so a 1-step run's buffer is what it always was).
    episode_end: Any = None
    # Discount of the bootstrap term of a sampled n-step transition (gamma^m); None for
    # 1-step samples (the critic uses gamma). Never stored.
    discount: Any = None


@flax.struct.dataclass
class ReplayState:
    data: Any  # pytree of [capacity, ...] arrays
    insert_position: jax.Array  # int32, next row to write
    size: jax.Array  # int32, rows holding data (<= capacity)

    @property
    def capacity(self) -> int:
        return jax.tree_util.tree_leaves(self.data)[0].shape[0]


def init(capacity: int, example: Any) -> ReplayState:
    """Empty buffer whose rows look like `example` (a single, unbatched item)."""
    data = jax.tree_util.tree_map(
        lambda x: jnp.zeros((capacity,) + jnp.shape(x), jnp.asarray(x).dtype), example)
    return ReplayState(data=data, insert_position=jnp.zeros((), jnp.int32),
                       size=jnp.zeros((), jnp.int32))


def insert(state: ReplayState, batch: Any) -> ReplayState:
    """Write a batch (leading axis = items, e.g. one per env) at the ring position.

    Rows wrap around the end of the buffer; once full, the oldest rows are overwritten.
    The batch must not be larger than the buffer.
    """
    capacity = state.capacity
    num = jax.tree_util.tree_leaves(batch)[0].shape[0]
    if num > capacity:
        raise ValueError(f"batch of {num} does not fit a buffer of {capacity}")
    rows = (state.insert_position + jnp.arange(num)) % capacity
    data = jax.tree_util.tree_map(
        lambda buf, x: buf.at[rows].set(x.astype(buf.dtype)), state.data, batch)
    return ReplayState(
        data=data,
        insert_position=((state.insert_position + num) % capacity).astype(jnp.int32),
        size=jnp.minimum(state.size + num, capacity).astype(jnp.int32),
    )


def sample(state: ReplayState, key: jax.Array, batch_size: int) -> Any:
    """Uniform sample (with replacement) over the rows written so far."""
    rows = jax.random.randint(key, (batch_size,), 0, jnp.maximum(state.size, 1))
    batch = jax.tree_util.tree_map(lambda buf: buf[rows], state.data)
    if isinstance(batch, Transition):
        batch = batch.replace(next_obs=full_next_obs(batch.obs, batch.next_obs))
    return batch


def sample_n_step(state: ReplayState, key: jax.Array, batch_size: int, n: int, stride: int,
                  gamma) -> Transition:
    """Uniform sample of n-step transitions (s_t, a_t, R, s_{t+m}, terminated, gamma^m).

    Rows are written `stride` (the number of envs) at a time, env e's step t at global
    position t * stride + e, so env e's next step is `stride` rows later, also across the
    ring's wrap. R = sum_{j<m} gamma^j r_{t+j}, where m <= n stops after the first step whose
    episode ended; `terminated` is that last step's (a truncation bootstraps from its final
    observation). Starts are drawn among the rows whose n - 1 successors are written.
    """
    capacity = state.capacity
    span = (n - 1) * stride
    oldest = (state.insert_position - state.size) % capacity
    offsets = jax.random.randint(key, (batch_size,), 0, jnp.maximum(state.size - span, 1))
    rows = (oldest + offsets) % capacity
    steps = (rows[:, None] + stride * jnp.arange(n)[None, :]) % capacity  # [B, n]
    data = state.data
    ends = data.episode_end[steps]
    # alive[:, j] = 1 while no episode ended in steps 0..j-1 of the window
    ended_before = jnp.cumsum(ends, axis=1) - ends
    alive = (ended_before == 0).astype(jnp.float32)
    powers = jnp.asarray(gamma, jnp.float32) ** jnp.arange(n, dtype=jnp.float32)
    reward = jnp.sum(alive * powers[None] * data.reward[steps], axis=1)
    taken = jnp.sum(alive, axis=1).astype(jnp.int32)  # m >= 1
    last = jnp.take_along_axis(steps, (taken - 1)[:, None], axis=1)[:, 0]
    first = jax.tree_util.tree_map(lambda buf: buf[rows], data)
    return first.replace(
        reward=reward,
        next_obs=full_next_obs(data.obs[last], data.next_obs[last]),
        terminated=data.terminated[last],
        discount=jnp.asarray(gamma, jnp.float32) ** taken.astype(jnp.float32))


def saved_form(state: ReplayState) -> dict:
    """The buffer as checkpoints store it: plain dicts, a Transition's unused (None) fields
    left out, so adding an optional field keeps every older checkpoint readable."""
    data = state.data
    if isinstance(data, Transition):
        data = {f.name: getattr(data, f.name) for f in dataclasses.fields(data)
                if getattr(data, f.name) is not None}
    return {"data": data, "insert_position": state.insert_position, "size": state.size}


def from_saved_form(saved: dict, like: ReplayState) -> ReplayState:
    """Inverse of `saved_form`, shaped like `like` (a buffer or its abstract template)."""
    data = saved["data"]
    if isinstance(like.data, Transition):
        data = Transition(**data)
    return ReplayState(data=data, insert_position=saved["insert_position"], size=saved["size"])


def full_next_obs(obs, next_obs):
    """Frame-stacked pixels store only the newest frame of next_obs (C channels of k*C): the
    next observation is the observation without its oldest frame plus that new frame. Other
    observations are stored whole and returned unchanged (decided from the static shapes)."""
    channels = next_obs.shape[-1]
    if next_obs.ndim != obs.ndim or channels == obs.shape[-1]:
        return next_obs
    return jnp.concatenate([obs[..., channels:], next_obs], axis=-1)


def resize(state: ReplayState, capacity: int) -> ReplayState:
    """The same transitions in a buffer of `capacity` rows (>= the current capacity).

    A buffer that has not wrapped keeps every row where it is, so it is exactly the buffer of
    a run that had `capacity` from the start (a resumed run that extends --total-steps relies
    on this). A wrapped one is laid out oldest first, then filled on. The rows are gathered
    on the host (numpy), where a just-restored buffer still is.
    """
    import numpy as np

    old = state.capacity
    if capacity == old:
        return state
    if capacity < old:
        raise ValueError(f"cannot shrink a replay buffer ({old} -> {capacity} rows)")
    size, position = int(state.size), int(state.insert_position)
    wrapped = size == old and position != 0
    order = (position + np.arange(old)) % old if wrapped else np.arange(old)

    def grow(rows):
        rows = np.asarray(rows)
        out = np.zeros((capacity,) + rows.shape[1:], rows.dtype)
        out[:old] = rows[order]
        return out

    new_position = size if size < old else old
    return ReplayState(data=jax.tree_util.tree_map(lambda x: jnp.asarray(grow(x)), state.data),
                       insert_position=jnp.asarray(new_position % capacity, jnp.int32),
                       size=jnp.asarray(size, jnp.int32))
