"""Your own Gymnasium env by Gymnasium's convention: `--env my_pkg.envs:MyEnv-v0`.

The module (tests/data/tiny_point_env.py, copied into a package on PYTHONPATH) registers its
id when imported, as gymnasium.make("module:Id") expects; train.py, viz.py and --resume import
it again from the env name saved in config.json.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _cli(script, *args, pythonpath):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(pythonpath)}
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_own_gymnasium_env_trains_draws_resumes(tmp_path):
    package = tmp_path / "site" / "my_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    shutil.copy(ROOT / "tests" / "data" / "tiny_point_env.py", package / "envs.py")
    site, run = tmp_path / "site", tmp_path / "run"
    proc = _cli("train.py", "--env", "my_pkg.envs:Point-v0", "--total-steps", "1000",
                "--learning-starts", "400", "--eval-every", "500", "--eval-episodes", "2",
                "--out", str(run), "--no-progress", pythonpath=site)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((run / "config.json").read_text())["env"] == "my_pkg.envs:Point-v0"
    # prototypes drawn with the env's own render(): frames captured while training
    assert (run / "prototypes.png").stat().st_size > 10_000
    proc = _cli("viz.py", "--ckpt", str(run), "--no-video", "--episodes", "2",
                pythonpath=site)
    assert proc.returncode == 0, proc.stderr
    assert (run / "viz" / "report.html").is_file()
    proc = _cli("train.py", "--resume", str(run), "--total-steps", "1500", "--no-progress",
                pythonpath=site)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((run / "summary.json").read_text())["env_steps"] == 1500
    # a module that does not import, or registers another id: one line, exit 2
    for env, needle in [("no_such_pkg:Point-v0", "cannot import no_such_pkg"),
                        ("my_pkg.envs:Other-v0", "registered no Gymnasium id 'Other-v0'")]:
        proc = _cli("train.py", "--env", env, "--out", str(tmp_path / "x"), pythonpath=site)
        assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()
