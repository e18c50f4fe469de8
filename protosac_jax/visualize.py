"""What `viz.py` exports for a run: evaluation episodes with per-step prototype weights, the
prototype grid, action-distribution plots, an explained video and a self-contained HTML report.

Library functions; `viz.py` is a thin CLI over `export`. Everything is headless (matplotlib Agg,
MuJoCo via EGL, Box2D/pygame via SDL's dummy driver, videos via imageio-ffmpeg).
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import html
import io
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from protosac_jax import envs, prototype, render, sac
from protosac_jax.prototype import ProtoActor

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # pygame (Box2D rendering) without a display


class VizError(ValueError):
    """A user error for viz.py (one line, exit 2)."""


@dataclasses.dataclass
class Episode:
    obs: np.ndarray  # [T, *obs_shape]
    render_states: np.ndarray  # [T, ...] what render.FrameSource draws
    actions: np.ndarray  # [T, A] policy actions in [-1, 1]
    weights: np.ndarray | None  # [T, K] prototype weights (None for the baseline)
    rewards: np.ndarray  # [T]

    @property
    def ret(self) -> float:
        return float(np.sum(self.rewards))

    def __len__(self) -> int:
        return len(self.rewards)


def source_row(buffer_index) -> str:
    """Where a prototype's state came from: its replay-buffer row, or a rollout of the
    policy at the re-selection (-2, `--rollout-share`)."""
    index = int(buffer_index)
    return "rollout" if index == -2 else str(index)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _policy(actor, sac_cfg, learner, obs):
    """(deterministic action in [-1, 1], prototype weights or an empty [B, 0])."""
    x = sac.prepare_obs(learner, obs, sac_cfg)
    action = actor.deterministic(learner.actor_params, x)
    if isinstance(actor, ProtoActor):
        return action, actor.forward(learner.actor_params, x).weights
    return action, jnp.zeros((obs.shape[0], 0))


def play_episodes(cfg, spec, actor, learner, num_episodes: int, seed: int = 0,
                  max_steps: int | None = None, policy=None) -> list[Episode]:
    """Deterministic episodes of the policy, recording what viz needs at every step.

    `policy(obs) -> (actions [1, A], weights [1, K])` replaces the agent's own deterministic
    policy (interpret.masked_policy uses it).
    """
    env = envs.make_env_for(cfg)
    max_steps = max_steps or spec.episode_length
    if policy is None:
        policy = lambda obs: _policy(actor, cfg.sac, learner, jnp.asarray(obs)[None])  # noqa: E731
    if getattr(env, "on_host", False):
        play = _play_gymnasium
    else:
        # jitted once for all episodes (a bound method jitted anew is traced anew: an MJX step
        # costs seconds to trace)
        play = functools.partial(_play_device, (jax.jit(env.reset), jax.jit(env.step),
                                                jax.jit(env.render_state)))
    return [play(env, spec, policy, seed + i, max_steps) for i in range(num_episodes)]


def _finish(obs, states, actions, weights, rewards, proto: bool) -> Episode:
    return Episode(obs=np.stack(obs), render_states=np.stack(states),
                   actions=np.stack(actions).astype(np.float32),
                   weights=np.stack(weights) if proto else None,
                   rewards=np.asarray(rewards, np.float32))


def _play_device(jitted, env, spec, policy, seed, max_steps) -> Episode:
    reset, step, render_state = jitted
    key = jax.random.PRNGKey(seed)
    env_state, obs = reset(key)
    rows = ([], [], [], [], [])
    for t in range(max_steps):
        action, weights = policy(obs)
        for row, value in zip(rows, (obs, render_state(env_state), action[0], weights[0])):
            row.append(np.asarray(value))
        result = step(jax.random.fold_in(key, t), env_state, action[0])
        rows[4].append(float(result.reward))
        if bool(result.terminated) or bool(result.truncated):
            break
        env_state, obs = result.env_state, result.obs
    return _finish(*rows, proto=rows[3][0].size > 0)


def _play_gymnasium(env, spec, policy, seed, max_steps) -> Episode:
    from protosac_jax.envs.gym_envs import downscale, rescale_actions

    gym_env = env.make(render=spec.render_kind == "frames")
    low, high = np.asarray(spec.action_low), np.asarray(spec.action_high)
    obs, _ = gym_env.reset(seed=seed)
    rows = ([], [], [], [], [])
    try:
        for _ in range(max_steps):
            obs = np.asarray(obs).astype(spec.obs_dtype)
            if spec.render_kind == "mujoco":
                data = gym_env.unwrapped.data
                state = np.concatenate([data.qpos, data.qvel]).astype(np.float32)
            elif spec.render_kind == "frames":
                state = downscale(gym_env.render())
            else:
                state = np.zeros((1,), np.float32)
            action, weights = policy(obs)
            for row, value in zip(rows, (obs, state, action[0], weights[0])):
                row.append(np.asarray(value))
            obs, reward, terminated, truncated, _ = gym_env.step(
                rescale_actions(np.asarray(action[0]), low, high))
            rows[4].append(float(reward))
            if terminated or truncated:
                break
    finally:
        gym_env.close()
    return _finish(*rows, proto=rows[3][0].size > 0)


# --------------------------------------------------------------------------- statistics
def nearest_evaluated_states(episodes: list[Episode], num_prototypes: int, per_prototype: int):
    """For each prototype, the (episode, step) of the evaluated states it weighs most."""
    index = [(e, t) for e, ep in enumerate(episodes) for t in range(len(ep))]
    weights = np.concatenate([ep.weights for ep in episodes])
    order = np.argsort(-weights, axis=0)[:per_prototype]  # [n, K]
    return [[index[i] for i in order[:, k]] for k in range(num_prototypes)]


def decisions(agent, eps: list[Episode], seed: int = 0) -> dict[str, Any]:
    """interpret.decision_metrics over the evaluated decisions of `eps` (played with `seed`),
    with the same episodes replayed by the nearest-prototype policy and by uniform actions."""
    from protosac_jax import interpret

    cfg, spec = agent.config, agent.spec
    n = len(eps)
    nearest = play_episodes(cfg, spec, agent.actor, agent.learner, n, seed=seed,
                            policy=interpret.nearest_prototype_policy(agent.actor, cfg.sac,
                                                                      agent.learner))
    rand = play_episodes(cfg, spec, agent.actor, agent.learner, n, seed=seed,
                         policy=interpret.random_policy(spec.action_dim,
                                                        cfg.proto.num_prototypes, seed))
    pixels = np.dtype(spec.obs_dtype) == np.uint8 and len(spec.obs_shape) == 3
    extra = {}
    if agent.actor.has_local_gain:
        obs = sac.prepare_obs(agent.learner, jnp.asarray(np.concatenate([e.obs for e in eps])),
                              cfg.sac)
        out = agent.actor.forward(agent.params, obs)
        extra["local_correction"] = float(jnp.mean(jnp.abs(prototype.weighted_corrections(
            out.weights, out.corrections))))
    return extra | interpret.decision_metrics(
        np.concatenate([e.weights for e in eps]),
        np.asarray(agent.params["params"]["proto_means"]),
        np.concatenate([e.actions for e in eps]), np.concatenate([e.obs for e in eps]),
        np.asarray(agent.prototypes["obs"]), pixels,
        return_full=np.mean([e.ret for e in eps]),
        return_nearest=np.mean([e.ret for e in nearest]),
        return_random=np.mean([e.ret for e in rand]))


def prototype_table(agent, eps: list[Episode]) -> dict[str, np.ndarray]:
    """Per prototype: `wins` (evaluated decisions where it is top-1), `usage` (their share),
    `agreement` (share of those where its own action tanh(m_k) is within 0.25 of the action
    taken), `mean_weight`."""
    from protosac_jax.prototype import AGREEMENT_TOLERANCE

    weights = np.concatenate([e.weights for e in eps])
    actions = np.concatenate([e.actions for e in eps])
    own = np.tanh(np.asarray(agent.params["params"]["proto_means"]))
    top1 = np.argmax(weights, axis=-1)
    agrees = np.abs(actions - own[top1]).mean(axis=-1) <= AGREEMENT_TOLERANCE
    k = weights.shape[1]
    wins = np.bincount(top1, minlength=k)
    agreed = np.bincount(top1, weights=agrees.astype(np.float64), minlength=k)
    return {"wins": wins, "usage": wins / max(len(top1), 1),
            "agreement": np.where(wins > 0, agreed / np.maximum(wins, 1), np.nan),
            "mean_weight": weights.mean(axis=0)}


# --------------------------------------------------------------------------- plots
def save_action_plot(path: Path, spec, actor_params, episodes: list[Episode]) -> Path:
    """Per action dim: each prototype's (tanh-squashed) Gaussian density and the policy's
    empirical action histogram over the evaluated episodes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    actions = np.concatenate([e.actions for e in episodes])
    dims = spec.action_dim
    fig, axes = plt.subplots(1, dims, figsize=(4.2 * dims, 3.2), squeeze=False)
    grid = np.linspace(-0.995, 0.995, 400)
    for d, ax in enumerate(axes[0]):
        ax.hist(actions[:, d], bins=40, range=(-1, 1), density=True, color="#95a5a6",
                alpha=0.7, label="policy actions (eval)")
        if actor_params is not None:
            means = np.asarray(actor_params["proto_means"])[:, d]
            stds = np.exp(np.asarray(actor_params["proto_log_stds"]))[:, d]
            u = np.arctanh(grid)
            for k, (m, s) in enumerate(zip(means, stds)):
                density = np.exp(-0.5 * ((u - m) / s) ** 2) / (s * math.sqrt(2 * math.pi))
                ax.plot(grid, density / (1 - grid**2), linewidth=0.8, alpha=0.7,
                        label="prototype Gaussians (squashed)" if k == 0 else None)
        counts, _ = np.histogram(actions[:, d], bins=40, range=(-1, 1), density=True)
        ax.set_ylim(0, 1.5 * max(float(counts.max()), 1.0))  # Gaussians peaking at +-1 clip
        low, high = spec.action_low[d], spec.action_high[d]
        ax.set_title(f"action dim {d} (env range [{low:g}, {high:g}])", fontsize=9)
        ax.set_xlabel("policy action in [-1, 1]")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


