"""Learning curves of run directories: `viz.py --curves RUN_OR_GROUP [...]`.

Each argument is a run directory (its metrics.jsonl) or a group directory (train.py
--num-seeds / --sweep: group.json). A group's members that share swept values are one curve:
the mean over seeds with a 95 % confidence band for the mean (Student t, n - 1 degrees of
freedom; no band for one seed). Two panels: deterministic evaluation return vs env steps and
vs training wall-clock (perf/wall_s, made cumulative across resumes). Writes curves.<fmt> and
curves.json (the plotted numbers).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from protosac_jax import outputs
from protosac_jax.config import ConfigError


def read_curve(run_dir: Path) -> dict[str, np.ndarray]:
    """(env steps, cumulative wall-clock, eval return) of one run's evaluations."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise ConfigError(f"--curves {run_dir}: not a run directory (no metrics.jsonl)")
    steps, walls, returns = [], [], []
    offset = last_wall = 0.0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill: not a record
        value = record.get("eval/return_mean")
        if value is None:
            continue
        wall = float(record.get("perf/wall_s") or 0.0)
        if wall < last_wall:  # a resumed run starts its clock again
            offset += last_wall
        last_wall = wall
        steps.append(int(record["env_steps"]))
        walls.append(offset + wall)
        returns.append(float(value))
    if not steps:
        raise ConfigError(f"--curves {run_dir}: metrics.jsonl has no evaluation yet")
    return {"env_steps": np.asarray(steps), "wall_s": np.asarray(walls),
            "return": np.asarray(returns)}


def _t95(n: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.975, n - 1))


def aggregate(curves: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Mean over runs at the env steps all of them reached, with a 95 % band for the mean,
    and the mean wall-clock there."""
    common = sorted(set.intersection(*[set(c["env_steps"].tolist()) for c in curves]))
    if not common:
        raise ConfigError("--curves: the runs of a group share no evaluation step")
    rows = np.stack([[c["return"][list(c["env_steps"]).index(s)] for s in common]
                     for c in curves])
    walls = np.stack([[c["wall_s"][list(c["env_steps"]).index(s)] for s in common]
                      for c in curves])
    n = len(curves)
    mean = rows.mean(axis=0)
    half = (_t95(n) * rows.std(axis=0, ddof=1) / math.sqrt(n)) if n > 1 else np.zeros_like(mean)
    return {"env_steps": common, "wall_s": walls.mean(axis=0).tolist(),
            "mean": mean.tolist(), "low": (mean - half).tolist(),
            "high": (mean + half).tolist(), "seeds": n}


def curves_of(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(label, aggregated curve) for a run (one) or a group (one per value combination)."""
    from protosac_jax import groups

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"--curves {path}: no such directory")
    if not groups.is_group(path):
        return [(path.name, aggregate([read_curve(path)]))]
    group = groups.read_group(path)
    by_values: dict[str, list[Path]] = {}
    for member in group["members"]:
        label = ", ".join(f"{k}={v:g}" for k, v in member["values"].items())
        by_values.setdefault(label, []).append(path / member["dir"])
    return [(f"{path.name}" + (f" {label}" if label else ""),
             aggregate([read_curve(d) for d in dirs])) for label, dirs in by_values.items()]


def export_curves(paths: list[Path], out: Path, fmt: str = "png") -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [item for p in paths for item in curves_of(p)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for label, curve in series:
        name = f"{label} ({curve['seeds']} seed{'s' if curve['seeds'] > 1 else ''})"
        for ax, x in zip(axes, ("env_steps", "wall_s")):
            line, = ax.plot(curve[x], curve["mean"], label=name)
            if curve["seeds"] > 1:
                ax.fill_between(curve[x], curve["low"], curve["high"], alpha=0.2,
                                color=line.get_color())
    axes[0].set_xlabel("env steps")
    axes[1].set_xlabel("training wall-clock (s)")
    for ax in axes:
        ax.set_ylabel("eval return (deterministic)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("mean over seeds; band: 95 % confidence interval of the mean", fontsize=9)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    figure = out / f"curves.{fmt}"
    fig.savefig(figure, dpi=110)
    plt.close(fig)
    data = {"curves": [{"label": label, **curve} for label, curve in series]}
    outputs.write_text(out / "curves.json", json.dumps(data, indent=2))
    return {"figure": figure, **data}
