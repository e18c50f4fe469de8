"""viz.py: grids of real rendered states, action plots, explained videos, the HTML report,
train.py --video-every, baseline runs and bad input."""

import html as html_lib
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from inproc import run_main
from test_cli import run_cli
from tiny import FLAGS as TINY

# the suite's tiny Pendulum run (tests/tiny.py: one compiled program shared by the suite)
TINY_PENDULUM = [*TINY, "--total-steps", "3000", "--learning-starts", "500", "--eval-every",
                 "1000", "--no-progress"]


@pytest.fixture(scope="module")
def pendulum_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("viz") / "run"
    proc = run_main(*TINY_PENDULUM, "--video-every", "1500", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def _check_tiles(images, k):
    assert len(images) == k
    for image in images:
        assert image.dtype == np.uint8 and image.ndim == 3
        assert image.std() > 5  # not blank
    flat = [image.tobytes() for image in images]
    assert len(set(flat)) == k  # no two identical tiles


def _check_export(run, out, k, proc):
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "viz.json").read_text())
    for name in ("prototypes.png", "actions.png", "episode.mp4", "report.html"):
        assert (out / name).is_file(), name
    from protosac_jax import load, render, visualize

    agent = load(run)
    _check_tiles(render.prototype_images(agent.spec, agent.prototypes), k)
    assert visualize.count_video_frames(out / "episode.mp4") == summary["episode_lengths"][0]
    report = (out / "report.html").read_text()
    for i in range(k):
        assert f"id='p{i}'" in report and f"href='#p{i}'" in report
    assert report.count("data:image/") >= k + 2  # grid, actions and every prototype's tile
    assert "src='prototypes" not in report  # self-contained: images embedded
    assert len(summary["usage"]) == k and abs(sum(summary["usage"]) - 1) < 1e-6
    return summary


def test_pendulum_export(pendulum_run, tmp_path):
    out = tmp_path / "viz"
    proc = run_cli("--ckpt", str(pendulum_run), "--out", str(out), "--episodes", "2",
                   script="viz.py")  # the real command (the other exports run in-process)
    summary = _check_export(pendulum_run, out, 8, proc)
    assert summary["episode_lengths"] == [200, 200]
    assert "wrote" in proc.stdout


def test_video_every_records_eval_episodes_during_training(pendulum_run):
    from protosac_jax import visualize

    videos = sorted((pendulum_run / "videos").iterdir())
    # recorded at the end of the first chunk (eval_every 1000) at or past each multiple of 1500
    assert [v.name for v in videos] == ["step_2000.mp4", "step_3000.mp4"]
    assert visualize.count_video_frames(videos[0]) == 200


def test_original_flags_are_aliases(pendulum_run, tmp_path):
    out = tmp_path / "saved"
    proc = run_main("--model_path", str(pendulum_run), "--save_dir", str(out), "--environment",
                   "0", "--episodes", "1", "--no-video", script="viz.py")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "report.html").is_file() and not (out / "episode.mp4").exists()
    proc = run_main("--model_path", str(pendulum_run), "--environment", "2", script="viz.py")
    assert proc.returncode == 2 and "trained on pendulum" in proc.stderr


def test_mjx_export(tmp_path):
    """An MJX run's export (MuJoCo renders of qpos/qvel). inverted_pendulum, not hopper: the
    same code path at a third of the compile time."""
    run = tmp_path / "mjx"
    proc = run_main("--env", "inverted_pendulum", "--num-envs", "16", "--total-steps", "2048",
                   "--learning-starts", "1024", "--eval-every", "1024", "--eval-episodes", "1",
                   "--projection-every", "50", "--batch-size", "32", "--hidden", "16,16",
                   "--num-prototypes", "6", "--latent-dim", "8", "--no-progress",
                   "--out", str(run))
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "viz"
    proc = run_main("--ckpt", str(run), "--out", str(out), "--episodes", "1", script="viz.py")
    _check_export(run, out, 6, proc)