# --------------------------------------------------------------------------- video
def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # older Pillow
        return ImageFont.load_default()


def explained_frame(frame: np.ndarray, thumbs, weights, ids, step: int, ret: float,
                    size: int = 240) -> np.ndarray:
    """The env frame with, beside it, the top-k prototypes' thumbnails and weights."""
    from PIL import Image, ImageDraw

    frame_img = Image.fromarray(frame).resize((size, size))
    thumb = size // max(len(ids), 1) if ids else 0
    width = size + (thumb + 110 if ids else 0)
    width += -width % 16  # video codecs want sizes divisible by 16
    canvas = Image.new("RGB", (width, size + 32), "white")
    canvas.paste(frame_img, (0, 0))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, size + 4), f"t={step}  return={ret:.1f}", fill="black", font=_font(12))
    for row, (k, w) in enumerate(zip(ids, weights)):
        y = row * thumb
        canvas.paste(Image.fromarray(thumbs[k]).resize((thumb - 4, thumb - 4)), (size + 4, y + 2))
        x = size + thumb + 4
        draw.text((x, y + 4), f"p{k}", fill="black", font=_font(13))
        draw.rectangle([x, y + 24, x + int(100 * w / max(weights)), y + 36], fill="#2980b9")
        draw.text((x, y + 40), f"w={w:.2f}", fill="black", font=_font(11))
    return np.asarray(canvas)


