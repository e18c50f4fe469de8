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
        from protosac_jax.envs.gym_envs import GymEnv

        try:
            self.env = GymEnv(env_id).make(render=True, width=size, height=size)
            self.env.reset(seed=0)
            self.env.render()
        except Exception as err:  # noqa: BLE001 - no GL context on this machine
            raise RenderUnavailable(
                f"cannot render {env_id} headless with MUJOCO_GL={os.environ.get('MUJOCO_GL')} "
                f"({type(err).__name__}); try MUJOCO_GL=osmesa") from None
        self.nq = self.env.unwrapped.model.nq

    def __call__(self, state) -> np.ndarray:
        state = np.asarray(state, np.float64)
        self.env.unwrapped.set_state(state[:self.nq], state[self.nq:])
        return self.env.render()

    def close(self):
        self.env.close()


class _MjxStateRenderer:
    """rgb frames of brax MJX states (qpos ++ qvel) with brax's own MuJoCo model, CPU-side."""

    def __init__(self, name: str, size: int = 160):
        import mujoco

        from protosac_jax.envs.mjx_envs import _make

        self.model = _make(name).sys.mj_model
        self.data = mujoco.MjData(self.model)
        try:
            self.renderer = mujoco.Renderer(self.model, size, size)
        except Exception as err:  # noqa: BLE001 - no GL context on this machine
            raise RenderUnavailable(
                f"cannot render {name} headless with MUJOCO_GL={os.environ.get('MUJOCO_GL')} "
                f"({type(err).__name__}); install libosmesa6 and set MUJOCO_GL=osmesa") from None
        self.camera = mujoco.MjvCamera()
        self.camera.type = mujoco.mjtCamera.mjCAMERA_TRACKING
        self.camera.trackbodyid = 1
        self.camera.distance = 3.0 if self.model.nq < 20 else 4.0
        self.camera.elevation = -15.0
        self.camera.azimuth = 90.0
        self._mujoco = mujoco

    def __call__(self, state) -> np.ndarray:
        state = np.asarray(state, np.float64)
        nq = self.model.nq
        self.data.qpos[:] = state[:nq]
        self.data.qvel[:] = state[nq:nq + self.model.nv]
        self._mujoco.mj_forward(self.model, self.data)
        self.renderer.update_scene(self.data, camera=self.camera)
        return self.renderer.render().copy()

    def close(self):
        self.renderer.close()


class _MatplotlibStateRenderer:
    """gymnax states drawn with matplotlib into an rgb array."""

    def __init__(self, draw, size: int = 160):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.draw = draw
        self.fig = plt.figure(figsize=(size / 80, size / 80), dpi=80)
        self.ax = self.fig.add_axes([0, 0, 1, 1])
        self.plt = plt

    def __call__(self, state) -> np.ndarray:
        self.ax.clear()
        self.ax.set_axis_off()
        self.ax.set_aspect("equal")
        self.draw(self.ax, state)
        self.fig.canvas.draw()
        return np.asarray(self.fig.canvas.buffer_rgba())[..., :3].copy()

    def close(self):
        self.plt.close(self.fig)


class FrameSource:
    """`frames(render_state, obs) -> [H, W, 3] uint8`: a real picture of any state the trainer
    stores, for every env it supports (gymnax drawings, MJX and Gymnasium MuJoCo renders from
    qpos/qvel, captured Box2D frames, CarRacing's own pixels)."""

    def __init__(self, spec, size: int = 160):
        self.spec = spec
        self._renderer = None
        if spec.name in DRAWERS:
            self._renderer = _MatplotlibStateRenderer(DRAWERS[spec.name], size)
            self._kind = "state"
        elif spec.backend in ("gymnax", "brax") and ":" in spec.name:
            from protosac_jax.envs import objects  # your own env object: its own render()

            self._renderer = objects.EnvRenderer(spec.name, size)
            self._kind = "state"
        elif spec.backend == "mjx":
            self._renderer = _MjxStateRenderer(spec.name, size)
            self._kind = "state"
        elif spec.render_kind == "mujoco":
            self._renderer = MujocoStateRenderer(spec.env_id, size)
            self._kind = "state"
        elif spec.render_kind == "frames":
            self._kind = "frame"
        elif spec.render_kind == "pixels":
            self._kind = "obs"
        else:
            raise RenderUnavailable(f"{spec.env_id} cannot render frames (no rgb_array mode)")

    def __call__(self, render_state, obs) -> np.ndarray:
        if self._kind == "state":
            return self._renderer(render_state)
        if self._kind == "frame":
            return np.asarray(render_state, np.uint8)
        return np.asarray(obs, np.uint8)[..., -3:]

    def close(self):
        if self._renderer is not None:
            self._renderer.close()


