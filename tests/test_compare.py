"""benchmarks/compare.py: the table/plot code on fake curves, and one real tiny run of each
system through the worker subprocess (proves the peers and our trainer run as configured)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import compare  # noqa: E402


def _fake(system, seed, sps, wall, final):
    steps = [1000, 2000, 3000]
    curve = [{"env_steps": s, "wall_s": 2.0 + s / sps + 0.5 * i, "return": final * 3000 / s,
              "eval_s": 0.5 * i, "checkpoint_s": 0.0} for i, s in enumerate(steps)]
    return {"env": "Pendulum-v1", "system": system, "seed": seed, "env_steps": 3000,
            "updates": 2000, "env_steps_per_s": sps / 2, "updates_per_s": sps / 3,
            "steady_env_steps_per_s": compare.steady_rate(curve, 2000),
            "process_wall_s": wall, "final_return": final, "curve": curve}


FAKE = [_fake("sb3", 0, 100.0, 40.0, -150.0), _fake("sb3", 1, 100.0, 40.0, -170.0),
        _fake("sbx", 0, 200.0, 20.0, -160.0), _fake("sbx", 1, 200.0, 20.0, -160.0),
        _fake("ours-sac", 0, 300.0, 10.0, -140.0), _fake("ours-sac", 1, 300.0, 10.0, -160.0),
        _fake("ours-protosac", 0, 250.0, 8.0, -150.0)]


def test_summary_ratios_and_table_on_fake_curves(tmp_path):
    rows = {r["system"]: r for r in compare.summarize(FAKE)}
    assert list(rows) == ["sb3", "sbx", "ours-sac", "ours-protosac"]  # peers first
    ours = rows["ours-sac"]
    assert ours["seeds"] == 2 and ours["final_return"] == pytest.approx(-150.0)
    assert ours["final_return_std"] == pytest.approx(10.0)
    assert ours["steady_env_steps_per_s"] == pytest.approx(300.0)  # eval time taken out
    assert ours["env_steps_per_s"] == pytest.approx(150.0)
    assert ours["speed_vs_sb3"] == pytest.approx(3.0)
    assert ours["speed_vs_sbx"] == pytest.approx(1.5)
    assert ours["wall_vs_sbx"] == pytest.approx(2.0)  # whole process, higher = faster
    assert rows["ours-protosac"]["wall_vs_sb3"] == pytest.approx(5.0)
    assert rows["sbx"]["speed_vs_sbx"] == pytest.approx(1.0)
    table = compare.markdown_table(compare.summarize(FAKE))
    lines = table.splitlines()
    assert len(lines) == 2 + 4 and "3.00x" in lines[4] and "1.50x" in lines[4]
    assert "-150.0 ± 10.0" in lines[4]
    paths = compare.plot(FAKE, tmp_path)
    assert [p.name for p in paths] == ["compare-Pendulum-v1.png"] and paths[0].stat().st_size
    # a missing peer gives a dash, not a crash
    assert "–" in compare.markdown_table(compare.summarize(FAKE[4:]))


def test_report_merges_runs_of_the_same_key(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in FAKE[:2]))
    merged = compare._merge(path, [_fake("sb3", 0, 111.0, 1.0, 0.0)])
    assert len(merged) == 2 and {r["env_steps_per_s"] for r in merged} == {50.0, 55.5}


TINY = {"steps": 300, "learning_starts": 200, "lr": 1e-3, "gamma": 0.99, "tau": 0.005,
        "eval_every": 150, "eval_episodes": 1}


@pytest.mark.parametrize("system", ["sb3", "sbx", "ours-sac", "ours-protosac",
                                    "ours-protosac-gymnax"])
def test_each_system_runs_for_real_in_a_subprocess(system):
    record = compare.run_one(system, "Pendulum-v1", 0, TINY, timeout=600)
    assert record["env_steps"] == 300 and record["updates"] in (100, 101)
    assert [p["env_steps"] for p in record["curve"]] == [150, 300]
    assert record["final_return"] < 0 and record["env_steps_per_s"] > 0
    assert record["steady_env_steps_per_s"] is None  # no full interval after learning starts
    assert record["process_wall_s"] >= record["train_wall_s"] > 0