def save_video(path: Path, episode: Episode, frames: render.FrameSource, thumbs, top_k: int,
               fps: int = 30) -> int:
    """The episode as mp4, each frame explained by its top-k prototypes; returns #frames."""
    import warnings

    import imageio.v2 as imageio

    ret = 0.0
    with warnings.catch_warnings():
        # imageio-ffmpeg starts ffmpeg with subprocess (fork + exec at once); JAX's warning
        # about os.fork in a multithreaded process does not apply to that.
        warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)
        with imageio.get_writer(str(path), fps=fps, codec="libx264", quality=6,
                                macro_block_size=16, ffmpeg_log_level="error") as writer:
            for t in range(len(episode)):
                frame = frames(episode.render_states[t], episode.obs[t])
                if episode.weights is not None and thumbs is not None:
                    ids = [int(i) for i in np.argsort(-episode.weights[t])[:top_k]]
                    weights = [float(episode.weights[t, i]) for i in ids]
                else:
                    ids, weights = [], []
                writer.append_data(explained_frame(frame, thumbs, weights, ids, t, ret))
                ret += float(episode.rewards[t])
    return len(episode)


def count_video_frames(path: Path) -> int:
    import imageio.v2 as imageio

    with imageio.get_reader(str(path)) as reader:
        return sum(1 for _ in reader)


