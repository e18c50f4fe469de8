"""Faults through the real CLI: a full disk, kill -9 during a checkpoint write, SIGTERM during
evaluation, damaged checkpoint files (impossible hyper-parameters: test_cli's bad-input table,
and the Python API here).

Each case checks what the user sees (exit code, the one stderr line, no traceback) and that
the last good checkpoint loads and resumes exactly: the resumed run's final checkpoint equals,
leaf for leaf, that of the same command run without the fault (`uninterrupted`).

Faults that cannot be produced on demand from outside are injected in the process itself by
a wrapper (`_injected`) that patches one Orbax/loop function and then runs train.py's own
`main`: Orbax's rename that commits a step (kill -9 right before it, or an ENOSPC raised in
its place), and the host evaluation (SIGTERM sent at its start). The full disk is also real:
a 16 MiB tmpfs filled up, where the machine lets us mount one (root, as here and in CI).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import protosac_jax
from protosac_jax import checkpoint, trainer
from tiny import FLAGS as TINY

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}
# the suite's tiny Pendulum run (tests/tiny.py; the shape is not the point here), saves at
# 300/600/900/1200
FLAGS = [*TINY, "--learning-starts", "300", "--eval-every", "300", "--save-every", "300",
         "--no-progress", "--no-tensorboard"]


def train_cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=600)


def _injected(patch: str, *args):
    """train.py's main with `patch` (Python source) applied first, in a fresh process."""
    script = ("import sys\n" + patch + "\nfrom protosac_jax.cli import main\n"
              f"sys.exit(main({list(args)!r}))\n")
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=600)


# Orbax commits a step by renaming <step>.orbax-checkpoint-tmp to <step> in this coroutine.
_COMMIT = ("from orbax.checkpoint._src.path import atomicity as A\n"
           "_finalize = A.AtomicRenameTemporaryPath.finalize\n"
           "async def finalize(self):\n"
           "    if self._final_path.name == '{step}' and self._final_path.parent.name == "
           "'latest':\n"
           "        {action}\n"
           "    return await _finalize(self)\n"
           "A.AtomicRenameTemporaryPath.finalize = finalize\n")
KILL = _COMMIT.format(step=900, action="import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
ENOSPC = _COMMIT.format(step=900, action="import errno, os; raise OSError(errno.ENOSPC, "
                        "os.strerror(errno.ENOSPC), str(self._tmp_path))")


def learner_leaves(run):
    ts, _ = checkpoint.restore_train_state(run, trainer.make_loop(
        checkpoint.read_config(run)), step=1200)
    return jax.tree_util.tree_leaves((ts.learner, ts.provenance, ts.buffer, ts.rng))


def assert_same_run(a, b):
    la, lb = learner_leaves(a), learner_leaves(b)
    assert len(la) == len(lb)
    differ = sum(not np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))
    assert differ == 0, f"{differ} of {len(la)} leaves differ"