def provenance_arrays(provenance) -> dict:
    """A training state's Provenance as the numpy dict that `load` returns."""
    return {"buffer_index": np.asarray(provenance.buffer_index),
            "render_state": np.asarray(provenance.render_state),
            "obs": np.asarray(provenance.obs),
            "update_step": np.asarray(provenance.update_step)}


def save_prototype_grid(path: Path, loop, ts, usage=None) -> Path:
    """Prototype grid of a training state (see `save_grid`)."""
    return save_grid(path, loop.spec, ts.learner.actor_params["params"],
                     provenance_arrays(ts.provenance), usage)


def prototype_images(spec, provenance, frames: FrameSource | None = None,
                     blank: bool = False) -> list:
    """One picture per prototype; where it has not been projected yet None, or a white tile
    with `blank`. Uses `frames` when given, else a FrameSource of its own."""
    own = frames is None
    frames = FrameSource(spec) if own else frames
    try:
        return [frames(provenance["render_state"][i], provenance["obs"][i])
                if provenance["update_step"][i] >= 0 else  # -1: never chosen
                (np.full((160, 160, 3), 255, np.uint8) if blank else None)
                for i in range(len(provenance["buffer_index"]))]
    finally:
        if own:
            frames.close()


def save_grid(path: Path, spec, actor_params, provenance, usage=None, images=None,
              agreement=None, drift=None) -> Path:
    """One tile per prototype: the real state it is (or was projected onto), its id, its
    action Gaussian (mean +- std per action dim, in [-1, 1] policy units) and, when `usage`
    (share of the evaluated decisions it decides, [K]) is given, its usage, most used first;
    unused prototypes are marked. `agreement` [K] (share of its decisions where its own action
    agrees with the one taken) and `drift` [K] (latent distance between a free prototype and
    the encoding of the state shown) are printed on the tiles when given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = images if images is not None else prototype_images(spec, provenance)
    means = np.tanh(np.asarray(actor_params["proto_means"]))
    stds = np.exp(np.asarray(actor_params["proto_log_stds"]))
    k = len(images)
    cols = min(8, k)
    rows = math.ceil(k / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.7 * cols, (2.0 if drift is None else 2.3) * rows), squeeze=False)
    order = list(range(k)) if usage is None else list(np.argsort(-np.asarray(usage),
                                                                  kind="stable"))
    for slot, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if slot >= k:
            ax.axis("off")
            continue
        i = order[slot]
        gauss = " ".join(f"{m:+.2f}±{s:.2f}" for m, s in zip(means[i, :2], stds[i, :2]))
        if images[i] is not None:
            ax.imshow(images[i])
        else:
            ax.text(0.5, 0.5, "not yet\nprojected", ha="center", va="center",
                    transform=ax.transAxes)
        title = f"p{i}" + (f" use {usage[i]:.0%}" if usage is not None else "")
        if agreement is not None and np.isfinite(agreement[i]):
            title += f" agree {agreement[i]:.0%}"
        if drift is not None:
            title += f"\ndrift {drift[i]:.2f}"
        ax.set_title(f"{title}\n{gauss}", fontsize=6.5)
        if usage is not None and usage[i] < 1.0 / (10 * k):
            for spine in ax.spines.values():
                spine.set_edgecolor("#c0392b")
                spine.set_linewidth(2)
            ax.text(0.5, 0.05, "unused", color="#c0392b", ha="center", fontsize=7,
                    transform=ax.transAxes, fontweight="bold")
    rollouts = np.asarray(provenance["buffer_index"]) == -2  # states of the policy's episodes
    source = ("captured frames" if spec.uses_reservoir else
              "buffer and rollout states" if rollouts.any() else "buffer states")
    fig.suptitle(f"{spec.env_id}: {k} prototypes (real {source}); action mean±std", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