# --------------------------------------------------------------------------- report
def _jpeg_data(image: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _file_data(path: Path) -> str:
    kind = "svg+xml" if path.suffix == ".svg" else "png"
    return f"data:image/{kind};base64," + base64.b64encode(path.read_bytes()).decode()


DECISION_LABELS = [
    ("effective_prototypes", "prototypes that make a decision (mean exp of the weight "
     "entropy; 1 = one prototype decides)", "{:.2f}"),
    ("top1_weight", "weight of the deciding prototype (mean of the largest weight)", "{:.2f}"),
    ("top1_agreement", "decisions where the deciding prototype's own action is within 0.25 of "
     "the action taken", "{:.0%}"),
    ("lookalike", "how alike the deciding prototype's state is: share of evaluated states "
     "farther from the decision's state than it (median; 1 = the most alike)", "{:.2f}"),
    ("return_full", "return of the policy", "{:.1f}"),
    ("return_nearest_prototype", "return when each step acts as its deciding prototype alone",
     "{:.1f}"),
    ("return_random", "return of uniform random actions", "{:.1f}"),
    ("nearest_prototype_score", "(nearest - random) / (full - random): 1 = the prototypes alone "
     "play as well as the policy", "{:.2f}"),
    ("local_correction", "how far the prototypes' local feedback (--local-gain) moves the "
     "action from their own actions (mean |sum_k w_k c_k|, pre-squash)", "{:.3f}"),
]


def _decisions_html(decisions: dict[str, Any]) -> str:
    rows = []
    for key, label, fmt in DECISION_LABELS:
        if key == "local_correction" and key not in decisions:
            continue  # a constant action per prototype: nothing to report
        value = decisions.get(key)
        shown = "—" if value is None else fmt.format(value)
        rows.append(f"<tr><th style='text-align:left'>{html.escape(label)}</th>"
                    f"<td>{shown}</td><td><code>{key}</code></td></tr>")
    return ("<h2 id='decisions'>Can you read its decisions?</h2>"
            f"<p>Over {decisions.get('decisions', '?')} evaluated decisions:</p>"
            "<table>" + "".join(rows) + "</table>")


def save_report(path: Path, agent, episodes, files: dict[str, Path], usage, thumbs,
                nearest, frames: render.FrameSource | None, decisions=None,
                table=None) -> Path:
    """Self-contained HTML (images embedded as data URIs)."""
    esc = html.escape
    spec, cfg, meta = agent.spec, agent.config, agent.meta
    returns = [e.ret for e in episodes]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>protosac-jax report: {esc(spec.env_id)}</title><style>",
        "body{font-family:sans-serif;margin:24px;max-width:1200px;color:#222}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;"
        "font-size:13px;text-align:right}img{max-width:100%}.tiles img{width:120px;"
        "margin:2px;border:1px solid #999}.proto{border-top:1px solid #ddd;padding:8px 0}"
        ".unused{color:#c0392b;font-weight:bold}",
        "</style></head><body>",
        f"<h1>{esc(spec.env_id)}: {esc(cfg.algo)} (seed {cfg.seed})</h1>",
        f"<p>{meta.get('env_steps', '?')} env steps, {meta.get('updates', '?')} updates. "
        f"Evaluation ({len(episodes)} deterministic episodes): mean return "
        f"<b>{np.mean(returns):.1f}</b> ± {np.std(returns):.1f} "
        f"(episodes: {', '.join(f'{r:.1f}' for r in returns)}).</p>",
    ]
    if "video" in files:
        parts.append(f"<p>Video of episode 0 with its top prototypes per frame: "
                     f"<a href='{esc(files['video'].name)}'>{esc(files['video'].name)}</a></p>")
    if decisions is not None:
        parts.append(_decisions_html(decisions))
    if usage is not None:
        params = agent.params["params"]
        means = np.tanh(np.asarray(params["proto_means"]))
        stds = np.exp(np.asarray(params["proto_log_stds"]))
        prov = agent.prototypes
        parts.append(
            "<h2 id='usage'>Prototypes by use</h2><p>Which prototype decides each evaluated "
            "step (its top-1 weight), and whether the prototype's own action agrees with the "
            "action taken there (within 0.25, in [-1, 1] units). Most used first.</p>"
            "<table><tr><th>prototype</th><th>decides (top-1 share)</th><th>states won</th>"
            "<th>action agrees</th><th>mean weight</th><th>its action mean ± std</th>"
            "<th>source row</th><th>chosen at update</th></tr>")
        k_total = len(usage)
        for k in np.argsort(-table["wins"], kind="stable"):
            flag = " <span class='unused'>unused</span>" if usage[k] < 1 / (10 * k_total) else ""
            gauss = ", ".join(f"{m:+.2f}±{s:.2f}" for m, s in zip(means[k], stds[k]))
            agree = "—" if table["wins"][k] == 0 else f"{table['agreement'][k]:.0%}"
            parts.append(f"<tr><td><a href='#p{k}'>p{k}</a>{flag}</td><td>{usage[k]:.1%}</td>"
                         f"<td>{int(table['wins'][k])}</td><td>{agree}</td>"
                         f"<td>{table['mean_weight'][k]:.3f}</td><td>{gauss}</td>"
                         f"<td>{source_row(prov['buffer_index'][k])}</td>"
                         f"<td>{int(prov['update_step'][k])}</td></tr>")
        parts.append("</table>")
    if "prototypes" in files:
        parts.append("<h2 id='grid'>Prototype states</h2><p>Each tile is the real state the "
                     "prototype is (source \"states\": the prototype is its encoding) or was "
                     "last projected onto (source \"free\"), with its action Gaussian and "
                     "usage. Its state comes from the replay buffer, or (source row "
                     "\"rollout\", --rollout-share) from a deterministic episode of the policy "
                     "run when the prototypes were chosen.</p>"
                     f"<img alt='prototype grid' src='{_file_data(files['prototypes'])}'>")
    parts.append("<h2 id='actions'>Action distributions</h2>"
                 f"<img alt='action distributions' src='{_file_data(files['actions'])}'>")
    if usage is not None:
        parts.append("<h2>Per prototype</h2>")
        for k in np.argsort(-table["wins"], kind="stable"):
            agree = "" if table["wins"][k] == 0 else \
                f", its action agrees in {table['agreement'][k]:.0%} of them"
            parts.append(f"<div class='proto' id='p{k}'><h3>p{k}: decides "
                         f"{usage[k]:.1%} of the evaluated steps{agree}</h3>"
                         "<div class='tiles'>")
            if thumbs is not None and thumbs[k] is not None:
                parts.append(f"<img alt='p{k} prototype state' src='{_jpeg_data(thumbs[k])}'>")
            parts.append("</div><p>Evaluated states that weigh it most:</p><div class='tiles'>")
            for e, t in nearest[k]:
                w = episodes[e].weights[t, k]
                image = frames(episodes[e].render_states[t], episodes[e].obs[t])
                parts.append(f"<img alt='p{k} near state' title='episode {e} step {t} "
                             f"w={w:.2f}' src='{_jpeg_data(image)}'>")
            parts.append("</div></div>")
    parts.append("</body></html>")
    Path(path).write_text("\n".join(parts), encoding="utf-8")
    return Path(path)