def error_lines(stderr):
    lines = [x for x in stderr.strip().splitlines() if not x.startswith("replay buffer:")]
    assert "Traceback" not in stderr and "Exception" not in stderr, stderr
    return lines


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("faults") / "clean"
    proc = train_cli(*FLAGS, "--total-steps", "1200", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


def test_kill_9_during_a_checkpoint_write_resumes_from_the_last_committed_step(
        tmp_path, uninterrupted):
    run = tmp_path / "run"
    proc = _injected(KILL, *FLAGS, "--total-steps", "1200", "--out", str(run))
    assert proc.returncode == -signal.SIGKILL
    assert checkpoint.committed_steps(run) == [600, 300]  # 900 never committed
    assert protosac_jax.load(run).meta["env_steps"] == 600
    proc = train_cli("--resume", str(run), "--total-steps", "1200", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert_same_run(run, uninterrupted)
    steps = [json.loads(x)["env_steps"] for x in (run / "metrics.jsonl").read_text().split("\n")
             if x]
    assert steps == [300, 600, 900, 1200]  # the dead run's line for 900 was replaced


def _assert_full_disk_then_resume(proc, run, uninterrupted, free=lambda: None):
    assert proc.returncode == 1, proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("train.py: error: cannot write checkpoint ")
    assert "No space left on device" in lines[0]
    assert "last committed checkpoint is step 600" in lines[0]
    assert checkpoint.committed_steps(run)[0] == 600
    assert protosac_jax.load(run).meta["env_steps"] == 600  # never a half-written step
    free()
    proc = train_cli("--resume", str(run), "--total-steps", "1200", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert_same_run(run, uninterrupted)


def test_write_error_in_a_checkpoint_save_is_one_line_and_resumable(tmp_path, uninterrupted):
    run = tmp_path / "run"
    proc = _injected(ENOSPC, *FLAGS, "--total-steps", "1200", "--out", str(run))
    _assert_full_disk_then_resume(proc, run, uninterrupted)


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); the injected ENOSPC test covers "
                    "the same path")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_disk_that_fills_mid_run(small_disk, uninterrupted):
    run = small_disk / "run"
    proc = train_cli(*FLAGS, "--total-steps", "600", "--out", str(run), "--quiet")
    assert proc.returncode == 0, proc.stderr
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    filler = small_disk / "filler"
    with open(filler, "wb") as f:  # leave 40 KiB: config and logs fit, a checkpoint does not
        f.write(b"\0" * (free - 40 * 1024))
    proc = train_cli("--resume", str(run), "--total-steps", "1200", "--no-progress")
    checkpoint.read_config(run)  # config.json (rewritten by the resume) is whole
    _assert_full_disk_then_resume(proc, run, uninterrupted, free=filler.unlink)
    # viz.py onto a full disk: one line, exit 1
    with open(filler, "wb") as f:
        f.write(b"\0" * (os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize))
    viz = subprocess.run([sys.executable, str(ROOT / "viz.py"), "--ckpt", str(run),
                          "--episodes", "1", "--no-video", "--quiet"], cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=600)
    assert viz.returncode == 1, viz.stderr
    lines = error_lines(viz.stderr)
    assert len(lines) == 1 and lines[0].startswith("viz.py: error: cannot write ")
    assert "No space left on device" in lines[0]


def test_a_failed_metrics_write_is_one_line_and_keeps_the_checkpoint(tmp_path, uninterrupted):
    """metrics.jsonl on a device that is always full (/dev/full: every write is ENOSPC)."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    run = shutil.copytree(uninterrupted, tmp_path / "run")
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").symlink_to("/dev/full")
    proc = train_cli("--resume", str(run), "--total-steps", "1500", "--no-progress")
    assert proc.returncode == 1, proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"train.py: error: cannot write {run / 'metrics.jsonl'}: "
                               "No space left on device; the last committed checkpoint is "
                               "step 1200")
    assert checkpoint.committed_steps(run)[0] == 1200


def test_sigterm_during_evaluation_saves_and_resumes(tmp_path):
    """Gymnasium host loop: the evaluation at 600 steps gets SIGTERM at its start; it
    finishes, the step is saved, the run stops with exit 130 and resumes to the end."""
    patch = ("from protosac_jax import loops\n"
             "import os, signal\n"
             "_evaluate = loops.HostRunner.evaluate\n"
             "def evaluate(self, learner, num_episodes, env_steps):\n"
             "    if env_steps == 600:\n"
             "        os.kill(os.getpid(), signal.SIGTERM)\n"
             "    return _evaluate(self, learner, num_episodes, env_steps)\n"
             "loops.HostRunner.evaluate = evaluate\n")
    run = tmp_path / "run"
    proc = _injected(patch, *FLAGS, "--backend", "gymnasium", "--total-steps", "1200",
                     "--out", str(run))
    assert proc.returncode == 130, proc.stderr
    error_lines(proc.stderr)
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "train.py: interrupted at env step 600; resumable checkpoint saved")
    assert checkpoint.committed_steps(run)[0] == 600
    proc = train_cli("--resume", str(run), "--total-steps", "1200", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert checkpoint.committed_steps(run)[0] == 1200


def test_sigterm_inside_a_host_chunk_stops_at_that_step_saves_and_resumes(tmp_path):
    """A Gymnasium host chunk is a Python loop that can last minutes (LunarLander's 10k-step
    chunks, CarRacing's): SIGTERM during its env step 450 of a 0-600 chunk stops the run at
    450, unevaluated, with a resumable checkpoint there (a SLURM preemption's grace period is
    ~30 s); the resumed run realigns to the evaluation grid (600, 900, ...)."""
    patch = ("from protosac_jax import loops\n"
             "import os, signal\n"
             "_iteration = loops.host_iteration_jit\n"
             "calls = [0]\n"
             "def iteration(*args):\n"
             "    calls[0] += 1\n"
             "    if calls[0] == 450:\n"
             "        os.kill(os.getpid(), signal.SIGTERM)\n"
             "    return _iteration(*args)\n"
             "loops.host_iteration_jit = iteration\n")
    run = tmp_path / "run"
    flags = [*FLAGS, "--backend", "gymnasium", "--eval-every", "600", "--save-every", "600"]
    proc = _injected(patch, *flags, "--total-steps", "1200", "--out", str(run))
    assert proc.returncode == 130, proc.stderr
    error_lines(proc.stderr)
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "train.py: interrupted at env step 450; resumable checkpoint saved")
    assert checkpoint.committed_steps(run) == [450]
    logged = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["env_steps"] for x in logged] == [450]
    assert logged[0]["eval/return_mean"] is None  # stopped before its evaluation
    assert logged[0]["charts/updates"] == 150  # 450 steps, updates from step 300 on
    proc = train_cli("--resume", str(run), "--total-steps", "1200", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert checkpoint.committed_steps(run)[0] == 1200
    logged = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["env_steps"] for x in logged] == [450, 600, 1200]
    assert all(x["eval/return_mean"] is not None for x in logged[1:])


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
@pytest.mark.parametrize("item", ["learner", "meta"])
def test_damaged_checkpoint_resume_falls_back_load_and_viz_refuse(tmp_path, uninterrupted,
                                                                  damage, item):
    run = shutil.copytree(uninterrupted, tmp_path / "run")
    step = run / "ckpt/latest/1200"
    files = sorted(p for p in (step / item).rglob("*") if p.is_file())
    target = max(files, key=lambda p: p.stat().st_size)  # the data, not a marker file
    data = target.read_bytes()
    target.write_bytes(data[:len(data) // 2] if damage == "truncate"
                       else bytes(255 - b for b in data))
    with pytest.raises(checkpoint.CorruptCheckpoint, match="1200") as err:
        protosac_jax.load(run)
    assert "ckpt/latest/900" in str(err.value)  # names the step that does load
    viz = subprocess.run([sys.executable, str(ROOT / "viz.py"), "--ckpt", str(run),
                          "--no-video", "--quiet"], cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=600)
    assert viz.returncode == 2
    lines = error_lines(viz.stderr)
    assert len(lines) == 1 and "corrupt" in lines[0] and "1200" in lines[0], viz.stderr
    assert not (run / "viz").exists()
    # resume falls back to 900, with a warning, and trains on from there
    proc = train_cli("--resume", str(run), "--total-steps", "1500", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "resuming from step 900" in proc.stderr
    assert checkpoint.committed_steps(run)[0] == 1500


def test_resumed_metrics_log_drops_lines_past_the_step_and_a_cut_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"env_steps": 300}\n{"env_steps": 600}\n{"env_steps": 900}\n'
                    '{"env_steps": 1200, "eval/ret')  # the dead run's last write, cut short
    logger = trainer._Logger(tmp_path, tensorboard=False, resumed_at=600)
    logger.log(900, {"eval/return_mean": -1.0})
    logger.close()
    assert [json.loads(x)["env_steps"] for x in path.read_text().splitlines()] == [300, 600, 900]


def test_python_api_refuses_the_same_values():
    import dataclasses

    from protosac_jax import config as config_lib
    from protosac_jax.config import ConfigError

    cfg = config_lib.preset("pendulum")
    for sac in (dict(gamma=1.5), dict(tau=0.0), dict(critic_lr=float("nan")),
                dict(init_alpha=-1.0), dict(hidden_sizes=(64, 0))):
        with pytest.raises(ConfigError, match="must be"):
            protosac_jax.train(dataclasses.replace(cfg, sac=dataclasses.replace(cfg.sac, **sac)),
                               out="/nonexistent/never-written")
    for proto in (dict(ortho_coef=-0.1), dict(refit_ridge=float("inf")),
                  dict(log_std_min=3.0)):
        with pytest.raises(ConfigError):
            config_lib.validate(dataclasses.replace(
                cfg, proto=dataclasses.replace(cfg.proto, **proto)))
    config_lib.validate(cfg)  # the presets themselves are valid
    for name in ("mountaincar", "hopper", "humanoid", "inverted_pendulum", "Hopper-v5",
                 "LunarLanderContinuous-v3", "CarRacing-v3"):
        config_lib.validate(config_lib.preset(name))
