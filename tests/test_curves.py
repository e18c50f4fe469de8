"""viz.py --curves: learning curves of runs and groups (protosac_jax/curves.py)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from protosac_jax import curves
from protosac_jax.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _run(path: Path, returns, walls, steps=None, cut_last=False):
    path.mkdir(parents=True)
    steps = steps or [1000 * (i + 1) for i in range(len(returns))]
    lines = [json.dumps({"env_steps": s, "eval/return_mean": r, "perf/wall_s": w})
             for s, r, w in zip(steps, returns, walls)]
    text = "\n".join(lines) + "\n" + ('{"env_steps": 99' if cut_last else "")
    (path / "metrics.jsonl").write_text(text)
    return path


def test_one_run_resumed_clock_and_cut_line(tmp_path):
    run = _run(tmp_path / "r", [-900.0, -300.0, -150.0], [2.0, 5.0, 1.5], cut_last=True)
    curve = curves.read_curve(run)
    assert curve["env_steps"].tolist() == [1000, 2000, 3000]
    # the third line was logged after a resume (its clock restarted): cumulative time
    assert curve["wall_s"].tolist() == [2.0, 5.0, 6.5]


def test_group_mean_and_95_band_over_seeds(tmp_path):
    group = tmp_path / "g"
    values = [[-1000.0, -200.0], [-800.0, -150.0], [-600.0, -160.0]]
    members = []
    for seed, rets in enumerate(values):
        _run(group / f"seed_{seed}", rets, [1.0 + seed, 2.0 + seed])
        members.append({"dir": f"seed_{seed}", "seed": seed, "values": {}})
    (group / "group.json").write_text(json.dumps({"members": members, "sweep": {}}))
    [(label, curve)] = curves.curves_of(group)
    assert label == "g" and curve["seeds"] == 3
    at = np.asarray(values)
    np.testing.assert_allclose(curve["mean"], at.mean(axis=0))
    half = stats.t.ppf(0.975, 2) * at.std(axis=0, ddof=1) / math.sqrt(3)
    np.testing.assert_allclose(curve["high"], at.mean(axis=0) + half)
    np.testing.assert_allclose(curve["wall_s"], [2.0, 3.0])


def test_not_a_run_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no metrics.jsonl"):
        curves.curves_of(tmp_path)
    proc = subprocess.run([sys.executable, str(ROOT / "viz.py"), "--curves",
                           str(tmp_path / "nope")], capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "no such directory" in proc.stderr and "Traceback" not in proc.stderr
