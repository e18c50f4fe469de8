"""train.py --distributed with 2 real processes on localhost (JAX's CPU collectives, gloo).

The two processes train one data-parallel run (one CPU device each) and must end with the
parameters of the same run on 2 forced devices in one process, also across a resume; only
process 0 writes the logs, and the run directory is an ordinary one (loadable, resumable).
"""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np

import protosac_jax
from tiny import FLAGS as TINY, xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the suite's tiny Pendulum run (tests/tiny.py) with 4 envs: the one-process run on 2 devices
# is the program test_checkpoint's and test_mjx's two-device runs use
FLAGS = [*TINY, "--num-envs", "4", "--learning-starts", "560", "--eval-every", "200",
         "--no-tensorboard", "--no-progress"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(args, cache):
    """The launch line of README's "plain hosts", with both hosts on this machine; `cache`:
    their $PROTOSAC_JAX_CACHE."""
    port = _free_port()
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
               "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(rank),
               "PROTOSAC_JAX_CACHE": str(cache)}
        env["XLA_FLAGS"] = xla_flags()  # one device per process
        procs.append(subprocess.Popen([sys.executable, "train.py", *args, "--distributed"],
                                      cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    try:
        outs = [(*proc.communicate(timeout=600), proc) for proc in procs]
    finally:  # only a timeout or an error here leaves one running
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    outs = [(proc.returncode, out, err) for out, err, proc in outs]
    for rank, (code, out, err) in enumerate(outs):
        assert code == 0, f"process {rank}: {err}"
    return outs


def _leaves(run):
    agent = protosac_jax.load(run)
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(agent.learner) if np.size(x)]


def test_two_processes_train_and_resume_the_run_of_two_devices_in_one_process(tmp_path):
    two = tmp_path / "two_processes"
    # 40 updates in the first half, 40 in the second: the run is bound by gloo's
    # cross-process all-reduces (about 0.2 s per update here), so updates are kept few
    # the processes compile without the persistent cache: a second 2-process run that loaded
    # the first one's programs from it hung in its first all-reduce (trainer)
    cache = tmp_path / "cache"
    outs = _two_processes([*FLAGS, "--total-steps", "600", "--out", str(two)], cache)
    assert "done: pendulum protosac seed 0" in outs[0][1]
    assert "done:" not in outs[1][1]  # process 0 reports, process 1 is quiet
    steps = [json.loads(x)["env_steps"] for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert steps == [200, 400, 600]  # one writer, not one line per process
    _two_processes(["--resume", str(two), "--total-steps", "640", "--no-progress"], cache)
    assert not cache.exists() or not any(cache.iterdir())

    one = tmp_path / "one_process"
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": xla_flags(2)}
    proc = subprocess.run([sys.executable, "train.py", *FLAGS, "--total-steps", "640",
                           "--out", str(one), "--quiet"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    a, b = _leaves(two), _leaves(one)
    assert len(a) == len(b) > 10
    worst = max(float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64))))
                for x, y in zip(a, b))
    assert worst < 1e-5, worst  # the tolerance of test_mjx's sharded-update test
    assert json.loads((two / "summary.json").read_text())["env_steps"] == 640
    assert (two / "prototypes.png").is_file()


def test_distributed_bad_environment_is_one_line(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_PROCESSES": "2",
           "JAX_PROCESS_ID": "2", "JAX_COORDINATOR_ADDRESS": "127.0.0.1:1"}
    for extra, message in (([], "$JAX_PROCESS_ID must be in 0..1"),
                           (["--num-seeds", "2"], "seed groups and sweeps run on")):
        proc = subprocess.run([sys.executable, "train.py", "--env", "pendulum", "--distributed",
                               "--out", str(tmp_path / "r"), *extra], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], proc.stderr
        assert not (tmp_path / "r").exists()
