"""Orbax checkpoints: exact resume, fallbacks, bad input, load API, NaN guard, signals."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import protosac_jax
from protosac_jax import checkpoint, trainer
from protosac_jax.checkpoint import CheckpointError
from protosac_jax.config import ConfigError
from inproc import run_main
from tiny import FLAGS as TINY, tiny_cfg, xla_flags

ROOT = Path(__file__).resolve().parents[1]


def small_cfg(**kw):
    """The suite's tiny Pendulum run (tests/tiny.py: one compiled program for all of them),
    1000 steps, evaluated every 250."""
    return tiny_cfg(**{**dict(total_steps=1000, learning_starts=500, eval_every=250), **kw})


def leaves_equal(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y))
                                      for x, y in zip(la, lb))


# the SAC case also runs a fractional update ratio: the update credit is saved and resumed;
# "ingredients" trains with n-step returns (the buffer keeps episode ends), LayerNorm, AdamW,
# every iteration's batches drawn in one call and CrossQ critics (their running batch
# statistics resume too)
@pytest.mark.parametrize("baseline,ups,ingredients", [(False, 1.0, False), (True, 0.333, False),
                                                      (False, 1.0, True)],
                         ids=["protosac", "sac", "protosac-ingredients"])
def test_resume_is_bitwise_identical_to_one_go(tmp_path, baseline, ups, ingredients):
    def cfg(**kw):
        out = small_cfg(baseline=baseline, updates_per_step=ups, **kw)
        if ingredients:
            out = dataclasses.replace(out, sac=dataclasses.replace(
                out.sac, n_step=3, layer_norm="all", weight_decay=0.01, sample_once=True,
                zero_init_heads=True, crossq=True), proto=dataclasses.replace(
                out.proto, rollout_share=0.5, local_gain=0.25,  # states from rollouts,
                guard_episodes=2, selection_proposals=2))  # the final one guarded
        return out

    one_go = protosac_jax.train(cfg(total_steps=1500), out=tmp_path / "one", progress=False,
                                quiet=True)
    half = protosac_jax.train(cfg(), out=tmp_path / "two", progress=False, quiet=True)
    assert int(half.state.env_steps) == 1000
    if ups != 1.0:  # 500 updating iterations x 333/1000: 166 updates, 500/1000 still owed
        assert int(half.state.learner.num_updates) == 166
        assert int(half.state.update_credit) == 500
    resumed = protosac_jax.resume(tmp_path / "two", progress=False, quiet=True,
                                  total_steps=1500)
    for field in ("learner", "buffer", "provenance", "obs", "env_state", "rng", "noise"):
        assert leaves_equal(getattr(one_go.state, field), getattr(resumed.state, field)), field
    assert one_go.final_eval == resumed.final_eval
    # the metrics log continues where it stopped
    steps = [json.loads(x)["env_steps"] for x in
             (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [250, 500, 750, 1000, 1250, 1500]


def test_a_resumed_state_lowers_to_the_fresh_run_s_program(tmp_path):
    """A resume loads its run's compiled chunk from the persistent compile cache: restored
    (committed) arrays lowered to another program until trainer._committed placed fresh and
    restored states alike (JAX records committed arguments in the program)."""
    from protosac_jax import loops

    cfg = small_cfg()
    protosac_jax.train(cfg, out=tmp_path / "r", progress=False, quiet=True)
    loop = trainer.make_loop(cfg)
    fresh = loops.init_state_jit(loop, jax.random.PRNGKey(cfg.seed))
    restored, _ = checkpoint.restore_train_state(tmp_path / "r", loop)

    def program(ts):
        return loops.run_chunk_jit.lower(loop, ts, jnp.int32(1)).as_text()

    assert program(trainer._committed(fresh)) == program(trainer._committed(restored))
    assert program(fresh) != program(restored)  # what the placement is for


def test_resume_without_saved_buffer_refills_first(tmp_path, capsys):
    protosac_jax.train(small_cfg(save_buffer=False), out=tmp_path / "r", progress=False,
                       quiet=True)
    meta = json.loads((tmp_path / "r/ckpt/latest/1000/meta/metadata").read_text())
    assert meta["buffer_saved"] is False
    assert not (tmp_path / "r/ckpt/latest/1000/buffer").exists()
    updates_before = protosac_jax.load(tmp_path / "r").learner.num_updates
    result = protosac_jax.resume(tmp_path / "r", progress=False, total_steps=2000)
    assert "refilling 500 env steps" in capsys.readouterr().err
    # refill: 500 steps with the policy and no updates, then 500 training steps
    assert int(result.state.env_steps) == 2000
    assert [h["charts/warmup"] for h in result.history] == [1.0, 1.0, 0.0, 0.0]
    assert int(result.state.buffer.size) == 600  # full: the tiny run's 600 rows
    assert int(result.state.learner.num_updates) == int(updates_before) + 500


def test_load_agent_acts_explains_and_baseline_refuses_explain(tmp_path):
    protosac_jax.train(small_cfg(), out=tmp_path / "p", progress=False, quiet=True)
    agent = protosac_jax.load(tmp_path / "p")
    assert agent.meta["env_steps"] == 1000 and agent.config.proto.num_prototypes == 8
    obs = np.array([1.0, 0.0, 0.5], np.float32)
    assert agent.act(obs).shape == (1,) and agent.act(np.stack([obs] * 3)).shape == (3, 1)
    ex = agent.explain(obs)
    assert ex["weights"].shape == (8,) and ex["top_k"].shape == (3,)
    assert (agent.prototypes["buffer_index"] >= 0).all()
    # a step directory and the best checkpoint load too
    step_dir = tmp_path / "p/ckpt/latest/1000"
    assert np.allclose(protosac_jax.load(step_dir).act(obs), agent.act(obs))
    assert protosac_jax.load(tmp_path / "p", best=True).meta["eval_return"] is not None

    protosac_jax.train(small_cfg(baseline=True), out=tmp_path / "b", progress=False, quiet=True)
    baseline = protosac_jax.load(tmp_path / "b")
    assert baseline.act(obs).shape == (1,) and baseline.prototypes is None
    with pytest.raises(ValueError, match="baseline"):
        baseline.explain(obs)


def test_stochastic_act_draws_fresh_noise_unless_given_a_seed_or_key(finished_run):
    agent = protosac_jax.load(finished_run)
    obs = np.array([1.0, 0.0, 0.5], np.float32)
    draws = [float(agent.act(obs, deterministic=False)[0]) for _ in range(5)]
    assert len(set(draws)) == 5  # a rollout loop in a notebook really explores
    assert agent.act(obs, deterministic=False, seed=3) == agent.act(obs, deterministic=False,
                                                                   seed=3)
    key = jax.random.PRNGKey(11)
    np.testing.assert_array_equal(agent.act(obs, deterministic=False, key=key),
                                  agent.act(obs, deterministic=False, key=key))
    # a freshly loaded agent replays the same stream (reproducible notebooks)
    again = protosac_jax.load(finished_run)
    assert [float(again.act(obs, deterministic=False)[0]) for _ in range(5)] == draws
    # the deterministic action is unaffected by the draws
    assert agent.act(obs) == again.act(obs)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r"
    protosac_jax.train(small_cfg(save_every=250), out=out, progress=False, quiet=True)
    return out


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_corrupted_latest_falls_back_to_previous_step(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path / "r")
    for f in (run / "ckpt/latest/1000/learner").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="resuming from step 750"):
        result = protosac_jax.resume(run, progress=False, quiet=True, total_steps=1250)
    assert int(result.state.env_steps) == 1250


def test_interrupted_save_leaves_no_unrestorable_latest(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path / "r")
    # what an interrupted Orbax save leaves: a temporary directory, never a step directory
    junk = run / "ckpt/latest/5000.orbax-checkpoint-tmp-1234"
    junk.mkdir()
    (junk / "learner").mkdir()
    ts, meta = checkpoint.restore_train_state(run, protosac_jax.trainer.make_loop(
        checkpoint.read_config(run)))
    assert meta["env_steps"] == 1000


def test_unknown_format_version_fails_clearly(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path / "r")
    for step_dir in (run / "ckpt/latest").iterdir():
        meta_file = step_dir / "meta/metadata"
        meta = json.loads(meta_file.read_text())
        meta_file.write_text(json.dumps({**meta, "format_version": 99}))
        checkpoint._write_manifest(step_dir)  # as a newer protosac-jax would have written it
    with pytest.raises(CheckpointError, match="format 99"):
        protosac_jax.load(run)


def test_resume_refuses_shape_changes_and_finished_runs(finished_run):
    with pytest.raises(ConfigError, match="num_prototypes|cannot change"):
        protosac_jax.resume(finished_run, num_prototypes=4)
    with pytest.raises(ConfigError, match="already has 1000"):
        protosac_jax.resume(finished_run, total_steps=1000)


def _snapshot(path):
    return {p: p.stat().st_mtime_ns for p in Path(path).rglob("*")}


@pytest.mark.parametrize("case", ["missing", "not_a_run", "shape_flag", "all_corrupt",
                                  "done"])
def test_resume_bad_input_cli(finished_run, tmp_path, case):
    run = _copy(finished_run, tmp_path / "r")
    args = {"missing": ["--resume", str(tmp_path / "nope")],
            "not_a_run": ["--resume", str(tmp_path)],
            "shape_flag": ["--resume", str(run), "--num-prototypes", "4"],
            "all_corrupt": ["--resume", str(run), "--total-steps", "2000"],
            "done": ["--resume", str(run)]}[case]
    if case == "all_corrupt":
        for f in (run / "ckpt/latest").rglob("*"):
            if f.is_file() and f.parent.name == "d":
                f.write_bytes(b"garbage")
    before = _snapshot(run)
    proc = run_main(*args)
    assert proc.returncode == 2, proc.stderr
    lines = [x for x in proc.stderr.strip().splitlines() if "Warning" not in x]
    assert len(lines) == 1 and lines[0].startswith("train.py: error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert _snapshot(run) == before


def test_nan_guard_stops_with_clear_message(tmp_path):
    out = tmp_path / "nan"
    proc = run_main(*TINY, "--total-steps", "3000", "--lr", "1e12", "--out", str(out),
                   "--no-progress")
    assert proc.returncode == 1
    assert "non-finite" in proc.stderr and "env step" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (out / "ckpt/latest").exists() or not any((out / "ckpt/latest").iterdir())


def test_sigint_saves_a_resumable_checkpoint(tmp_path):
    out = tmp_path / "sig"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *TINY, "--total-steps", "400000",
         "--eval-every", "500", "--out", str(out), "--no-progress"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"})
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not metrics.exists()
                                      or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    assert "resumable checkpoint saved" in stderr and "Traceback" not in stderr
    steps = sorted(int(p.name) for p in (out / "ckpt/latest").iterdir())
    assert steps and steps[-1] < 400000
    agent = protosac_jax.load(out)
    assert agent.meta["env_steps"] == steps[-1]


def test_checkpoint_from_a_two_device_process_loads_with_one_device(tmp_path):
    """Trained and saved sharded over 2 (forced CPU) devices, loaded here with 1: same
    actions."""
    out = tmp_path / "two"
    script = (
        "import sys; sys.path.insert(0, 'tests')\n"
        "import jax, numpy as np, protosac_jax\n"
        "from tiny import tiny_cfg\n"
        "assert jax.device_count() == 2\n"
        "cfg = tiny_cfg(num_envs=4, total_steps=1000, learning_starts=500, eval_every=500)\n"
        f"protosac_jax.train(cfg, out={str(out)!r}, progress=False, quiet=True)\n"
        f"a = protosac_jax.load({str(out)!r})\n"
        "obs = np.linspace(-1, 1, 30, dtype=np.float32).reshape(10, 3)\n"
        f"np.save({str(tmp_path / 'actions.npy')!r}, a.act(obs))\n")
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": xla_flags(2)}
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert jax.device_count() == 1
    obs = np.linspace(-1, 1, 30, dtype=np.float32).reshape(10, 3)
    np.testing.assert_array_equal(protosac_jax.load(out).act(obs),
                                  np.load(tmp_path / "actions.npy"))


def test_agent_rejects_wrong_obs_shape(finished_run):
    agent = protosac_jax.load(finished_run)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        agent.act(np.zeros(5, np.float32))


def test_orphaned_tensorstore_read_errors_are_not_logged_after_the_one_line_report(caplog):
    """A failed restore leaves Orbax read tasks with unretrieved tensorstore errors; asyncio
    would log each with a traceback when they are collected. Only those are dropped."""
    import asyncio
    import gc

    from protosac_jax import checkpoint

    checkpoint._ocp()

    async def fail(text):
        raise ValueError(text)

    def orphan(text):
        loop = asyncio.new_event_loop()
        task = loop.create_task(fail(text))
        loop.run_until_complete(asyncio.sleep(0.01))
        loop.close()
        del task
        gc.collect()

    with caplog.at_level("ERROR", logger="asyncio"):
        orphan("OUT_OF_RANGE: Error opening zarr [tensorstore_spec='{}']")
        assert not [r for r in caplog.records if r.name == "asyncio"]
        orphan("some other failure")
        assert [r for r in caplog.records if "some other failure" in r.getMessage()]


@pytest.mark.parametrize("source", ["states", "rollouts", "free"])
def test_saved_prototypes_are_the_encodings_of_their_provenance_states(tmp_path, source):
    """What is saved and shown for prototype k is the state whose encoding the policy compares
    with: exactly (to float tolerance) for source "states", with normalised observations (the
    stored network inputs follow the normaliser), also when some states come from the
    policy's own rollouts (`rollout_share`) and the final re-selection is the best of guarded
    proposals; for "free", the distance that remains is what `proto/drift` reports."""
    cfg = small_cfg(total_steps=1200, updates_per_step=1.0)
    extra = {"states": {}, "rollouts": dict(rollout_share=0.5, local_gain=0.25,
                                            guard_episodes=2, selection_proposals=3),
             "free": dict(source="free", target_weight_entropy=None,
                          target_action_spread=None)}[source]
    cfg = dataclasses.replace(cfg, sac=dataclasses.replace(cfg.sac, normalize_obs=True),
                              proto=dataclasses.replace(cfg.proto, projection_every=300,
                                                        **extra))
    protosac_jax.train(cfg, out=tmp_path / "run", progress=False, quiet=True)
    agent = protosac_jax.load(tmp_path / "run")
    from protosac_jax import sac

    assert np.all(agent.prototypes["update_step"] >= 0)  # all chosen from real states
    states = sac.prepare_obs(agent.learner, jax.numpy.asarray(agent.prototypes["obs"]),
                             agent.config.sac)
    encoded = np.asarray(agent.actor.encode(agent.params, states))
    shown_gap = np.linalg.norm(np.asarray(agent.actor.prototypes(agent.params)) - encoded,
                               axis=-1)
    drift = [json.loads(line).get("proto/drift")
             for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    drift = [d for d in drift if d is not None][-1]
    if source != "free":
        assert shown_gap.max() < 1e-5 and drift < 1e-5
        buffer_rows = agent.prototypes["buffer_index"]
        from_buffer = buffer_rows[buffer_rows >= 0]
        assert len(set(from_buffer.tolist())) == len(from_buffer)  # distinct states
        rollout = buffer_rows == -2
        assert rollout.any() == (source == "rollouts")
        assert np.all((buffer_rows >= 0) | rollout)
        # distinct states, the rollout ones included
        assert len(np.unique(agent.prototypes["obs"], axis=0)) == len(buffer_rows)
    else:  # free prototypes trained on after the last projection (at 900 updates)
        assert shown_gap.mean() > 1e-4
        assert drift == pytest.approx(float(shown_gap.mean()), rel=1e-3)
    if source == "rollouts":  # the guarded end-of-training re-selection, and its metric
        last = [json.loads(line) for line in
                (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][-1]
        assert last["proto/last_selection"] == int(agent.prototypes["update_step"].max())
        assert last["proto/last_selection"] in (600, int(agent.learner.num_updates))


def test_a_refused_final_re_selection_keeps_the_states_and_says_so(tmp_path, monkeypatch,
                                                                   capsys):
    """When no proposal of the guarded end-of-training re-selection is good enough
    (here: the guard is made to refuse), the run ends on the states chosen before, the
    saved prototypes are exactly those, the last metrics row shows it and stderr says so."""
    from protosac_jax import loops

    monkeypatch.setattr(loops, "guard_selection",
                        lambda loop, ts, params, provenance, key: (ts.learner.actor_params,
                                                                   ts.provenance))
    cfg = small_cfg(total_steps=1200, updates_per_step=1.0)
    cfg = dataclasses.replace(cfg, proto=dataclasses.replace(
        cfg.proto, projection_every=300, guard_episodes=2, selection_proposals=2))
    protosac_jax.train(cfg, out=tmp_path / "run", progress=False, quiet=False)
    assert "the end-of-training re-selection was not taken" in capsys.readouterr().err
    agent = protosac_jax.load(tmp_path / "run")
    assert int(agent.learner.num_updates) == 700  # 1200 steps after 500 of warm-up
    assert set(agent.prototypes["update_step"].tolist()) == {600}
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["proto/last_selection"] == 600


def test_a_buffer_saved_before_the_optional_transition_fields_resumes(tmp_path, monkeypatch):
    """Checkpoints written before Transition gained `episode_end` / `discount` (2026-12-03)
    stored the buffer as the 6-field Transition pytree; they resume with the same rows."""
    from typing import Any

    import flax.struct

    from protosac_jax import replay

    @flax.struct.dataclass
    class OldTransition:  # the Transition of every checkpoint written before the n-step fields
        obs: Any
        action: Any
        reward: Any
        next_obs: Any
        terminated: Any
        render_state: Any

    def old_saved_form(state):
        d = state.data
        return replay.ReplayState(
            data=OldTransition(d.obs, d.action, d.reward, d.next_obs, d.terminated,
                               d.render_state),
            insert_position=state.insert_position, size=state.size)

    with monkeypatch.context() as m:
        m.setattr(replay, "saved_form", old_saved_form)
        run = protosac_jax.train(small_cfg(), out=tmp_path / "old", progress=False, quiet=True)
    loop = trainer.make_loop(checkpoint.read_config(tmp_path / "old"))
    ts, _ = checkpoint.restore_train_state(tmp_path / "old", loop)
    assert leaves_equal(ts.buffer, run.state.buffer)
    resumed = protosac_jax.resume(tmp_path / "old", progress=False, quiet=True, total_steps=1250)
    assert int(resumed.state.env_steps) == 1250
