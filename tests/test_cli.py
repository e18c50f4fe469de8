"""train.py flags (including the original's) and the real command as a subprocess."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from protosac_jax.cli import build_parser, config_from_args
from protosac_jax import config
from protosac_jax.config import ConfigError

from inproc import run_main
from tiny import BUFFER, FLAGS as TINY, tiny_cfg

ROOT = Path(__file__).resolve().parents[1]


def cfg_of(*argv):
    return config_from_args(build_parser().parse_args(list(argv)))


@pytest.mark.parametrize("text,expected", [("False", False), ("false", False), ("0", False),
                                           ("True", True), ("true", True), ("1", True)])
def test_baseline_flag_parses_booleans(text, expected):
    assert cfg_of("--baseline", text).baseline is expected


def test_bare_baseline_flag_means_true_and_default_is_protosac():
    assert cfg_of("--baseline").baseline is True
    assert cfg_of().baseline is False and cfg_of().algo == "protosac"


def test_original_flags_environment_and_episodes():
    cfg = cfg_of("--environment", "0", "--episodes", "300", "--baseline", "False")
    assert cfg.env == "pendulum" and cfg.total_steps == 300 * 200 and not cfg.baseline
    cfg = cfg_of("--environment", "2", "--episodes", "3")
    assert cfg.env == "mountaincar" and cfg.total_steps == 3 * 999


def test_flags_override_preset():
    cfg = cfg_of("--env", "pendulum", "--num-envs", "4", "--total-steps", "500", "--seed", "7",
                 "--num-prototypes", "16", "--hidden", "32,32", "--similarity", "rbf",
                 "--lr", "0.002", "--num_prototypes", "8")
    assert (cfg.num_envs, cfg.total_steps, cfg.seed) == (4, 500, 7)
    assert cfg.proto.num_prototypes == 8 and cfg.proto.similarity == "rbf"
    assert cfg.sac.hidden_sizes == (32, 32) and cfg.sac.actor_lr == 0.002
    cfg = cfg_of("--proto-init", "kmeans", "--weight-entropy-coef", "0.1",
                 "--usage-entropy-coef", "0.02")
    assert cfg.proto.init == "kmeans" and cfg.proto.weight_entropy_coef == 0.1
    assert cfg.proto.usage_entropy_coef == 0.02 and cfg_of().proto.init == "random"
    default = cfg_of().proto
    assert (default.source, default.similarity, default.normalize_latent) == (
        "states", "softmax", True)
    assert default.target_weight_entropy == 0.3 and default.target_action_spread == 0.04
    assert default.constraint_share == 0.25
    assert cfg_of("--constraint-share", "1", "--target-action-spread", "none").proto == \
        dataclasses.replace(default, constraint_share=1.0, target_action_spread=None)
    cfg = cfg_of("--prototypes", "free", "--similarity", "log", "--temperature", "1",
                 "--target-weight-entropy", "none", "--normalize-latent", "False",
                 "--target-action-spread", "0.01")
    assert (cfg.proto.source, cfg.proto.similarity, cfg.proto.temperature) == ("free", "log", 1)
    assert cfg.proto.target_weight_entropy is None and not cfg.proto.normalize_latent
    assert cfg.proto.target_action_spread == 0.01


def test_sac_ingredient_flags():
    cfg = cfg_of("--n-step", "3", "--layer-norm", "critic", "--weight-decay", "0.01",
                 "--init-alpha", "0.1", "--target-entropy", "-2", "--num-atoms", "51",
                 "--v-min", "-10", "--v-max", "300", "--sample-once")
    assert cfg.sac.sample_once is True
    assert cfg_of("--sample-once", "False").sac.sample_once is False
    assert cfg_of("--zero-init-heads").sac.zero_init_heads is True
    assert cfg_of("--zero-init-heads", "false").sac.zero_init_heads is False
    assert cfg_of("--crossq").sac.crossq is True and cfg_of().sac.crossq is False
    assert (cfg.sac.n_step, cfg.sac.layer_norm, cfg.sac.weight_decay) == (3, "critic", 0.01)
    assert (cfg.sac.num_atoms, cfg.sac.v_min, cfg.sac.v_max) == (51, -10.0, 300.0)
    assert (cfg.sac.init_alpha, cfg.sac.target_entropy) == (0.1, -2.0)
    default = cfg_of().sac
    assert (default.n_step, default.layer_norm, default.weight_decay) == (1, "none", 0.0)
    assert default.sample_once is False
    assert cfg_of("--target-entropy", "none").sac.target_entropy is None


def test_the_tiny_flags_are_tiny_cfg():
    """tests/tiny.py's flags (subprocess tests) and tiny_cfg (in-process tests) are one config,
    so both make the one compiled program the suite shares."""
    assert cfg_of(*TINY, "--no-tensorboard") == tiny_cfg()
    long = tiny_cfg(total_steps=5000, learning_starts=100, eval_every=1000, seed=3)
    assert cfg_of(*TINY, "--no-tensorboard", "--total-steps", "5000", "--learning-starts",
                  "100", "--eval-every", "1000", "--seed", "3") == long


def test_lunarlander_preset_has_64_prototypes_learning_at_4_tau_and_the_old_a_flag_away():
    for args in (("--env", "LunarLanderContinuous-v3"), ("--environment", "1")):
        proto = cfg_of(*args).proto
        assert (proto.num_prototypes, proto.backward_temperature_scale) == (64, 4.0)
        old = cfg_of(*args, "--num-prototypes", "32", "--backward-temperature-scale", "1").proto
        assert (old.num_prototypes, old.backward_temperature_scale) == (32, 1.0)
    # (the Gymnasium MuJoCo preset has them too since e23de78: its own test below)
    for env in ("pendulum", "hopper", "mountaincar", "CarRacing-v3"):
        proto = cfg_of("--env", env).proto
        assert (proto.num_prototypes, proto.backward_temperature_scale) == (32, 1.0), env


def test_local_gain_is_the_locomotion_and_pendulum_presets_and_0_for_a_mixture():
    assert cfg_of("--env", "hopper").proto.local_gain == 0.25
    assert cfg_of("--env", "Hopper-v5").proto.local_gain == 0.25
    assert cfg_of("--environment", "3").proto.local_gain == 0.25  # HalfCheetah-v5
    assert cfg_of("--env", "LunarLanderContinuous-v3").proto.local_gain == 0.0
    assert cfg_of("--env", "hopper", "--distribution", "mixture").proto.local_gain == 0.0
    assert cfg_of("--env", "hopper", "--local-gain", "0").proto.local_gain == 0.0
    assert cfg_of("--env", "pendulum").proto.local_gain == 0.25
    assert cfg_of("--env", "pendulum", "--local-gain", "0.1").proto.local_gain == 0.1
    assert cfg_of("--env", "mountaincar").proto.local_gain == 0.0


def test_gymnasium_mujoco_preset_has_crossq_critics_and_the_old_one_is_five_flags_away():
    for args in (("--env", "Hopper-v5"), ("--environment", "3"), ("--environment", "4")):
        cfg = cfg_of(*args)
        assert cfg.sac.crossq and cfg.proto.local_gain == 0.25, args
        assert (cfg.proto.num_prototypes, cfg.proto.backward_temperature_scale) == (64, 4.0)
        # re-selections half a cycle before the evaluations (warm-up = eval_every = every)
        assert cfg.proto.projection_phase == 0.5
        assert cfg.learning_starts == cfg.eval_every == cfg.proto.projection_every
        old = cfg_of(*args, "--crossq", "false", "--local-gain", "0", "--num-prototypes", "32",
                     "--backward-temperature-scale", "1", "--projection-phase", "0")
        assert not old.sac.crossq and old.proto.local_gain == 0.0
        assert old.proto == dataclasses.replace(config.PrototypeConfig(), projection_every=10_000)
    for env in ("LunarLanderContinuous-v3", "pendulum", "hopper", "CarRacing-v3"):
        assert not cfg_of("--env", env).sac.crossq, env
    # the fallback preset (your own Gymnasium env too) drops CrossQ on pixels; --crossq fails
    pixels = (84, 84, 3)
    preset = config.preset("Walker2d-v5")
    assert preset.sac.crossq and not config.fit_env(preset, pixels, False).sac.crossq
    assert config.fit_env(preset, (17,), False) == preset
    with pytest.raises(ConfigError, match="--crossq needs vector observations"):
        config.fit_env(preset, pixels, crossq_given=True)


def test_rollout_share_is_pendulum_s_where_the_env_steps_on_the_device():
    pendulum = cfg_of("--env", "pendulum")
    assert (pendulum.proto.rollout_share, pendulum.updates_per_step,
            pendulum.proto.projection_every) == (0.25, 2.0, 2500)
    # the Gymnasium twin steps on the host: the preset's rollouts are off there (an explicit
    # --rollout-share is refused, test_bad_input_one_line_exit_2_nothing_written)
    assert cfg_of("--env", "pendulum", "--backend", "gymnasium").proto.rollout_share == 0.0
    assert cfg_of("--env", "pendulum", "--prototypes", "free").proto.rollout_share == 0.0
    assert cfg_of("--env", "hopper").proto.rollout_share == 0.0


def test_pendulum_guards_its_final_re_selection_and_evaluates_on_50_episodes():
    pendulum = cfg_of("--env", "pendulum")
    assert (pendulum.proto.guard_episodes, pendulum.proto.selection_proposals,
            pendulum.eval_episodes) == (32, 8, 50)
    off = cfg_of("--env", "pendulum", "--guard-episodes", "0").proto
    assert (off.guard_episodes, off.selection_proposals) == (0, 1)
    # no device episodes to guard with on the host; free prototypes are not re-selected
    assert cfg_of("--env", "pendulum", "--backend", "gymnasium").proto.guard_episodes == 0
    assert cfg_of("--env", "pendulum", "--prototypes", "free").proto.guard_episodes == 0
    assert cfg_of("--env", "hopper").proto.guard_episodes == 0
    assert cfg_of("--env", "mountaincar").proto.guard_episodes == 0


def test_hopper_preset_is_the_family_s_at_half_the_batch_and_twice_the_updates():
    hopper, humanoid = cfg_of("--env", "hopper"), cfg_of("--env", "humanoid")
    assert (hopper.sac.batch_size, hopper.updates_per_step) == (256, 0.25)
    assert (humanoid.sac.batch_size, humanoid.updates_per_step) == (512, 0.125)
    same = dict(env="humanoid", sac=humanoid.sac, updates_per_step=0.125)
    assert dataclasses.replace(hopper, **same) == humanoid  # nothing else differs
    old = cfg_of("--env", "hopper", "--batch-size", "512", "--updates-per-step", "0.125")
    assert (old.sac.batch_size, old.updates_per_step) == (512, 0.125)


def test_old_config_files_keep_the_behaviour_they_were_trained_with():
    """A config.json written before the prototype sources existed loads as the original
    ProtoSAC (free prototypes, no learned temperature), not as today's defaults."""
    from protosac_jax import config as config_lib

    data = config_lib.to_dict(config_lib.preset("pendulum"))
    for key in ("source", "normalize_latent", "target_weight_entropy", "target_action_spread",
                "constraint_share", "local_gain", "rollout_share", "guard_episodes"):
        del data["proto"][key]
    proto = config_lib.from_dict(data).proto
    assert (proto.source, proto.normalize_latent, proto.target_weight_entropy,
            proto.target_action_spread, proto.constraint_share, proto.local_gain,
            proto.rollout_share, proto.guard_episodes) == ("free", False, None, None, 1.0, 0.0,
                                                           0.0, 0)


