"""Ablation: each SAC ingredient (README, "SAC ingredients") on top of an env's preset, both
actors, N seeds trained as one group per (variant, actor) through the real command:

    .venv/bin/python benchmarks/ablation.py [--env pendulum] [--seeds 5] [--only NAME ...]
        [--total-steps N]   # a shorter budget than the preset's, where learning is not done

For each run: `train.py --env ENV --num-seeds N [--baseline] FLAGS --quiet`. Appends one JSON
line per (variant, actor) to benchmarks/results/ablation.jsonl (final eval of every seed, the
group's wall-clock, ProtoSAC's `proto/effective` at the last chunk) and prints a markdown
table: mean final eval (min), ProtoSAC vs SAC, and the change against the preset.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "ablation.jsonl"

# (name, flags). C51's value range is per env: Pendulum's rewards lie in [-16.3, 0] and
# gamma = 0.99, so returns lie in [-1630, 0] (plus the entropy bonus).
VARIANTS = {
    "pendulum": [
        ("preset", []),
        ("n-step 3", ["--n-step", "3"]),
        ("LayerNorm (critic)", ["--layer-norm", "critic"]),
        ("AdamW 0.01", ["--weight-decay", "0.01"]),
        ("C51 (101 atoms)", ["--num-atoms", "101", "--v-min", "-1700", "--v-max", "100"]),
        ("sample once", ["--sample-once"]),
        ("zero-init heads", ["--zero-init-heads"]),
        ("CrossQ critics", ["--crossq"]),
    ],
}


def run_group(env: str, seeds: int, baseline: bool, flags: list[str]) -> dict:
    """One `train.py --num-seeds` group: its seeds' final / best evals and proto/effective."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "group"
        argv = [sys.executable, str(ROOT / "train.py"), "--env", env, "--num-seeds", str(seeds),
                "--seed", "0", *(["--baseline"] if baseline else []), *flags, "--out", str(out),
                "--quiet", "--no-progress", "--no-tensorboard"]
        t0 = time.perf_counter()
        proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode:
            raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stderr[-2000:]}")
        summary = json.loads((out / "seeds.json").read_text())
        effective = []
        if not baseline:
            for member in summary["members"]:
                lines = (out / f"seed_{member['seed']}" / "metrics.jsonl").read_text().splitlines()
                effective.append(json.loads(lines[-1]).get("proto/effective"))
    return {"final_eval": [m["final_eval"] for m in summary["members"]],
            "best_eval": [m["best_eval"] for m in summary["members"]],
            "effective": effective, "group_wall_s": round(wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="pendulum", choices=sorted(VARIANTS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    parser.add_argument("--total-steps", type=int, help="env steps (default: the preset's)")
    args = parser.parse_args()
    budget = ["--total-steps", str(args.total_steps)] if args.total_steps else []
    rows = []
    for name, flags in VARIANTS[args.env]:
        if args.only and name not in args.only:
            continue
        for baseline in (False, True):
            row = {"env": args.env, "variant": name, "flags": flags,
                   "total_steps": args.total_steps,
                   "algo": "sac" if baseline else "protosac", "seeds": list(range(args.seeds)),
                   **run_group(args.env, args.seeds, baseline, [*flags, *budget]),
                   "date": time.strftime("%Y-%m-%d"), "machine": platform.machine(),
                   "cpus": os.cpu_count()}
            rows.append(row)
            print(json.dumps(row), flush=True)
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            with RESULTS.open("a") as f:
                f.write(json.dumps(row) + "\n")
    print(table(rows))


def _mean(xs):
    return sum(xs) / len(xs)


def table(rows: list[dict]) -> str:
    by = {(r["variant"], r["algo"]): r for r in rows}
    base = {a: by.get(("preset", a)) for a in ("protosac", "sac")}
    out = ["| variant | ProtoSAC final eval, mean (min) | vs preset | SAC final eval, mean (min) "
           "| vs preset | ProtoSAC vs SAC | ProtoSAC proto/effective (training batch, last "
           "chunk) | group wall s (ProtoSAC / SAC) |", "|---|---|---|---|---|---|---|---|"]
    for variant in dict.fromkeys(r["variant"] for r in rows):
        p, s = by.get((variant, "protosac")), by.get((variant, "sac"))
        if p is None or s is None:
            continue
        mp, ms = _mean(p["final_eval"]), _mean(s["final_eval"])

        def delta(r, a):
            return "" if base[a] is None or variant == "preset" else \
                f"{_mean(r['final_eval']) - _mean(base[a]['final_eval']):+.1f}"

        eff = [e for e in p["effective"] if e is not None]
        eff_range = f"{min(eff):.2f}-{max(eff):.2f}" if eff else "n/a"
        out.append(f"| {variant} | {mp:.1f} ({min(p['final_eval']):.1f}) | {delta(p, 'protosac')} "
                   f"| {ms:.1f} ({min(s['final_eval']):.1f}) | {delta(s, 'sac')} "
                   f"| {100 * (mp - ms) / abs(ms):+.1f} % | {eff_range} "
                   f"| {p['group_wall_s']:.0f} / {s['group_wall_s']:.0f} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