def test_baseline_run_exports_video_and_actions_and_says_why_no_prototypes(tmp_path):
    run = tmp_path / "sac"
    proc = run_main(*TINY_PENDULUM, "--total-steps", "1000", "--baseline", "--out", str(run))
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "viz"
    proc = run_main("--ckpt", str(run), "--out", str(out), "--episodes", "1", script="viz.py")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [line for line in proc.stdout.splitlines() if "need a ProtoSAC" in line]
    assert (out / "episode.mp4").is_file() and (out / "actions.png").is_file()
    assert not (out / "prototypes.png").exists()


@pytest.mark.parametrize("args,needle", [
    ([], "--ckpt"),
    (["--ckpt", "does/not/exist"], "no such run"),
    (["--ckpt", "."], "config.json"),
    (["--ckpt", "RUN", "--episodes", "0"], ">= 1"),
    (["--ckpt", "RUN", "--out", "/proc/protosac-viz"], "cannot write"),
    (["--ckpt", "RUN", "--format", "gif"], "invalid choice"),
    (["--ckpt", "RUN", "--prune", "--prune-share", "1.5"], "--prune-share must be in (0, 1]"),
    (["--ckpt", "RUN", "--prune", "--faithfulness"], "not both"),
    (["--ckpt", "RUN", "--prune", "--keep", "1,x"], "--keep expects"),
])
def test_bad_input_one_line_exit_2(pendulum_run, tmp_path, args, needle):
    args = [str(pendulum_run) if a == "RUN" else a for a in args]
    before = sorted(p.name for p in pendulum_run.iterdir())
    proc = run_main(*args, script="viz.py", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr
    assert sorted(p.name for p in pendulum_run.iterdir()) == before  # nothing written
    assert list(tmp_path.iterdir()) == []


def test_env_that_cannot_render_is_refused(tmp_path, capsys):
    """A Gymnasium env without rgb_array rendering: one line, exit 2, nothing written."""
    import gymnasium

    import protosac_jax
    from protosac_jax.config import PrototypeConfig, SACConfig, TrainConfig
    from protosac_jax.viz_cli import main
    from test_gym_envs import CounterEnv  # noqa: F401 - registers ProtoCounter-v0

    assert "rgb_array" not in gymnasium.make("ProtoCounter-v0").metadata.get("render_modes", [])
    run = tmp_path / "run"
    cfg = TrainConfig(env="ProtoCounter-v0", total_steps=40, learning_starts=20, eval_every=40,
                      eval_episodes=1, log_tensorboard=False,
                      sac=SACConfig(hidden_sizes=(8,), batch_size=4),
                      proto=PrototypeConfig(num_prototypes=2, latent_dim=2,
                                            projection_every=5))
    protosac_jax.train(cfg, out=run, progress=False, quiet=True)
    capsys.readouterr()
    assert main(["--ckpt", str(run), "--out", str(tmp_path / "viz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot render" in err[0]
    assert not (tmp_path / "viz").exists()


CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)


# What a person would see, measured in the page after it loaded: appended to a copy of the
# report, it writes its findings into <pre id="browser-check"> for --dump-dom.
_PAGE_CHECK = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const shown = imgs.filter(i => i.complete && i.naturalWidth > 0 &&
                                 i.getBoundingClientRect().width > 0);
  const usage = document.getElementById('usage');
  const table = usage && usage.nextElementSibling && usage.parentElement.querySelector(
      '#usage ~ table');
  const body = getComputedStyle(document.body);
  const out = {images: imgs.length, shown: shown.length,
               broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt),
               usage_rows: table ? table.rows.length : 0,
               prototype_images: imgs.filter(i => /^p\\d+ prototype state$/.test(i.alt)).length,
               scroll_width: document.documentElement.scrollWidth,
               viewport: window.innerWidth, font_px: parseFloat(body.fontSize)};
  const pre = document.createElement('pre');
  pre.id = 'browser-check';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def _chromium(*args, timeout=120):
    # the flags a closed network needs (no background connections, no first-run work)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update",
             "--disable-sync"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt install "
                    "chromium; .ci/run installs it); the report's browser check needs it")
def test_report_renders_in_headless_chromium(pendulum_run, tmp_path):
    """report.html as a reader opens it, at a laptop width (1366 px): every image decodes
    and is laid out, the prototype usage table is there, nothing overflows sideways."""
    out = tmp_path / "viz"
    proc = run_main("--ckpt", str(pendulum_run), "--out", str(out), "--episodes", "1",
                   "--no-video", script="viz.py")
    assert proc.returncode == 0
    page = tmp_path / "checked.html"
    html = (out / "report.html").read_text()
    page.write_text(html.replace("</body>", _PAGE_CHECK + "</body>") if "</body>" in html
                    else html + _PAGE_CHECK)
    dom = _chromium("--window-size=1366,768", "--virtual-time-budget=10000",
                    f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri())
    found = re.search(r'<pre id="browser-check">(.*?)</pre>', dom.stdout, re.S)
    assert found, dom.stderr[-2000:]
    seen = json.loads(html_lib.unescape(found.group(1)))
    agent_k = json.loads((pendulum_run / "config.json").read_text())["proto"]["num_prototypes"]
    assert seen["broken"] == [] and seen["images"] >= 3
    assert seen["shown"] == seen["images"]  # every image decoded and laid out
    assert seen["prototype_images"] >= 1
    assert seen["usage_rows"] >= 2  # header + at least one prototype
    assert seen["usage_rows"] <= agent_k + 1
    assert seen["scroll_width"] <= seen["viewport"] and seen["font_px"] >= 12
    shot = tmp_path / "report.png"
    _chromium(f"--screenshot={shot}", "--window-size=1366,2000",
              f"--user-data-dir={tmp_path / 'profile2'}", (out / "report.html").as_uri())
    from PIL import Image

    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.shape[1] == 1366 and image.std() > 20  # the page drew images, not a blank


def _deterministic_rollout(agent, seed=0):
    """States and return of one deterministic Pendulum episode played here with the agent's
    own actor on the env (reset from PRNGKey(seed), as viz.py's episodes are)."""
    import jax
    import jax.numpy as jnp

    from protosac_jax import sac
    from protosac_jax.envs import make_env

    env = make_env("pendulum")
    step = jax.jit(env.step)
    act = jax.jit(lambda obs: agent.actor.deterministic(
        agent.params, sac.prepare_obs(agent.learner, obs[None], agent.config.sac))[0])
    key = jax.random.PRNGKey(seed)
    env_state, obs = jax.jit(env.reset)(key)
    states, total = [], 0.0
    for t in range(agent.spec.episode_length):
        states.append(np.asarray(obs))
        result = step(jax.random.fold_in(key, t), env_state, act(obs))
        total += float(result.reward)
        if bool(result.terminated) or bool(result.truncated):
            break
        env_state, obs = result.env_state, result.obs
    return np.stack(states), total


def _deletion_changes(weights, means, deleted_sets):
    """[B, len(sets)] L2 change of tanh(sum_k w_k m_bk) (blend) when each set of prototypes is
    deleted from every state's weights (renormalised over the rest); numpy, float64. `means`
    [B, K, A]: each prototype's action at each state (its head plus its local correction)."""
    blend = lambda w: np.tanh(np.einsum("bk,bka->ba", w, means))  # noqa: E731
    base = blend(weights)
    out = []
    for deleted in deleted_sets:  # deleted: [B, k] prototype indices per state
        w = weights.copy()
        np.put_along_axis(w, deleted, 0.0, axis=-1)
        w /= w.sum(-1, keepdims=True)
        out.append(np.linalg.norm(blend(w) - base, axis=-1))
    return np.stack(out, axis=1)


def test_faithfulness_export(pendulum_run, tmp_path):
    import itertools

    import jax.numpy as jnp

    from protosac_jax import load, sac

    ks = [1, 2, 4]
    out = tmp_path / "faith"
    proc = run_main("--ckpt", str(pendulum_run), "--faithfulness", "--ks", "1,2,4",
                   "--episodes", "1", "--out", str(out), script="viz.py")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "faithfulness.json").read_text())
    assert result["k"] == ks and (out / "faithfulness.png").is_file()
    for key in ("action_change_top", "action_change_random", "return_top", "return_random"):
        assert len(result[key]) == 3 and all(np.isfinite(result[key]))
    assert result["states"] == 200 and result["episodes"] == 1
    assert result["top1_vs_random_ratio"] == pytest.approx(
        result["action_change_top"][0] / result["action_change_random"][0])

    # The full policy's return is the return the agent gets playing that episode by itself.
    agent = load(pendulum_run)
    states, full_return = _deterministic_rollout(agent)
    assert len(states) == 200
    assert result["return_full"] == pytest.approx(full_return, rel=1e-4, abs=1e-3)
    # Every return is a Pendulum return: per-step cost in [0, pi^2 + 0.1 * 8^2 + 0.001 * 2^2]
    worst = -200 * (np.pi ** 2 + 6.4 + 0.004)
    for value in result["return_top"] + result["return_random"] + [result["return_full"]]:
        assert worst - 1e-3 <= value <= 0.0

    # Action changes recomputed here on those states from the actor's weights and means.
    fwd = agent.actor.forward(agent.params, sac.prepare_obs(
        agent.learner, jnp.asarray(states), agent.config.sac))
    weights = np.asarray(fwd.weights, np.float64)
    means = np.broadcast_to(np.asarray(fwd.means, np.float64), weights.shape + fwd.means.shape[1:])
    if fwd.corrections is not None:  # local feedback: prototype k acts m_k + c_bk at state b
        means = means + np.asarray(fwd.corrections, np.float64)
    k_total = weights.shape[1]
    order = np.argsort(-weights, axis=-1, kind="stable")
    for i, k in enumerate(ks):
        top = _deletion_changes(weights, means, [order[:, :k]])[:, 0]
        assert result["action_change_top"][i] == pytest.approx(top.mean(), rel=1e-3, abs=1e-5)
        # k random deletions per state: their mean over all C(K, k) sets, and the noise of
        # one draw per state
        subsets = [np.broadcast_to(np.array(c), (len(states), k))
                   for c in itertools.combinations(range(k_total), k)]
        every = _deletion_changes(weights, means, subsets)  # [B, C(K, k)]
        expected, noise = every.mean(), np.sqrt(every.var(axis=1).sum()) / len(states)
        assert abs(result["action_change_random"][i] - expected) <= 5 * noise + 1e-4, \
            (k, result["action_change_random"][i], expected, noise)
        # deleting the prototypes the decision rests on matters more than deleting any k
        assert result["action_change_top"][i] > expected
    # (how much that matters depends on how well the agent learned: test_learning's 5k run
    # asserts the 3x deletion floor on a trained agent, benchmarks/decisions.py measures it)

    proc = run_main("--ckpt", str(pendulum_run), "--faithfulness", "--ks", "0,99",
                   "--out", str(tmp_path / "bad"), script="viz.py")
    assert proc.returncode == 2 and "--ks needs values in 1..7" in proc.stderr