@pytest.mark.parametrize("argv", [["--baseline", "maybe"], ["--num-envs", "0"],
                                  ["--total-steps", "-5"], ["--env", "nope"],
                                  ["--environment", "9"], ["--episodes", "2", "--total-steps", "9"],
                                  ["--env", "mountaincar", "--environment", "0"],
                                  ["--hidden", "a,b"], ["--proto-init", "zeros"],
                                  ["--prototypes", "both"], ["--temperature", "0"],
                                  ["--target-weight-entropy", "-1"],
                                  ["--target-weight-entropy", "low"],
                                  ["--n-step", "0"], ["--layer-norm", "batch"],
                                  ["--weight-decay", "-0.1"], ["--init-alpha", "0"],
                                  ["--n-step", "3", "--learning-starts", "2"],
                                  ["--num-atoms", "1"], ["--v-min", "5", "--v-max", "1"]])
def test_bad_flags_raise_config_errors(argv):
    from protosac_jax.envs import EnvError

    with pytest.raises((ConfigError, EnvError)):
        cfg_of(*argv)


def run_cli(*args, cwd=ROOT, script="train.py"):
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})


@pytest.mark.parametrize("args,needle", [
    (["--env", "nope"], "unknown env"),
    (["--num-envs", "0"], "--num-envs"),
    (["--total-steps", "-5"], "--total-steps"),
    (["--baseline", "maybe"], "maybe"),
    (["--env", "CartPole-v1"], "Discrete action space"),
    (["--env", "Hopper-v5", "--frame-stack", "0"], "--frame-stack"),
    (["--env", "pendulum", "--action-repeat", "2"], "Gymnasium envs only"),
    (["--env", "hopper", "--backend", "gymnasium"], "Gymnasium id"),
    (["--env", "CarRacing-v3", "--crossq"], "--crossq needs vector observations"),
    (["--env", "nosuchbrax"], "humanoid"),  # unknown names list the valid ones, brax's too
    # impossible hyper-parameters (config.DOMAINS), refused before anything starts
    (["--gamma", "1.5"], "--gamma must be in (0, 1] (got 1.5)"),
    (["--gamma", "nan"], "--gamma must be in (0, 1]"),
    (["--lr", "-1"], "--lr (sac.actor_lr) must be a finite number > 0 (got -1.0)"),
    (["--lr", "inf"], "--lr (sac.actor_lr) must be a finite number > 0"),
    (["--batch-size", "0"], "--batch-size must be an integer >= 1"),
    (["--temperature", "-0.1"], "--temperature must be a finite number > 0"),
    (["--weight-entropy-coef", "-1"], "--weight-entropy-coef must be a finite number >= 0"),
    (["--noise-correlation", "1"], "--noise-correlation must be in [0, 1)"),
    (["--seed", "-3"], "--seed must be an integer in [0, 2^31)"),
    (["--local-gain", "-0.1"], "--local-gain must be a finite number >= 0"),
    (["--backward-temperature-scale", "0.5"],
     "--backward-temperature-scale must be a finite number >= 1 (got 0.5)"),
    (["--env", "hopper", "--n-step", "3", "--learning-starts", "256"],
     "--n-step 3 needs --learning-starts >= n-step x --num-envs (384)"),
    (["--local-gain", "0.25", "--distribution", "mixture"],
     "--local-gain needs --distribution blend"),
    (["--rollout-share", "1.5"], "--rollout-share must be in [0, 1]"),
    (["--rollout-share", "0.25", "--prototypes", "free"], "--rollout-share needs --prototypes states"),
    (["--rollout-share", "0.25", "--backend", "gymnasium"], "no device rollouts"),
    (["--guard-episodes", "-1"], "--guard-episodes must be an integer >= 0"),
    (["--guard-episodes", "8", "--prototypes", "free"],
     "--guard-episodes needs --prototypes states"),
    (["--guard-episodes", "8", "--backend", "gymnasium"], "no device rollouts"),
    (["--selection-proposals", "0"], "--selection-proposals must be an integer >= 1"),
    (["--selection-proposals", "4", "--guard-episodes", "0"],
     "--selection-proposals needs --guard-episodes > 0"),
    # groups (--num-seeds, --sweep): refused before anything is compiled or written
    (["--sweep", "batch_size=32,64"], "--sweep cannot vary 'batch_size'"),
    (["--sweep", "actor_lr"], "--sweep expects NAME=v1,v2"),
    (["--sweep", "actor_lr=a,b"], "expected comma-separated numbers"),
    (["--sweep", "actor_lr=1e-3,1e-3"], "a value is repeated"),
    (["--sweep", "gamma=0.9", "--sweep", "gamma=0.8"], "--sweep names gamma twice"),
    (["--sweep", "gamma=0.9,1.5"], "--gamma must be in (0, 1] (got 1.5)"),
    (["--sweep", "local_gain=0,0.25"], "--sweep local_gain: values must be > 0"),
    (["--num-seeds", "0"], "--num-seeds must be an integer >= 1"),
    (["--num-seeds", "2", "--backend", "gymnasium"], "steps on the host (Gymnasium)"),
    (["--seed", "2147483647", "--num-seeds", "2"], "passes 2^31"),
])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, args, needle):
    proc = run_cli(*args, "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and "Exception" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_unwritable_out_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = run_cli("--out", str(blocker / "run"), cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr and blocker.read_text() == "x"
    # an existing non-empty run directory is never overwritten
    existing = tmp_path / "old"
    existing.mkdir()
    (existing / "config.json").write_text("keep")
    proc = run_cli("--out", str(existing), cwd=tmp_path)
    assert proc.returncode == 2 and "not empty" in proc.stderr
    assert (existing / "config.json").read_text() == "keep"
    proc = run_cli("--out", "/proc/protosac-test-run", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", [["protosac-train"], ["protosac-viz"],
                                     ["-m", "protosac_jax"]])
