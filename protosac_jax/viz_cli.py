"""Command line of viz.py (see its docstring). Known user errors: one line on stderr, exit 2."""

from __future__ import annotations

import sys
from pathlib import Path

from protosac_jax.cli import OneLineParser
from protosac_jax.config import ConfigError


def build_parser() -> OneLineParser:
    p = OneLineParser(prog="viz.py", description="Export prototype grids, action plots, an "
                      "explained video and an HTML report for a trained run.")
    a = p.add_argument
    a("--ckpt", "--model_path", "--model-path", dest="ckpt",
      help="run directory (or one checkpoint step directory)")
    a("--out", "--save_dir", "--save-dir", dest="out", help="output directory (default <run>/viz)")
    a("--episodes", type=int, default=5, help="evaluation episodes (default 5)")
    a("--top-k", "--top_k", type=int, default=3, help="prototypes shown per video frame")
    a("--format", choices=["png", "svg"], default="png", help="figure format")
    a("--environment", type=int, help="the original's env index (must match the run)")
    a("--seed", type=int, default=0, help="seed of the first evaluation episode")
    a("--best", action="store_true", help="use the best-by-eval checkpoint, not the newest")
    a("--no-video", action="store_true")
    a("--faithfulness", action="store_true",
      help="run the deletion test instead: faithfulness.json and faithfulness.png")
    a("--ks", default="1,2,4,8", help="numbers of prototypes deleted (--faithfulness)")
    a("--quiet", action="store_true")
    return p


def main(argv=None) -> int:
    from protosac_jax import envs, visualize
    from protosac_jax.checkpoint import CheckpointError
    from protosac_jax.render import RenderUnavailable

    try:
        args = build_parser().parse_args(argv)
        if args.ckpt is None:
            raise ConfigError("--ckpt RUN_DIR is required")
        if args.episodes < 1 or args.top_k < 1:
            raise ConfigError("--episodes and --top-k must be >= 1")
        run = Path(args.ckpt)
        if not run.exists():
            raise ConfigError(f"--ckpt {run}: no such run directory")
        import protosac_jax

        agent = protosac_jax.load(run, best=args.best)
        if args.environment is not None:
            wanted = envs.resolve_index(args.environment)
            if wanted not in (agent.config.env, agent.spec.env_id):
                raise ConfigError(f"--environment {args.environment} is {wanted}, but the run "
                                  f"was trained on {agent.config.env}")
        run_dir = run if (run / "config.json").exists() else run.parents[2]
        out = Path(args.out) if args.out is not None else run_dir / "viz"
        from protosac_jax.trainer import check_writable_dir

        check_writable_dir(out, must_be_empty=False)  # viz outputs in it are replaced
        if args.faithfulness:
            if not agent.is_proto:
                raise ConfigError("--faithfulness needs a ProtoSAC checkpoint; this is a "
                                  "--baseline (plain SAC) run")
            try:
                ks = [int(k) for k in args.ks.split(",") if k.strip()]
            except ValueError:
                raise ConfigError(f"--ks expects comma-separated ints, got {args.ks!r}") from None
            result = visualize.export_faithfulness(agent, out, ks, episodes=args.episodes,
                                                   seed=args.seed, fmt=args.format)
            print(f"faithfulness: k={result['k']} action change top "
                  f"{[round(x, 3) for x in result['action_change_top']]} vs random "
                  f"{[round(x, 3) for x in result['action_change_random']]}; return top "
                  f"{[round(x, 1) for x in result['return_top']]} vs random "
                  f"{[round(x, 1) for x in result['return_random']]} (all: "
                  f"{result['return_full']:.1f}) -> {out}")
            return 0
        log = (lambda *a, **k: None) if args.quiet else print
        summary = visualize.export(agent, out, episodes=args.episodes, top_k=args.top_k,
                                   fmt=args.format, video=not args.no_video, seed=args.seed,
                                   log=log)
    except (ConfigError, CheckpointError, envs.EnvError, RenderUnavailable,
            visualize.VizError) as err:
        print(f"viz.py: error: {err}", file=sys.stderr)
        return 2
    returns = summary["returns"]
    print(f"viz: {len(returns)} episodes, mean return {sum(returns) / len(returns):.1f}; "
          f"wrote {', '.join(sorted(Path(p).name for p in summary['files'].values()))} "
          f"to {out} in {summary['wall_s']:.1f} s")
    return 0

