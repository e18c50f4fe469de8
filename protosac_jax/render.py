"""Drawing real env states (the states prototypes were projected onto).

gymnax classic control is drawn with matplotlib from the stored render state, following the
geometry of Gymnasium's renderers (Pendulum: rod end at (-sin th, cos th), th = 0 upright;
MountainCar: hill y = 0.45 sin(3x) + 0.55, flag at x = 0.45). Gymnasium envs: MuJoCo states
are set from qpos/qvel and rendered by the env (headless: MUJOCO_GL=egl by default), Box2D
states are the frames captured with them, pixel envs show the observation's newest frame.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np


class RenderUnavailable(RuntimeError):
    """This env's states cannot be drawn (yet)."""


def _draw_pendulum(ax, state):
    theta, _theta_dot, last_u = (float(x) for x in state[:3])
    x, y = -math.sin(theta), math.cos(theta)
    ax.plot([0, x], [0, y], color="#c0392b", linewidth=6, solid_capstyle="round")
    ax.add_patch(__import__("matplotlib.patches", fromlist=["Circle"]).Circle(
        (0, 0), 0.06, color="black"))
    if abs(last_u) > 1e-3:  # torque of the action that led here, as an arc
        arc = np.linspace(0, 0.9 * math.pi * min(abs(last_u) / 2.0, 1.0), 20) * np.sign(last_u)
        ax.plot(0.35 * np.cos(arc + math.pi / 2), 0.35 * np.sin(arc + math.pi / 2),
                color="#2c3e50", linewidth=1.5)
    ax.set_xlim(-1.2, 1.2)
    ax.set_ylim(-1.2, 1.2)


def _draw_mountaincar(ax, state):
    position = float(state[0])
    xs = np.linspace(-1.2, 0.6, 200)
    ax.plot(xs, 0.45 * np.sin(3 * xs) + 0.55, color="black", linewidth=1.5)
    ax.plot([0.45, 0.45], [0.45 * math.sin(1.35) + 0.55, 1.1], color="#2c3e50")
    ax.fill([0.45, 0.55, 0.45], [1.1, 1.05, 1.0], color="#f1c40f")
    ax.plot([position], [0.45 * math.sin(3 * position) + 0.55 + 0.04], "s", color="#c0392b",
            markersize=9)
    ax.set_xlim(-1.25, 0.65)
    ax.set_ylim(0.0, 1.2)


DRAWERS = {"pendulum": _draw_pendulum, "mountaincar": _draw_mountaincar}


class MujocoStateRenderer:
    """rgb frames of Gymnasium MuJoCo states given as qpos ++ qvel."""

    def __init__(self, env_id: str, size: int = 160):
        os.environ.setdefault("MUJOCO_GL", "egl")
        from protosac_jax.envs.gym_envs import GymEnv

        try:
            self.env = GymEnv(env_id).make(render=True, width=size, height=size)
            self.env.reset(seed=0)
            self.env.render()
        except Exception as err:  # noqa: BLE001 - no GL context on this machine
            raise RenderUnavailable(
                f"cannot render {env_id} headless with MUJOCO_GL={os.environ['MUJOCO_GL']} "
                f"({type(err).__name__}); try MUJOCO_GL=osmesa") from None
        self.nq = self.env.unwrapped.model.nq

    def __call__(self, state) -> np.ndarray:
        state = np.asarray(state, np.float64)
        self.env.unwrapped.set_state(state[:self.nq], state[self.nq:])
        return self.env.render()

    def close(self):
        self.env.close()


def state_drawer(spec):
    """drawer(ax, render_state, obs) for this env's states, or RenderUnavailable."""
    if spec.name in DRAWERS:
        draw = DRAWERS[spec.name]
        return lambda ax, render, obs: draw(ax, render)
    if spec.render_kind == "frames":
        return lambda ax, render, obs: ax.imshow(render)
    if spec.render_kind == "pixels":
        return lambda ax, render, obs: ax.imshow(np.asarray(obs)[..., -3:])
    if spec.render_kind == "mujoco":
        renderer = MujocoStateRenderer(spec.env_id)
        return lambda ax, render, obs: ax.imshow(renderer(render))
    raise RenderUnavailable(f"drawing {spec.name} states is not supported yet")


def save_prototype_grid(path: Path, loop, ts) -> Path:
    """One tile per prototype: its real state, id, and action Gaussian (mean +- std)."""
    drawer = state_drawer(loop.spec)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = ts.learner.actor_params["params"]
    means = np.tanh(np.asarray(params["proto_means"]))
    stds = np.exp(np.asarray(params["proto_log_stds"]))
    index = np.asarray(ts.provenance.buffer_index)
    render_state = np.asarray(ts.provenance.render_state)
    proto_obs = np.asarray(ts.provenance.obs)
    k = len(index)
    cols = min(8, k)
    rows = math.ceil(k / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.8 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal")
        if i >= k:
            ax.axis("off")
            continue
        if index[i] >= 0:
            drawer(ax, render_state[i], proto_obs[i])
            title = f"p{i} a={means[i, 0]:+.2f}±{stds[i, 0]:.2f}"
        else:
            ax.text(0.5, 0.5, "not yet\nprojected", ha="center", va="center",
                    transform=ax.transAxes)
            title = f"p{i}"
        ax.set_title(title, fontsize=7)
    source = "captured frames" if loop.spec.uses_reservoir else "buffer states"
    fig.suptitle(f"{loop.spec.env_id}: {k} prototypes (real {source})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