def test_installed_entry_points(tmp_path, command):
    """The console scripts of the installed package and `python -m protosac_jax` are the same
    commands as train.py / viz.py (help, and a bad flag: one line, exit 2)."""
    if command[0].startswith("protosac-"):
        script = Path(sys.executable).parent / command[0]
        assert script.is_file(), f"{script} not installed (pip install -e .)"
        argv = [str(script)]
    else:
        argv = [sys.executable, *command]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([*argv, "--help"], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=300)
    assert proc.returncode == 0 and ("--ckpt" if "viz" in command[0] else "--num-seeds") \
        in proc.stdout
    bad = ["--episodes", "0", "--ckpt", "x"] if "viz" in command[0] else ["--gamma", "1.5"]
    proc = subprocess.run([*argv, *bad], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=300)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_built_wheel_installs_and_trains_without_the_checkout(tmp_path):
    """`pip install .` (not editable): the wheel carries every module and the console
    scripts' entry points, and the installed package trains and writes a run on its own."""
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "w"),
             str(ROOT)]
    try:
        import setuptools  # noqa: F401 - present: build without fetching it again
        build.insert(5, "--no-build-isolation")
    except ImportError:
        pass
    proc = subprocess.run(build, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    wheel = next((tmp_path / "w").glob("protosac_jax-*.whl"))
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                           str(site), str(wheel)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    entry = (next(site.glob("protosac_jax-*.dist-info")) / "entry_points.txt").read_text()
    assert "protosac-train = protosac_jax.cli:main" in entry
    assert "protosac-viz = protosac_jax.viz_cli:main" in entry
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(site)}
    where = tmp_path / "elsewhere"
    where.mkdir()
    code = ("import sys, protosac_jax, protosac_jax.cli as c; print(protosac_jax.__file__); "
            "sys.exit(c.main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, *TINY, "--total-steps", "600",
                           "--learning-starts", "100", "--eval-every", "600", "--out", "run",
                           "--no-progress"],
                          cwd=where, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(str(site))  # the installed copy, not the checkout
    assert (where / "run" / "prototypes.png").is_file()