# --------------------------------------------------------------------------- export
def export(agent, out: Path, episodes: int = 5, top_k: int = 3, fmt: str = "png",
           video: bool = True, seed: int = 0, log=print) -> dict[str, Any]:
    """Everything viz.py writes, into `out`; returns paths and figures (timings, returns)."""
    t0 = time.perf_counter()
    spec, cfg = agent.spec, agent.config
    frames = render.FrameSource(spec)  # RenderUnavailable (viz.py: one line, exit 2)
    try:
        eps = play_episodes(cfg, spec, agent.actor, agent.learner, episodes, seed=seed)
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        files: dict[str, Path] = {}
        usage = thumbs = nearest = decided = table = None
        if agent.is_proto:
            k = cfg.proto.num_prototypes
            table = prototype_table(agent, eps)
            usage = table["usage"]
            decided = decisions(agent, eps, seed)
            nearest = nearest_evaluated_states(eps, k, per_prototype=5)
            thumbs = render.prototype_images(spec, agent.prototypes, frames, blank=True)
            drift = None
            if not agent.actor.states_source:  # free prototypes: how far each is from its tile
                shown = sac.prepare_obs(agent.learner, jnp.asarray(agent.prototypes["obs"]),
                                        cfg.sac)
                drift = np.asarray(prototype.drift(agent.actor, agent.params, shown))
            files["prototypes"] = render.save_grid(
                out / f"prototypes.{fmt}", spec, agent.params["params"], agent.prototypes,
                usage, images=thumbs, agreement=table["agreement"], drift=drift)
        else:
            log("note: prototype views need a ProtoSAC checkpoint; this is a --baseline (plain "
                "SAC) run, so only the video and action plots are exported")
        files["actions"] = save_action_plot(out / f"actions.{fmt}", spec,
                                            agent.params["params"] if agent.is_proto else None,
                                            eps)
        if video:
            files["video"] = out / "episode.mp4"
            save_video(files["video"], eps[0], frames, thumbs, top_k)
        files["report"] = save_report(out / "report.html", agent, eps, files, usage, thumbs,
                                      nearest, frames, decided, table)
    finally:
        frames.close()
    summary = {"returns": [e.ret for e in eps], "episode_lengths": [len(e) for e in eps],
               "files": {k: str(v) for k, v in files.items() if v is not None},
               "usage": None if usage is None else usage.tolist(),
               "decisions": decided,
               "wall_s": time.perf_counter() - t0}
    (out / "viz.json").write_text(json.dumps(summary, indent=2))
    return summary


