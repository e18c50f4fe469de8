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
