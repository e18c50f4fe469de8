"""Exact resume through the real command line, with each env's default preset.

`train.py --total-steps N`, then `train.py --resume RUN --total-steps 2N`, must be bitwise the
run `train.py --total-steps 2N` makes in one go: the same parameters, optimizer states,
prototypes (and their provenance), replay buffer, env states and RNG, and the same evaluation
returns at every shared evaluation. N is chosen so that updates run in both halves and the first
half ends with the final projection of a run that never projected (ProtoSAC). On Pendulum the
default buffer is capped by the short run, so the resume has to grow it; the MJX case sets its
buffer to the short run's length, so all three commands are one compiled program: the first half
compiles it and the other two, run together, load it from the persistent compile cache.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import protosac_jax
from protosac_jax import checkpoint, trainer

ROOT = Path(__file__).resolve().parents[1]

# (env, steps of the first half, flags): pendulum warms up for 1000 steps (with the local
# feedback of the locomotion preset; test_checkpoint resumes the default); inverted_pendulum
# (MJX, 16 envs, 4 updates per iteration) for 1000 instead of its preset's 5000 and evaluates
# 2 episodes instead of 8 (the same program, 4x fewer steps: the suite's longest test), with a
# buffer as long as its first half (the resume is then a compile-cache hit).
CASES = [("pendulum", 1200, ("--local-gain", "0.25")),  # the gains resume exactly too
         ("inverted_pendulum", 1600, ("--learning-starts", "1000", "--eval-episodes", "2",
                                      "--buffer-size", "1600"))]


def _command(*args):
    return [sys.executable, str(ROOT / "train.py"), *args, "--no-progress", "--no-tensorboard"]


def _run_together(*commands, cwd):
    """Run the commands at once (the two cores compile in parallel); all must succeed."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen(c, cwd=cwd, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for c in commands]
    for proc in procs:
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-3000:]


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def _assert_same(a, b, what):
    la, lb = _leaves(a), _leaves(b)
    assert len(la) == len(lb), what
    differ = [i for i, (x, y) in enumerate(zip(la, lb)) if not np.array_equal(x, y)]
    assert not differ, f"{what}: {len(differ)} of {len(la)} leaves differ"


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("baseline", [False, True], ids=["protosac", "sac"])
@pytest.mark.parametrize("env,half,flags", CASES, ids=[c[0] for c in CASES])
def test_resume_to_twice_the_steps_is_bitwise_the_one_go_run(tmp_path, env, half, flags,
                                                              baseline):
    algo = ["--baseline", *flags] if baseline else list(flags)
    one, two = tmp_path / "one", tmp_path / "two"
    one_go = _command("--env", env, *algo, "--total-steps", str(2 * half), "--out", "one")
    first_half = _command("--env", env, *algo, "--total-steps", str(half), "--out", "two")
    resume = _command("--resume", "two", "--total-steps", str(2 * half))
    if "--buffer-size" in flags:  # one program: compiled by the first half, then cache hits
        _run_together(first_half, cwd=tmp_path)
        short = protosac_jax.load(two)
        _run_together(one_go, resume, cwd=tmp_path)
    else:  # the one-go run's buffer is longer: two programs, the resume is the one-go's
        _run_together(one_go, first_half, cwd=tmp_path)
        short = protosac_jax.load(two)
        _run_together(resume, cwd=tmp_path)

    # what users load: the policy, its temperature, critics, optimizer states, prototypes
    a, b = protosac_jax.load(one), protosac_jax.load(two)
    assert a.meta["env_steps"] == b.meta["env_steps"] == 2 * half
    _assert_same(a.learner, b.learner, "learner")
    if not baseline:
        _assert_same(a.prototypes, b.prototypes, "prototype provenance")
        # the short run ended on real states (buffer rows, or -2: the policy's own rollouts)
        assert (short.prototypes["update_step"] >= 0).all()
        # Pendulum's preset draws some from rollouts (and resumes exactly, asserted above)
        assert (short.prototypes["buffer_index"] == -2).any() == (env == "pendulum")
    # what a further resume continues from: buffer, env states, noise, RNG, counters
    loop = trainer.make_loop(checkpoint.read_config(one))
    ts_a, _ = checkpoint.restore_train_state(one, loop)
    ts_b, _ = checkpoint.restore_train_state(two, loop)
    _assert_same(ts_a, ts_b, "train state")

    # the buffer a fresh run of 2N gets, not the short run's (the default is capped by the run)
    assert ts_b.buffer.capacity == (half if "--buffer-size" in flags else 2 * half)
    # evaluations at the same env steps agree (the short run adds one at N, its end)
    logs_a = {m["env_steps"]: m for m in _metrics(one)}
    logs_b = {m["env_steps"]: m for m in _metrics(two)}
    assert set(logs_b) == set(logs_a) | {half}
    for step, m_a in logs_a.items():
        for key in ("eval/return_mean", "charts/buffer_size", "charts/updates"):
            assert m_a[key] == logs_b[step][key], (step, key)
