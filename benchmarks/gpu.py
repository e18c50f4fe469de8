"""One command for an accelerator: humanoid throughput at many env counts, memory, and a
5-minute learning curve, written into benchmarks/RESULTS.md's GPU section.

    .venv/bin/python benchmarks/gpu.py                 # on a GPU/TPU machine, < 10 minutes
    .venv/bin/python benchmarks/gpu.py --allow-cpu --env hopper --num-envs 16 --minutes 0.5 \\
        --steps 512 --results /tmp/R.md              # the same code path, tiny, on a CPU

1. For each --num-envs (default 256 1024 2048 4096) and both actors: env-only and learning
   env-steps/s and updates/s of the device loop (benchmarks/throughput.py's `measure`: one
   compile, then timed scans of random collection and of collection + the preset's updates),
   and the device's peak memory in use (`memory_stats()`, where the backend reports it).
2. A learning curve: `train.py --env humanoid --num-envs 2048` (ProtoSAC, preset) run as a
   user runs it for --minutes (default 5), then stopped with SIGINT (the run saves and exits
   cleanly); its evaluations (env steps, seconds, return) are the curve.
3. The tables replace the text between `<!-- gpu:begin -->` and `<!-- gpu:end -->` in
   --results (default benchmarks/RESULTS.md), with the command, device, date and versions.

Without an accelerator it stops with one line (exit 2) unless --allow-cpu is given.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- gpu:begin -->", "<!-- gpu:end -->"


def peak_memory_gib(device) -> float | None:
    stats = device.memory_stats() or {}
    peak = stats.get("peak_bytes_in_use", stats.get("bytes_in_use"))
    return None if peak is None else peak / 2**30


def learning_curve(env: str, num_envs: int, minutes: float, eval_every: int, out: Path):
    """Train as a user does, stop with SIGINT after `minutes`; -> [(env_steps, s, return)]."""
    command = [sys.executable, str(ROOT / "train.py"), "--env", env, "--num-envs",
               str(num_envs), "--eval-every", str(eval_every), "--out", str(out),
               "--no-progress", "--no-tensorboard"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        proc.wait(timeout=minutes * 60)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # finish the chunk, save, exit
        proc.wait(timeout=600)
    wall = time.perf_counter() - t0
    log = proc.stdout.read() if proc.stdout else ""
    metrics = out / "metrics.jsonl"
    if not metrics.exists():
        raise SystemExit(f"gpu.py: the learning run wrote no metrics (exit {proc.returncode}):"
                         f" {log.strip().splitlines()[-1:] or ''}")
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    curve = [(m["env_steps"], m.get("perf/wall_s", float("nan")), m["eval/return_mean"])
             for m in rows if "eval/return_mean" in m]
    first = next((m["perf/time_to_first_chunk_s"] for m in rows
                  if "perf/time_to_first_chunk_s" in m), float("nan"))
    return curve, first, wall


def render(args, device, throughput, curve, first_chunk_s, wall) -> str:
    import jax

    lines = [
        f"Command: `python benchmarks/gpu.py {' '.join(sys.argv[1:])}`".rstrip(),
        f"Device: {device.device_kind} ({jax.default_backend()}) x{jax.device_count()}; "
        f"date {datetime.date.today()}; jax {jax.__version__}.",
        "",
        "| env | num envs | actor | env-only steps/s | learning steps/s | updates/s | UTD | "
        "batch | peak memory so far GiB | compile+first scan s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in throughput:
        memory = "n/a" if r["memory"] is None else f"{r['memory']:.2f}"
        lines.append(f"| {r['env']} | {r['num_envs']} | {r['actor']} | {r['env_only']:.0f} | "
                     f"{r['learning_steps']:.0f} | {r['updates']:.0f} | {r['utd']:.3g} | "
                     f"{r['batch']} | {memory} | {r['compile_s']:.1f} |")
    lines += ["", f"Learning curve: `train.py --env {args.curve_env} --num-envs "
              f"{args.curve_envs}` (ProtoSAC, preset), given at most {args.minutes:g} min "
              f"(whole process {wall:.0f} s; first chunk {first_chunk_s:.1f} s):", "",
              "| env steps | seconds | eval return |", "|---|---|---|"]
    lines += [f"| {steps} | {seconds:.0f} | {ret:.1f} |" for steps, seconds, ret in curve]
    if not curve:
        lines.append("| (no evaluation finished) | | |")
    return "\n".join(lines)


def write_section(results: Path, text: str) -> None:
    """Replace the GPU section of `results` (appended, with its markers, if missing)."""
    old = results.read_text() if results.exists() else ""
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        new = head + block + rest.split(END, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n## GPU (benchmarks/gpu.py)\n\n" + block + "\n"
    results.write_text(new)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="humanoid", help="throughput env (default humanoid)")
    p.add_argument("--num-envs", type=int, nargs="+", default=[256, 1024, 2048, 4096])
    p.add_argument("--steps", type=int, default=65_536, help="env steps per timed scan")
    p.add_argument("--buffer-size", type=int, default=1_000_000)
    p.add_argument("--curve-env", default="humanoid")
    p.add_argument("--curve-envs", type=int, default=2048)
    p.add_argument("--minutes", type=float, default=5.0, help="learning-curve budget")
    p.add_argument("--eval-every", type=int, default=131_072)
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    p.add_argument("--allow-cpu", action="store_true",
                   help="run on a CPU (a smoke test of this script; the numbers mean little)")
    args = p.parse_args(argv)

    import jax

    device = jax.devices()[0]
    if device.platform == "cpu" and not args.allow_cpu:
        print("gpu.py: no accelerator here (jax sees only CPU devices); run it where a GPU is, "
              "after pip install -e '.[cuda12]', or pass --allow-cpu for a smoke test",
              file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from throughput import measure

    from protosac_jax.trainer import enable_compilation_cache

    enable_compilation_cache()
    throughput = []
    for num_envs in args.num_envs:
        for baseline in (True, False):
            r = measure(args.env, num_envs, baseline, args.steps, args.buffer_size)
            r.update(env=args.env, num_envs=num_envs, actor="SAC" if baseline else "ProtoSAC",
                     memory=peak_memory_gib(device))
            throughput.append(r)
            print(json.dumps(r), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        curve, first, wall = learning_curve(args.curve_env, args.curve_envs, args.minutes,
                                            args.eval_every, Path(tmp) / "run")
    text = render(args, device, throughput, curve, first, wall)
    write_section(args.results, text)
    print(text)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("MUJOCO_GL", "egl")
    sys.exit(main())