# --------------------------------------------------------------------------- faithfulness
def export_faithfulness(agent, out: Path, ks=(1, 2, 4, 8), episodes: int = 3, seed: int = 0,
                        fmt: str = "png") -> dict[str, Any]:
    """The deletion test (interpret.py) on the states of `episodes` evaluation episodes:
    faithfulness.json (k, action_change_top/random, return_top/random, return_full) and
    faithfulness.png."""
    from protosac_jax import interpret

    t0 = time.perf_counter()
    spec, cfg = agent.spec, agent.config
    k_max = cfg.proto.num_prototypes
    ks = [int(k) for k in ks if 0 < int(k) < k_max]
    if not ks:
        raise VizError(f"--ks needs values in 1..{k_max - 1}")
    eps = play_episodes(cfg, spec, agent.actor, agent.learner, episodes, seed=seed)
    obs = sac.prepare_obs(agent.learner, jnp.asarray(np.concatenate([e.obs for e in eps])),
                          cfg.sac)
    result = {"k": ks, **interpret.action_change_curves(agent.actor, agent.params, obs, ks, seed),
              "return_full": float(np.mean([e.ret for e in eps])), "return_top": [],
              "return_random": [], "episodes": episodes, "states": int(obs.shape[0])}
    for k in ks:
        for mode in ("top", "random"):
            policy = interpret.masked_policy(agent.actor, cfg.sac, agent.learner, k, mode, seed)
            result[f"return_{mode}"].append(_mean_return(agent, episodes, seed, policy))
    top, rand = result["action_change_top"], result["action_change_random"]
    result["top1_vs_random_ratio"] = top[0] / max(rand[0], 1e-12) if ks[0] == 1 else None
    result["wall_s"] = time.perf_counter() - t0
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "faithfulness.json").write_text(json.dumps(result, indent=2))
    _faithfulness_plot(out / f"faithfulness.{fmt}", spec, result)
    return result


def _mean_return(agent, episodes: int, seed: int, policy=None) -> float:
    """Mean return of `episodes` deterministic episodes (of `policy`, if given)."""
    played = play_episodes(agent.config, agent.spec, agent.actor, agent.learner, episodes,
                           seed=seed, policy=policy)
    return float(np.mean([e.ret for e in played]))