def test_prune_export_writes_curve_and_a_loadable_pruned_run(pendulum_run, tmp_path):
    out = tmp_path / "prune"
    proc = run_main("--ckpt", str(pendulum_run), "--prune", "--episodes", "1", "--out", str(out),
                   script="viz.py")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "pruning.json").read_text())
    assert (out / "pruning.png").is_file()
    assert result["n_kept"][-1] == 8 and 1 in result["n_kept"] and result["n_at_share"] in \
        result["n_kept"]
    assert len(result["return"]) == len(result["n_kept"]) and all(np.isfinite(result["return"]))
    assert result["usage_kept"][-1] == pytest.approx(1.0)
    assert result["usage_kept"][result["n_kept"].index(result["n_at_share"])] >= 0.95 - 1e-9
    from protosac_jax import load

    pruned = load(out / "pruned")
    assert pruned.config.proto.num_prototypes == result["n_at_share"]
    assert pruned.meta["kept_prototypes"] == result["kept_at_share"]
    # the saved pruned agent plays the same return that was reported for it
    proc = run_main("--ckpt", str(out / "pruned"), "--episodes", "1", "--no-video",
                   "--out", str(tmp_path / "viz"), script="viz.py")
    assert proc.returncode == 0, proc.stderr[-2000:]
    replay = json.loads((tmp_path / "viz" / "viz.json").read_text())
    assert replay["returns"][0] == pytest.approx(result["return_at_share"], abs=1e-3)
    # running --prune again replaces its own previous output
    proc = run_main("--ckpt", str(pendulum_run), "--prune", "--episodes", "1", "--keep", "1",
                   "--out", str(out), script="viz.py")
    assert proc.returncode == 0, proc.stderr[-2000:]
