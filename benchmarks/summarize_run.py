"""One line per run directory: final/best deterministic eval, first env step reaching a
threshold, wall-clock and throughput, read from its metrics.jsonl.

    .venv/bin/python benchmarks/summarize_run.py RUN_DIR [RUN_DIR ...] [--threshold 200]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def summarize(run_dir: Path, threshold: float | None) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [(r["env_steps"], r["eval/return_mean"]) for r in rows]
    reached = None
    if threshold is not None:
        reached = next((step for step, value in evals if value >= threshold), None)
    wall = rows[-1]["perf/wall_s"]
    return {"run": run_dir.name, "env_steps": rows[-1]["env_steps"],
            "final_eval": round(evals[-1][1], 1), "best_eval": round(max(v for _, v in evals), 1),
            "threshold": threshold, "first_step_at_threshold": reached,
            "wall_min": round(wall / 60, 1),
            "env_steps_per_s": round(rows[-1]["env_steps"] / wall, 1)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--threshold", type=float)
    args = p.parse_args()
    for run in args.runs:
        print(json.dumps(summarize(run, args.threshold)))


if __name__ == "__main__":
    main()
