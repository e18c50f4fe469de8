"""Your own Gymnasium env by Gymnasium's convention: `--env my_pkg.envs:MyEnv-v0`.

The module (tests/data/tiny_point_env.py, copied into a package on PYTHONPATH) registers its
id when imported, as gymnasium.make("module:Id") expects; train.py, viz.py and --resume import
it again from the env name saved in config.json. Env objects (`--env my_pkg.objects:NAME`,
`train(cfg, env=...)`; tests/data/tiny_object_envs.py) the same way. Each run's buffer is
no longer than its first part, so its `--resume` is the same compiled program (a cache hit).
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tiny import SHAPES

ROOT = Path(__file__).resolve().parents[1]


def _cli(script, *args, pythonpath):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(pythonpath)}
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def _cli_code(code, *args, pythonpath):
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}:{pythonpath}"}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def _draws_explains_resumes(run, site, episodes, resume_to):
    """What every own env must do after training: a drawn grid (the env's own render()),
    viz.py's report and `--resume` (each imports the user's module again)."""
    assert (run / "prototypes.png").stat().st_size > 10_000  # drawn, not blank
    proc = _cli("viz.py", "--ckpt", str(run), "--no-video", "--episodes", str(episodes),
                pythonpath=site)
    assert proc.returncode == 0, proc.stderr
    assert (run / "viz" / "report.html").is_file()
    proc = _cli("train.py", "--resume", str(run), "--total-steps", str(resume_to),
                "--no-progress", pythonpath=site)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((run / "summary.json").read_text())["env_steps"] == resume_to


def test_own_gymnasium_env_trains_draws_resumes(tmp_path):
    site, run = _site(tmp_path), tmp_path / "run"
    # the flags of the Gymnasium factory's run below: one compiled program for both
    proc = _cli("train.py", "--env", "my_pkg.envs:Point-v0", *SHAPES, "--total-steps", "600",
                "--learning-starts", "300", "--eval-every", "300", "--eval-episodes", "2",
                "--num-envs", "1", "--buffer-size", "600", "--out", str(run), "--no-progress",
                pythonpath=site)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((run / "config.json").read_text())["env"] == "my_pkg.envs:Point-v0"
    # prototypes from frames captured while training
    _draws_explains_resumes(run, site, episodes=2, resume_to=900)
    # a module that does not import, or registers another id: one line, exit 2
    for env, needle in [("no_such_pkg:Point-v0", "cannot import no_such_pkg"),
                        ("my_pkg.envs:Other-v0", "registered no Gymnasium id 'Other-v0'")]:
        proc = _cli("train.py", "--env", env, "--out", str(tmp_path / "x"), pythonpath=site)
        assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()


def _site(tmp_path):
    """tests/data's tiny envs as a package on PYTHONPATH, as a user's own package would be."""
    site = tmp_path / "site"
    (site / "my_pkg").mkdir(parents=True)
    (site / "my_pkg" / "__init__.py").write_text("")
    shutil.copy(ROOT / "tests" / "data" / "tiny_point_env.py", site / "my_pkg" / "envs.py")
    shutil.copy(ROOT / "tests" / "data" / "tiny_point_env.py", site / "tiny_point_env.py")
    shutil.copy(ROOT / "tests" / "data" / "tiny_object_envs.py", site / "my_pkg" / "objects.py")
    return site


@pytest.mark.parametrize("name,backend,steps", [
    ("PointLine", "gymnax", 50), ("BraxPoint", "brax", 1000), ("make_point_gym", "gymnasium", 1000),
])
def test_own_env_object_trains_draws_resumes(tmp_path, name, backend, steps):
    """`--env my_pkg.objects:NAME`: a gymnax-style class, a brax-style class, a Gymnasium
    factory; tiles drawn by the env's own render(), viz.py and --resume import it again."""
    site, run = _site(tmp_path), tmp_path / "run"
    ref = f"my_pkg.objects:{name}"
    proc = _cli("train.py", "--env", ref, *SHAPES, "--total-steps", "600", "--learning-starts",
                "300", "--eval-every", "300", "--eval-episodes", "1", "--num-envs",
                "1" if backend == "gymnasium" else "2", "--buffer-size", "600", "--out", str(run),
                "--no-progress", "--no-tensorboard", pythonpath=site)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((run / "config.json").read_text())["env"] == ref
    meta = json.loads(next((run / "ckpt" / "latest").glob("*/meta/metadata")).read_text())
    assert meta["spec"]["backend"] == backend and meta["spec"]["episode_length"] == steps
    _draws_explains_resumes(run, site, episodes=1, resume_to=900)


OBJECT_API_SCRIPT = """
import sys
import protosac_jax
from my_pkg.objects import PointLine
from tiny import tiny_cfg  # the suite's small shapes
cfg = tiny_cfg(total_steps=400, learning_starts=200, eval_every=200, eval_episodes=1)
result = protosac_jax.train(cfg, env=PointLine, out=sys.argv[1], progress=False, quiet=True)
print(protosac_jax.load(sys.argv[1]).config.env, result.history[-1]["env_steps"])
try:
    protosac_jax.train(cfg, env=lambda: PointLine(), out=sys.argv[1] + "_x")
except protosac_jax.EnvError as err:
    print("refused:", err)
"""


def test_train_accepts_an_env_object_from_python(tmp_path):
    proc = _cli_code(OBJECT_API_SCRIPT, str(tmp_path / "run"), pythonpath=_site(tmp_path))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "my_pkg.objects:PointLine 400"
    assert lines[1].startswith("refused:") and "importable module" in lines[1]
    assert not (tmp_path / "run_x").exists()


def test_train_fits_the_preset_to_an_own_pixel_env(tmp_path, monkeypatch):
    """`train(env=...)` without a cfg takes the env's preset as train.py does: the Gymnasium
    fallback preset's CrossQ is dropped for pixel observations; asked for in a cfg, refused."""
    import protosac_jax
    from protosac_jax import ConfigError, preset

    monkeypatch.syspath_prepend(str(_site(tmp_path)))
    for name in ("my_pkg", "my_pkg.objects"):  # imported below from this tmp_path: the
        monkeypatch.setitem(sys.modules, name, None)  # worker forgets them afterwards
        del sys.modules[name]
    from my_pkg.objects import make_pixel_gym

    cfg, env = protosac_jax._config_for(None, make_pixel_gym)
    assert cfg.env == "my_pkg.objects:make_pixel_gym" and env.spec.obs_shape == (16, 16, 3)
    assert preset(cfg.env).sac.crossq and not cfg.sac.crossq
    assert cfg == dataclasses.replace(preset(cfg.env), sac=dataclasses.replace(
        preset(cfg.env).sac, crossq=False))  # nothing else changed
    with pytest.raises(ConfigError, match="--crossq needs vector observations"):
        protosac_jax.train(preset(cfg.env), env=make_pixel_gym, out=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_own_env_object_bad_references_are_one_line(tmp_path):
    site = _site(tmp_path)
    for ref, needle in [("my_pkg.objects:Nope", "has no 'Nope'"),
                        ("my_pkg.objects:PointState", "calling it with no arguments failed"),
                        ("my_pkg.objects:jnp", "not a Gymnasium, gymnax-style or brax-style")]:
        proc = _cli("train.py", "--env", ref, "--out", str(tmp_path / "x"), pythonpath=site)
        assert proc.returncode == 2 and needle in proc.stderr, (ref, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()
