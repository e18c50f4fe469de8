"""viz.py: grids of real rendered states, action plots, explained videos, the HTML report,
train.py --video-every, baseline runs and bad input."""

import json
import shutil
import subprocess

import numpy as np
import pytest

from test_cli import run_cli

TINY_PENDULUM = ["--env", "pendulum", "--total-steps", "3000", "--learning-starts", "500",
                 "--eval-every", "1000", "--eval-episodes", "2", "--num-prototypes", "8",
                 "--projection-every", "500", "--no-progress"]


@pytest.fixture(scope="module")
def pendulum_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("viz") / "run"
    proc = run_cli(*TINY_PENDULUM, "--video-every", "1500", "--out", str(out))
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
                   script="viz.py")
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
    proc = run_cli("--model_path", str(pendulum_run), "--save_dir", str(out), "--environment",
                   "0", "--episodes", "1", "--no-video", script="viz.py")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "report.html").is_file() and not (out / "episode.mp4").exists()
    proc = run_cli("--model_path", str(pendulum_run), "--environment", "2", script="viz.py")
    assert proc.returncode == 2 and "trained on pendulum" in proc.stderr


def test_hopper_mjx_export(tmp_path):
    run = tmp_path / "hopper"
    proc = run_cli("--env", "hopper", "--num-envs", "16", "--total-steps", "2048",
                   "--learning-starts", "1024", "--eval-every", "1024", "--eval-episodes", "1",
                   "--projection-every", "50", "--batch-size", "32", "--hidden", "16,16",
                   "--num-prototypes", "6", "--latent-dim", "8", "--no-progress",
                   "--out", str(run))
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "viz"
    proc = run_cli("--ckpt", str(run), "--out", str(out), "--episodes", "1", script="viz.py")
    _check_export(run, out, 6, proc)


def test_baseline_run_exports_video_and_actions_and_says_why_no_prototypes(tmp_path):
    run = tmp_path / "sac"
    proc = run_cli(*TINY_PENDULUM, "--total-steps", "1000", "--baseline", "--out", str(run))
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "viz"
    proc = run_cli("--ckpt", str(run), "--out", str(out), "--episodes", "1", script="viz.py")
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
    proc = run_cli(*args, script="viz.py", cwd=tmp_path)
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


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt install "
                    "chromium); the report's browser check needs it")
def test_report_renders_in_headless_chromium(pendulum_run, tmp_path):
    out = tmp_path / "viz"
    proc = run_cli("--ckpt", str(pendulum_run), "--out", str(out), "--episodes", "1",
                   "--no-video", script="viz.py")
    assert proc.returncode == 0
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                    f"--screenshot={shot}", "--window-size=1280,2000",
                    (out / "report.html").as_uri()], check=True, timeout=120,
                   capture_output=True)
    from PIL import Image

    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.shape[0] >= 1000 and image.std() > 20  # the page drew images, not a blank


def test_faithfulness_export(pendulum_run, tmp_path):
    out = tmp_path / "faith"
    proc = run_cli("--ckpt", str(pendulum_run), "--faithfulness", "--ks", "1,2,4",
                   "--episodes", "1", "--out", str(out), script="viz.py")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "faithfulness.json").read_text())
    assert result["k"] == [1, 2, 4] and (out / "faithfulness.png").is_file()
    for key in ("action_change_top", "action_change_random", "return_top", "return_random"):
        assert len(result[key]) == 3 and all(np.isfinite(result[key]))
    assert result["states"] == 200
    proc = run_cli("--ckpt", str(pendulum_run), "--faithfulness", "--ks", "0,99",
                   "--out", str(tmp_path / "bad"), script="viz.py")
    assert proc.returncode == 2 and "--ks needs values in 1..7" in proc.stderr


def test_prune_export_writes_curve_and_a_loadable_pruned_run(pendulum_run, tmp_path):
    out = tmp_path / "prune"
    proc = run_cli("--ckpt", str(pendulum_run), "--prune", "--episodes", "1", "--out", str(out),
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
    proc = run_cli("--ckpt", str(out / "pruned"), "--episodes", "1", "--no-video",
                   "--out", str(tmp_path / "viz"), script="viz.py")
    assert proc.returncode == 0, proc.stderr[-2000:]
    replay = json.loads((tmp_path / "viz" / "viz.json").read_text())
    assert replay["returns"][0] == pytest.approx(result["return_at_share"], abs=1e-3)
    # running --prune again replaces its own previous output
    proc = run_cli("--ckpt", str(pendulum_run), "--prune", "--episodes", "1", "--keep", "1",
                   "--out", str(out), script="viz.py")
    assert proc.returncode == 0, proc.stderr[-2000:]
