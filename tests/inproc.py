"""`run_main`: a train.py / viz.py command run inside the test process.

Each command the suite runs in a subprocess pays a Python start with JAX's imports (~2 CPU-s)
and traces its programs afresh; inside a pytest worker the imports are done and runs with the
same programs reuse the traced ones (loops.Loop equality). Tests whose point is the command's
behaviour (its files, logs, exit codes) call `run_main`; each command keeps tests that run it
as a real subprocess (test_cli, test_gym_cli, test_viz's export, test_faults, test_resume_cli,
test_own_env, test_distributed), which cover what only a process shows (tracebacks, signals,
exit statuses, imports).
"""

import contextlib
import io
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_main(*args, cwd=ROOT, script="train.py") -> subprocess.CompletedProcess:
    """`python SCRIPT ARGS` in `cwd`, as `cli.main` / `viz_cli.main` in this process: the
    same CompletedProcess (returncode, stdout, stderr) that `subprocess.run` gives."""
    from protosac_jax import cli, viz_cli

    main = {"train.py": cli.main, "viz.py": viz_cli.main}[script]
    out, err = io.StringIO(), io.StringIO()
    args = [str(a) for a in args]
    environ = dict(os.environ)  # as a process's would, what the command sets there ends here
    try:
        with contextlib.chdir(cwd), contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(err):
            try:
                code = main(args)
            except SystemExit as exit_:  # argparse's --help and usage errors
                code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    finally:  # (train.py asks for one CPU device per core for a group: $XLA_FLAGS)
        os.environ.clear()
        os.environ.update(environ)
    return subprocess.CompletedProcess([script, *args], code, out.getvalue(), err.getvalue())
