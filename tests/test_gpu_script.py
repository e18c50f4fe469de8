"""benchmarks/gpu.py: refuses a CPU-only machine in one line, and rewrites only its section."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu  # noqa: E402


def test_without_an_accelerator_it_says_so_in_one_line(tmp_path):
    results = tmp_path / "R.md"
    results.write_text("keep me\n")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--results",
                           str(results)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no accelerator" in lines[0], proc.stderr
    assert results.read_text() == "keep me\n"


def test_write_section_replaces_only_the_gpu_block(tmp_path):
    results = tmp_path / "R.md"
    results.write_text("# Results\n\nbefore\n")
    gpu.write_section(results, "table one")
    text = results.read_text()
    assert text.startswith("# Results\n\nbefore\n") and "table one" in text
    results.write_text(text + "\n## after\n\nkept\n")
    gpu.write_section(results, "table two")
    text = results.read_text()
    assert "table one" not in text and text.count("table two") == 1
    assert text.startswith("# Results\n\nbefore\n") and text.endswith("## after\n\nkept\n")
