"""Train runs and measure how readable their decisions are (issue #15's table).

    python benchmarks/decisions.py --env pendulum --seeds 0 1 2 3 4 [train.py flags ...]
    python benchmarks/decisions.py --env pendulum --seeds 0 1 2 3 4 --group [flags ...]
    python benchmarks/decisions.py --env pendulum --measure-group DIR --tag T [flags ...]
    python benchmarks/decisions.py --measure RUN [RUN ...] --tag T [flags ...]

For each seed: `train.py --env ENV --seed S --out OUT/<tag>-s<S> <flags>`, then on the final
policy (`--episodes` evaluation episodes, default 5, seeds 0..N-1) the decision metrics viz.py
writes to viz.json ("decisions"), the top-1 deletion ratio (viz.py --faithfulness, k=1) and
wall-clock. One JSON line per run is appended to --results
(benchmarks/results/decisions.jsonl). `--group` trains
the seeds (consecutive, from the first) as one program (`train.py --num-seeds`) and measures
each member; `--measure-group DIR` measures the members of a group trained earlier (the flags
are recorded as given, so give the ones it was trained with); `--measure RUN ...` measures
runs trained earlier, one at a time (a stopped run: its latest checkpoint).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(run: Path, episodes: int = 5) -> dict:
    import jax.numpy as jnp
    import numpy as np

    import protosac_jax
    from protosac_jax import interpret, sac, visualize

    agent = protosac_jax.load(run)
    eps = visualize.play_episodes(agent.config, agent.spec, agent.actor, agent.learner,
                                  episodes, seed=0)
    out = {"return_eval": float(np.mean([e.ret for e in eps])), "episodes": episodes}
    if agent.is_proto:
        out.update(visualize.decisions(agent, eps, seed=0))
        obs = sac.prepare_obs(agent.learner, jnp.asarray(np.concatenate([e.obs for e in eps])),
                              agent.config.sac)
        change = interpret.action_change_curves(agent.actor, agent.params, obs, [1])
        out["deletion_top1_vs_random"] = (change["action_change_top"][0]
                                          / max(change["action_change_random"][0], 1e-12))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="pendulum")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--tag", default="default")
    p.add_argument("--out", default="/tmp/decisions")
    p.add_argument("--results", default=str(ROOT / "benchmarks/results/decisions.jsonl"))
    p.add_argument("--group", action="store_true",
                   help="train the seeds as one group (train.py --num-seeds)")
    p.add_argument("--measure-group", help="measure the members of this trained group")
    p.add_argument("--episodes", type=int, default=5,
                   help="evaluation episodes of the final policy the metrics are measured on "
                   "(seeds 0..N-1; default 5, viz.py's); rows record it as `episodes`")
    p.add_argument("--measure", nargs="+", metavar="RUN",
                   help="measure these trained runs (one seed each; --tag names the rows)")
    args, flags = p.parse_known_args()
    if args.measure:
        measure_runs(args, flags)
        return
    if args.group or args.measure_group:
        measure_group(args, flags)
        return
    for seed in args.seeds:
        run = Path(args.out) / f"{args.env}-{args.tag}-s{seed}"
        t0 = time.time()
        subprocess.run([sys.executable, str(ROOT / "train.py"), "--env", args.env, "--seed",
                        str(seed), "--out", str(run), "--no-progress", "--quiet", *flags],
                       check=True)
        wall = time.time() - t0
        summary = json.loads((run / "summary.json").read_text())
        row = {"env": args.env, "tag": args.tag, "seed": seed, "flags": flags,
               "train_wall_s": round(wall, 1), "final_eval": summary.get("final_eval"),
               **measure(run, args.episodes), "date": time.strftime("%Y-%m-%d")}
        print(json.dumps(row), flush=True)
        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        with open(args.results, "a") as f:
            f.write(json.dumps(row) + "\n")


def _append(args, row: dict) -> None:
    print(json.dumps(row), flush=True)
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a") as f:
        f.write(json.dumps(row) + "\n")


def measure_runs(args, flags) -> None:
    for run in map(Path, args.measure):
        config = json.loads((run / "config.json").read_text())
        summary = run / "summary.json"  # absent if the run was stopped
        final = json.loads(summary.read_text()).get("final_eval") if summary.exists() else None
        _append(args, {"env": config["env"], "tag": args.tag, "seed": config["seed"],
                       "flags": flags, "run": str(run), "final_eval": final,
                       **measure(run, args.episodes), "date": time.strftime("%Y-%m-%d")})


def measure_group(args, flags) -> None:
    group = Path(args.measure_group or Path(args.out) / f"{args.env}-{args.tag}-group")
    wall = None
    if not args.measure_group:
        if args.seeds != list(range(args.seeds[0], args.seeds[0] + len(args.seeds))):
            raise SystemExit("--group trains consecutive seeds (--seeds S S+1 ...)")
        t0 = time.time()
        subprocess.run([sys.executable, str(ROOT / "train.py"), "--env", args.env, "--seed",
                        str(args.seeds[0]), "--num-seeds", str(len(args.seeds)), "--out",
                        str(group), "--no-progress", "--quiet", *flags], check=True)
        wall = round(time.time() - t0, 1)
    members = json.loads((group / "seeds.json").read_text())["members"]
    for member in members:
        row = {"env": args.env, "tag": args.tag, "seed": member["seed"], "flags": flags,
               "group_wall_s": wall, "group_size": len(members),
               "final_eval": member["final_eval"],
               **measure(group / member["dir"], args.episodes),
               "date": time.strftime("%Y-%m-%d")}
        print(json.dumps(row), flush=True)
        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        with open(args.results, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
