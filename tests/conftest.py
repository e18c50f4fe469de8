import os
import sys
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from tiny import SUITE_XLA_FLAGS  # noqa: E402

# The persistent compile cache keeps every program, however quick to compile, so that the
# suite's ~150 processes (and its two workers) compile each small program once between them
# (trainer.enable_compilation_cache; users keep the 0.5 s threshold).
os.environ.setdefault("PROTOSAC_JAX_CACHE_MIN_SECS", "0")

# Every program of the suite, in this process and in the commands it runs (they inherit the
# environment), is compiled with XLA's cheapest backend settings (tests/tiny.py).
if SUITE_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {SUITE_XLA_FLAGS}".strip()

from protosac_jax.trainer import enable_compilation_cache  # noqa: E402

enable_compilation_cache()  # the in-process tests' programs too, not only train()'s

# The test files, longest first (their cold run times, benchmarks/RESULTS.md "Test suite").
# With `--dist loadfile` a file runs whole on one worker, and xdist hands the files out in
# collection order (`--no-loadscope-reorder` in pyproject.toml; its default puts files with
# many tests first, which left test_resume_cli's four long tests for the end): the long files
# start first and the two workers run out of work together. Files not listed follow in their
# usual order.
LONGEST_FIRST = ("test_resume_cli.py", "test_gym_cli.py", "test_checkpoint.py", "test_viz.py",
                 "test_own_env.py", "test_faults.py", "test_mjx.py", "test_distributed.py",
                 "test_cli.py", "test_sac.py", "test_groups.py", "test_compare.py",
                 "test_learning.py", "test_prototype.py", "test_loops.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: within a file