def export_pruning(agent, out: Path, share: float = 0.95, ns=None, episodes: int = 3,
                   seed: int = 0, fmt: str = "png", pruned_dir: Path | None = None):
    """Prune to the most-used prototypes and measure what it costs.

    Usage = each prototype's share of all weight over the states of `episodes` evaluation
    episodes (interpret.usage_mass). For every n in `ns` (default 1, 2, 4, ... < K, the n that
    carries `share` of the usage, and K) the agent keeping only its n most-used prototypes is
    built (interpret.prune_agent) and played; pruning.json / pruning.png hold return vs n. The
    agent pruned at `share` is saved as an inference-only run in `pruned_dir`
    (default <out>/pruned), loadable with `protosac_jax.load` and viz.py.
    """
    from protosac_jax import checkpoint, interpret

    t0 = time.perf_counter()
    if not 0.0 < share <= 1.0:
        raise VizError(f"--prune-share must be in (0, 1], got {share}")
    k_max = agent.config.proto.num_prototypes
    eps = play_episodes(agent.config, agent.spec, agent.actor, agent.learner, episodes,
                        seed=seed)
    usage = interpret.usage_mass(np.concatenate([e.weights for e in eps]))
    order = np.argsort(-usage, kind="stable")
    at_share = interpret.keep_for_share(usage, share)
    if ns is None:
        ns = [2 ** i for i in range(k_max.bit_length()) if 2 ** i < k_max]
    ns = sorted({int(n) for n in ns if 0 < int(n) <= k_max} | {len(at_share), k_max})
    returns = []
    for n in ns:
        returns.append(float(np.mean([e.ret for e in eps])) if n == k_max
                       else _mean_return(interpret.prune_agent(agent, order[:n]),
                                            episodes, seed))
    pruned = interpret.prune_agent(agent, at_share)
    pruned_dir = Path(pruned_dir) if pruned_dir is not None else Path(out) / "pruned"
    checkpoint.save_agent(pruned_dir, pruned)
    full = returns[-1]
    result = {
        "n_kept": ns, "return": returns, "return_full": full,
        "usage_kept": [float(usage[order[:n]].sum()) for n in ns],
        "share": share, "n_at_share": int(len(at_share)),
        "return_at_share": returns[ns.index(len(at_share))],
        "kept_at_share": at_share.tolist(), "usage": usage.tolist(),
        "pruned_dir": str(pruned_dir), "episodes": episodes,
        "states": int(sum(len(e.obs) for e in eps)), "num_prototypes": k_max,
    }
    result["relative_return_change_at_share"] = (
        (result["return_at_share"] - full) / max(abs(full), 1e-12))
    result["wall_s"] = time.perf_counter() - t0
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pruning.json").write_text(json.dumps(result, indent=2))
    _pruning_plot(out / f"pruning.{fmt}", agent.spec, result)
    return result


def _pruning_plot(path: Path, spec, result) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    a.plot(result["n_kept"], result["return"], "o-")
    a.axhline(result["return_full"], color="gray", linewidth=1, label="all prototypes")
    a.axvline(result["n_at_share"], color="tab:red", linewidth=1, linestyle=":",
              label=f"{result['share']:.0%} of usage")
    a.set_xscale("log", base=2)
    a.set_xlabel("prototypes kept (most used first)")
    a.set_ylabel(f"return ({result['episodes']} episodes)")
    a.legend(fontsize=8)
    usage = np.sort(np.asarray(result["usage"]))[::-1]
    b.bar(np.arange(1, len(usage) + 1), usage)
    b.set_xlabel("prototype rank by usage")
    b.set_ylabel("usage (share of weight)")
    fig.suptitle(f"{spec.env_id}: pruning", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _faithfulness_plot(path: Path, spec, result) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    a.plot(result["k"], result["action_change_top"], "o-", label="delete top-k")
    a.plot(result["k"], result["action_change_random"], "s--", label="delete k random")
    a.set_xlabel("prototypes deleted (k)")
    a.set_ylabel("mean L2 action change")
    a.legend(fontsize=8)
    b.plot(result["k"], result["return_top"], "o-", label="delete top-k")
    b.plot(result["k"], result["return_random"], "s--", label="delete k random")
    b.axhline(result["return_full"], color="gray", linewidth=1, label="all prototypes")
    b.set_xlabel("prototypes deleted (k)")
    b.set_ylabel(f"return ({result['episodes']} episodes)")
    b.legend(fontsize=8)
    fig.suptitle(f"{spec.env_id}: deletion test", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
