"""Networks: MLP encoder, twin critic, the baseline squashed-Gaussian actor.

Actors share one small interface so `sac.py` never branches on which one it trains:

* ``init(key, obs) -> params``
* ``samples(params, obs, key) -> (actions[B,S,A], log_probs[B,S], sample_weights[B,S])``:
  S reparameterised samples per state and the weights with which their terms enter the SAC
  losses (S=1, weight 1 for a single Gaussian; see prototype.py for the mixture).
* ``act(params, obs, noise, key) -> actions[B,A]``: exploration action for given N(0,1) noise.
* ``deterministic(params, obs) -> actions[B,A]``: evaluation action.
* ``aux_loss(params, obs) -> (loss, metrics)``: extra actor terms (0 for the baseline).
* ``samples_with_aux(params, obs, key)``: both of the above from one forward pass.

Actors are frozen dataclasses (hashable), so they are static arguments of `jax.jit`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

LOG_2PI = math.log(2.0 * math.pi)


def is_pixels(x) -> bool:
    """uint8 observations with [..., H, W, C] axes are images (static: decided at trace time)."""
    return x.dtype == jnp.uint8 and x.ndim >= 4


class NatureCNN(nn.Module):
    """Mnih et al. 2015's torso, CPU-friendly: [..., H, W, C] uint8 -> [..., features].

    Pixels are scaled by 1/255. The first layer sees non-overlapping 4x4 patches (stride 4, as
    Nature's 8x8/4) computed as reshape + Dense: XLA:CPU runs that ~3x faster than a strided
    conv (benchmarks/RESULTS.md). Then 4x4/2 and 3x3/1 convs with 64 channels, as Nature's.
    """

    patch: int = 4

    @nn.compact
    def __call__(self, x):
        lead = x.shape[:-3]
        x = x.reshape((-1,) + x.shape[-3:]).astype(jnp.float32) / 255.0
        batch, height, width, channels = x.shape
        p = self.patch
        x = x[:, :height - height % p, :width - width % p]  # crop to whole patches
        x = x.reshape(batch, height // p, p, width // p, p, channels)
        x = x.transpose(0, 1, 3, 2, 4, 5).reshape(batch, height // p, width // p, -1)
        x = nn.relu(nn.Dense(32)(x))
        x = nn.relu(nn.Conv(64, (4, 4), strides=(2, 2), padding="VALID")(x))
        x = nn.relu(nn.Conv(64, (3, 3), strides=(1, 1), padding="VALID")(x))
        return x.reshape(lead + (-1,))


class BatchRenorm(nn.Module):
    """Batch renormalisation (Ioffe 2017), as CrossQ's critics use it (Bhatt et al. 2024).

    Training (`train=True`): the features are normalised over every axis but the last. For the
    first `warmup` training calls with the batch's own mean and std (batch norm); after that
    with the batch's statistics corrected towards the running ones,
    x_hat = (x - mu_B) / sigma_B * r + d with r = clip(sigma_B / sigma, 1/r_max, r_max) and
    d = clip((mu_B - mu) / sigma, -d_max, d_max) held constant in the gradient, so the output
    no longer depends on which batch a row came in. Each training call moves the running
    mean and variance (collection "batch_stats") towards the batch's by 1 - momentum.
    Evaluation (`train=False`) normalises with the running statistics and changes nothing.
    A learned scale and bias follow, as in batch norm.
    """

    train: bool = False
    momentum: float = 0.99
    epsilon: float = 1e-3
    r_max: float = 3.0
    d_max: float = 5.0
    warmup: int = 100_000

    @nn.compact
    def __call__(self, x):
        features = x.shape[-1]
        mean = self.variable("batch_stats", "mean", lambda: jnp.zeros(features, jnp.float32))
        var = self.variable("batch_stats", "var", lambda: jnp.ones(features, jnp.float32))
        steps = self.variable("batch_stats", "steps", lambda: jnp.zeros((), jnp.int32))
        scale = self.param("scale", nn.initializers.ones, (features,))
        bias = self.param("bias", nn.initializers.zeros, (features,))
        if self.train and not self.is_initializing():
            axes = tuple(range(x.ndim - 1))
            batch_mean = jnp.mean(x, axis=axes)
            batch_var = jnp.mean(jnp.square(x - batch_mean), axis=axes)
            batch_std = jnp.sqrt(batch_var + self.epsilon)
            running_std = jnp.sqrt(var.value + self.epsilon)
            r = jax.lax.stop_gradient(
                jnp.clip(batch_std / running_std, 1.0 / self.r_max, self.r_max))
            d = jax.lax.stop_gradient(
                jnp.clip((batch_mean - mean.value) / running_std, -self.d_max, self.d_max))
            renorm = steps.value >= self.warmup
            x_hat = (x - batch_mean) / batch_std * jnp.where(renorm, r, 1.0) + \
                jnp.where(renorm, d, 0.0)
            mean.value = self.momentum * mean.value + (1.0 - self.momentum) * \
                jax.lax.stop_gradient(batch_mean)
            var.value = self.momentum * var.value + (1.0 - self.momentum) * \
                jax.lax.stop_gradient(batch_var)
            steps.value = steps.value + 1
        else:
            x_hat = (x - mean.value) / jnp.sqrt(var.value + self.epsilon)
        return x_hat * scale + bias


class MLP(nn.Module):
    """ReLU MLP; the last layer is linear. Pixel inputs go through a NatureCNN first.

    `layer_norm`: LayerNorm between each hidden Dense and its ReLU (Ba et al. 2016), as the
    critics of BRO, SimBa and FastTD3 use it: it bounds the features, so a critic trained at a
    high update ratio or on large batches keeps its Q-values from diverging.
    `batch_renorm`: CrossQ's critic (Bhatt et al. 2024): `BatchRenorm` on the input and after
    each hidden ReLU, in training mode when `train` (statistics of this batch, running ones
    updated), else with the running statistics.
    """

    hidden_sizes: Sequence[int]
    out_dim: int
    layer_norm: bool = False
    zero_out: bool = False  # the last Dense's kernel and bias start at 0
    batch_renorm: bool = False
    train: bool = False

    @nn.compact
    def __call__(self, x):
        if is_pixels(x):
            x = NatureCNN()(x)
        if self.batch_renorm:
            x = BatchRenorm(self.train)(x)
        for width in self.hidden_sizes:
            x = nn.Dense(width)(x)
            if self.layer_norm:
                x = nn.LayerNorm()(x)
            x = nn.relu(x)
            if self.batch_renorm:
                x = BatchRenorm(self.train)(x)
        if self.zero_out:
            return nn.Dense(self.out_dim, kernel_init=nn.initializers.zeros)(x)
        return nn.Dense(self.out_dim)(x)


class PixelQ(nn.Module):
    """Q(s, a) from pixels: NatureCNN(s) ++ a -> MLP."""

    hidden_sizes: Sequence[int]
    layer_norm: bool = False
    outputs: int = 1

    @nn.compact
    def __call__(self, obs, action):
        features = NatureCNN()(obs)
        return MLP(self.hidden_sizes, self.outputs, self.layer_norm)(
            jnp.concatenate([features, action], axis=-1))


class TwinCritic(nn.Module):
    """Two independent Q-networks evaluated as one batched (vmapped) network."""

    hidden_sizes: Sequence[int]
    num_critics: int = 2
    layer_norm: bool = False
    # > 0: each critic outputs logits over this many return atoms ([num_critics, ..., atoms])
    num_atoms: int = 0
    batch_renorm: bool = False  # CrossQ (SACConfig.crossq); see MLP
    train: bool = False  # batch statistics (and their running averages updated) or running ones

    @nn.compact
    def __call__(self, obs, action):
        if is_pixels(obs):
            # Each critic has its own CNN. Not vmapped: a vmapped conv becomes a grouped
            # convolution, which XLA:CPU runs ~5x slower than two plain ones.
            return jnp.stack([self._head(PixelQ(self.hidden_sizes, self.layer_norm,
                                                self.outputs)(obs, action))
                              for _ in range(self.num_critics)])
        x = jnp.concatenate([obs, action], axis=-1)
        ensemble = nn.vmap(
            MLP,
            variable_axes={"params": 0, "batch_stats": 0},
            split_rngs={"params": True},
            in_axes=None,
            out_axes=0,
            axis_size=self.num_critics,
        )
        return self._head(ensemble(self.hidden_sizes, self.outputs, self.layer_norm,
                                   batch_renorm=self.batch_renorm, train=self.train)(x))

    @property
    def outputs(self) -> int:
        return self.num_atoms or 1

    def _head(self, out):
        """[..., 1] -> Q-values [...]; distributional: the [..., atoms] logits unchanged."""
        return out if self.num_atoms else out[..., 0]


def gaussian_log_prob(u, mean, std):
    """Sum over the last axis of log N(u; mean, std)."""
    z = (u - mean) / std
    return jnp.sum(-0.5 * z * z - jnp.log(std) - 0.5 * LOG_2PI, axis=-1)


def tanh_log_det(u):
    """Sum over the last axis of log(1 - tanh(u)^2), computed stably.

    log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u))   (as in SAC's reference code).
    """
    return jnp.sum(2.0 * (math.log(2.0) - u - jax.nn.softplus(-2.0 * u)), axis=-1)


@dataclasses.dataclass(frozen=True)
class GaussianActor:
    """Plain SAC actor: MLP -> (mean, log-std), tanh-squashed (the `--baseline`)."""

    action_dim: int
    hidden_sizes: tuple[int, ...] = (256, 256)
    log_std_min: float = -20.0
    log_std_max: float = 2.0
    layer_norm: bool = False
    zero_init_heads: bool = False  # SACConfig.zero_init_heads

    @property
    def net(self) -> MLP:
        # zero_init_heads: the last Dense gives (mean, log-std), 0 and 0 at the start
        return MLP(self.hidden_sizes, 2 * self.action_dim, self.layer_norm,
                   zero_out=self.zero_init_heads)

    def init(self, key, obs):
        return self.net.init(key, obs)

    def _mean_std(self, params, obs):
        out = self.net.apply(params, obs)
        mean, log_std = jnp.split(out, 2, axis=-1)
        log_std = jnp.clip(log_std, self.log_std_min, self.log_std_max)
        return mean, jnp.exp(log_std)

    def samples(self, params, obs, key):
        mean, std = self._mean_std(params, obs)
        u = mean + std * jax.random.normal(key, mean.shape)
        log_prob = gaussian_log_prob(u, mean, std) - tanh_log_det(u)
        return jnp.tanh(u)[:, None], log_prob[:, None], jnp.ones_like(log_prob)[:, None]

    def samples_with_aux(self, params, obs, key):
        return self.samples(params, obs, key), self.aux_loss(params, obs)

    def act(self, params, obs, noise, key):
        del key
        mean, std = self._mean_std(params, obs)
        return jnp.tanh(mean + std * noise)

    def deterministic(self, params, obs):
        return jnp.tanh(self._mean_std(params, obs)[0])

    def aux_loss(self, params, obs):
        del params, obs
        return jnp.zeros(()), {}