def test_help_lists_envs():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for name in ("pendulum", "mountaincar", "LunarLanderContinuous-v3", "humanoid"):
        assert name in proc.stdout


def test_real_short_run_writes_a_loadable_run_directory(tmp_path):
    out = tmp_path / "run"
    proc = run_cli(*TINY, "--total-steps", "1500", "--learning-starts", "500",
                   "--eval-every", "500", "--out", str(out), "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "final eval return" in proc.stdout
    assert f"next: python viz.py --ckpt {out}" in proc.stdout  # what to run next
    for name in ("config.json", "metrics.jsonl", "summary.json", "ckpt/latest/1500/meta/metadata",
                 "ckpt/latest/1500/learner", "ckpt/latest/1500/buffer", "prototypes.png"):
        assert (out / name).exists(), name
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [d["env_steps"] for d in lines] == [500, 1000, 1500]
    # TensorBoard's own reader finds every logged scalar at its step
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert len([p for p in out.iterdir() if p.name.startswith("events.out.tfevents")]) == 1
    events = EventAccumulator(str(out))
    events.Reload()
    for key in ("eval/return_mean", "losses/critic"):
        got = [(e.step, e.value) for e in events.Scalars(key)]
        assert got and got == [(d["env_steps"], pytest.approx(d[key], rel=1e-6)) for d in lines
                       if d.get(key) is not None], key
    assert "losses/critic" in lines[-1] and "proto/usage_entropy" in lines[-1]
    assert json.loads((out / "config.json").read_text())["proto"]["num_prototypes"] == 8

    import protosac_jax

    agent = protosac_jax.load(out)
    action = agent.act(np.array([1.0, 0.0, 0.0]))
    assert action.shape == (1,) and -2.0 <= float(action[0]) <= 2.0
    assert agent.act(np.zeros((5, 3))).shape == (5, 1)
    explanation = agent.explain(np.array([1.0, 0.0, 0.0]), top_k=3)
    assert explanation["weights"].shape == (8,)
    assert explanation["weights"].sum() == pytest.approx(1.0, rel=1e-5)
    # 1000 updates with projection every 200: every prototype is a distinct real buffer state
    index = agent.prototypes["buffer_index"]
    assert index.shape == (8,) and (index >= 0).all() and (index < BUFFER).all()
    assert len(set(index.tolist())) == 8
    assert (agent.prototypes["update_step"] == 1000).all()
    assert "eval/return_mean_before_final_projection" not in lines[-1]


@pytest.mark.parametrize("source", ["free", "states"])
def test_a_run_shorter_than_projection_every_ends_projected(tmp_path, source):
    """Free prototypes of a run that never projected are projected once at its end; states
    prototypes are real states from their first selection, right before the first update."""
    out = tmp_path / "run"
    # 100 updates, fewer than the tiny run's projection_every (200)
    proc = run_main(*TINY, "--total-steps", "1000", "--learning-starts", "900",
                    "--eval-every", "500", "--prototypes", source, "--out", str(out),
                    "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    import protosac_jax

    prov = protosac_jax.load(out).prototypes
    assert (prov["buffer_index"] >= 0).all() and len(set(prov["buffer_index"].tolist())) == 8
    if source == "free":
        assert "eval/return_mean_before_final_projection" in last
        assert (prov["update_step"] == 100).all()
    else:
        assert "eval/return_mean_before_final_projection" not in last
        assert (prov["update_step"] == 0).all() and abs(last["proto/drift"]) < 1e-6


def test_a_bad_flag_is_answered_before_jax_is_imported():
    # A mistyped command answers at once: flags, the config's domains and env names are
    # checked before JAX, the trainer and the envs' classes load (~2-3 s on this CPU).
    code = ("import sys; from protosac_jax import cli; "
            "rc = cli.main(['--gamma', '1.5', '--env', 'pendulum']); "
            "print(rc, sorted(m for m in ('jax', 'flax', 'gymnax', 'brax') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.stdout.split("\n")[0] == "2 []", proc.stdout + proc.stderr
    assert "--gamma must be in (0, 1]" in proc.stderr
    # an unknown env name too: brax's names are listed without importing brax
    proc = subprocess.run([sys.executable, "-c", code.replace("'--gamma', '1.5', ", "")
                           .replace("'pendulum'", "'nope'")], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.stdout.split("\n")[0] == "2 []", proc.stdout + proc.stderr
    assert "unknown env 'nope'" in proc.stderr and "inverted_pendulum" in proc.stderr


def test_a_bad_cache_threshold_is_one_line_and_writes_nothing(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PROTOSAC_JAX_CACHE_MIN_SECS": "abc"}
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--env", "pendulum", "--out",
                           str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 2 and not (tmp_path / "run").exists()
    assert proc.stderr.strip().splitlines() == [
        "train.py: error: $PROTOSAC_JAX_CACHE_MIN_SECS must be seconds (a number), got 'abc'"]


def test_train_py_builds_the_env_once(tmp_path, monkeypatch):
    """train.py checks and fits its config against the env and hands that env to the trainer,
    not building it a second time (an MJX model, a Gymnasium probe)."""
    from protosac_jax import cli, envs

    built = []
    make = envs.make_env_for

    def counting(cfg, *args, **kwargs):
        built.append(cfg.env)
        return make(cfg, *args, **kwargs)

    monkeypatch.setattr(envs, "make_env_for", counting)
    run = tmp_path / "run"
    assert cli.main([*TINY, "--total-steps", "300", "--quiet", "--no-tensorboard",
                     "--out", str(run)]) == 0
    assert built == ["pendulum"] and (run / "config.json").exists()
    # a resume with --episodes reads the episode length from the env it then continues with
    built.clear()
    assert cli.main(["--resume", str(run), "--episodes", "2", "--quiet"]) == 0
    assert built == ["pendulum"]
    assert json.loads((run / "config.json").read_text())["total_steps"] == 400
