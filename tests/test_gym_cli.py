"""The original's seven `--environment` indices run end to end as real commands (tiny sizes),
including CarRacing pixels and Humanoid-v5, and a Gymnasium run resumes."""

import json

import numpy as np
import pytest

from test_cli import run_cli

TINY = ["--hidden", "16,16", "--batch-size", "16", "--num-prototypes", "4", "--latent-dim", "8",
        "--eval-episodes", "1", "--no-progress"]


@pytest.mark.parametrize("index,extra", [
    (0, []), (0, ["--backend", "gymnasium"]), (1, []), (2, []), (3, []), (4, []), (5, []),
    (6, []),
])
def test_every_original_index_trains_and_writes_a_run_directory(tmp_path, index, extra):
    out = tmp_path / "run"
    steps = "200"
    proc = run_cli("--environment", str(index), *extra, "--total-steps", steps,
                   "--learning-starts", "100", "--projection-every", "40", *TINY,
                   "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = json.loads((out / "config.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["env_steps"] >= 200 and np.isfinite(summary["final_eval"])
    assert summary["updates"] > 0
    assert (out / "ckpt" / "latest").is_dir() and (out / "metrics.jsonl").is_file()
    assert (out / "prototypes.png").is_file(), proc.stdout  # every env's prototypes drawn
    assert "replay buffer:" in proc.stderr and "GiB" in proc.stderr
    if index == 6:  # CarRacing: stacked uint8 pixels, action repeat
        assert cfg["frame_stack"] == 3 and cfg["action_repeat"] == 2
    if extra:
        assert cfg["env"] == "Pendulum-v1"


def test_gymnasium_run_resumes_and_loads(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("--env", "LunarLanderContinuous-v3", "--total-steps", "200",
                   "--learning-starts", "100", "--eval-every", "100", "--projection-every", "50",
                   *TINY, "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_cli("--resume", str(out), "--total-steps", "400", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "episodes in progress restart" in proc.stderr
    steps = [json.loads(line)["env_steps"]
             for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [100, 200, 300, 400]

    import protosac_jax

    agent = protosac_jax.load(out)
    action = agent.act(np.zeros(8, np.float32))
    assert action.shape == (2,) and np.all(np.abs(action) <= 1.0)
    frames = agent.prototypes["render_state"]
    assert frames.shape == (4, 96, 144, 3) and frames.dtype == np.uint8
