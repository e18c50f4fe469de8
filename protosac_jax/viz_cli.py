"""Command line of viz.py (see its docstring). Known user errors: one line on stderr, exit 2."""

from __future__ import annotations

import sys
from pathlib import Path

from protosac_jax.cli import OneLineParser
from protosac_jax.config import ConfigError
from protosac_jax.outputs import WriteError, writing


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
    a("--prune", action="store_true",
      help="prune to the most-used prototypes instead: pruning.json, pruning.png and the "
      "pruned agent (an inference-only run) in <out>/pruned")
    a("--prune-share", type=float, default=0.95,
      help="usage share the pruned agent keeps (default 0.95)")
    a("--keep", help="comma-separated numbers of prototypes to evaluate (--prune; default "
      "1,2,4,..,K)")
    a("--curves", nargs="+", metavar="RUN",
      help="plot learning curves instead: eval return vs env steps and vs wall-clock of run "
      "or group directories (a group's seeds as mean and 95%% band) -> <out>/curves.<format>")
    a("--quiet", action="store_true")
    return p


def _ints(flag: str, text: str) -> list[int]:
    try:
        return [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise ConfigError(f"{flag} expects comma-separated ints, got {text!r}") from None


def main(argv=None) -> int:
    try:
        return _main(argv)
    except WriteError as err:  # a full disk, a read-only --out: one line, exit 1
        print(f"viz.py: error: {err}", file=sys.stderr)
        return 1


def _main(argv=None) -> int:
    from protosac_jax import envs, visualize
    from protosac_jax.checkpoint import CheckpointError
    from protosac_jax.render import RenderUnavailable

    try:
        args = build_parser().parse_args(argv)
        if args.curves:
            return _curves(args)
        if args.ckpt is None:
            raise ConfigError("--ckpt RUN_DIR is required")
        if args.episodes < 1 or args.top_k < 1:
            raise ConfigError("--episodes and --top-k must be >= 1")
        run = Path(args.ckpt)
        if not run.exists():
            raise ConfigError(f"--ckpt {run}: no such run directory")
        import protosac_jax
        from protosac_jax.trainer import enable_compilation_cache

        enable_compilation_cache()  # a second export of a run loads its programs
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
        if (args.faithfulness or args.prune) and not agent.is_proto:
            raise ConfigError(f"--{'prune' if args.prune else 'faithfulness'} needs a ProtoSAC "
                              "checkpoint; this is a --baseline (plain SAC) run")
        if args.faithfulness and args.prune:
            raise ConfigError("give --faithfulness or --prune, not both")
        with writing(out):
            return _export(args, agent, out)
    except (ConfigError, CheckpointError, envs.EnvError, RenderUnavailable,
            visualize.VizError) as err:
        print(f"viz.py: error: {err}", file=sys.stderr)
        return 2


def _curves(args) -> int:
    from protosac_jax import curves
    from protosac_jax.trainer import check_writable_dir

    if args.ckpt is not None:
        raise ConfigError("give --ckpt or --curves, not both")
    paths = [Path(p) for p in args.curves]
    out = Path(args.out) if args.out is not None else paths[0] / "viz"
    for path in paths:
        curves.curves_of(path)  # every argument readable before anything is written
    check_writable_dir(out, must_be_empty=False)  # curves.* in it are replaced
    with writing(out):
        result = curves.export_curves(paths, out, fmt=args.format)
    labels = ", ".join(f"{c['label']} ({c['seeds']})" for c in result["curves"])
    print(f"curves: {labels} -> {result['figure']}")
    return 0


def _export(args, agent, out: Path) -> int:
    from protosac_jax import visualize
    from protosac_jax.checkpoint import is_inference_only
    from protosac_jax.trainer import check_writable_dir

    if args.prune:
        keep = None if args.keep is None else _ints("--keep", args.keep)
        pruned_dir = out / "pruned"
        previous = is_inference_only(pruned_dir)
        if not previous:
            check_writable_dir(pruned_dir)  # something else lives there: refuse
        if not 0.0 < args.prune_share <= 1.0:
            raise ConfigError(f"--prune-share must be in (0, 1], got {args.prune_share}")
        if previous:
            import shutil

            shutil.rmtree(pruned_dir)  # a previous --prune output: replaced
        result = visualize.export_pruning(agent, out, share=args.prune_share, ns=keep,
                                          episodes=args.episodes, seed=args.seed,
                                          fmt=args.format, pruned_dir=pruned_dir)
        print(f"pruning: kept {result['n_kept']} -> return "
              f"{[round(x, 1) for x in result['return']]}; {result['n_at_share']} of "
              f"{result['num_prototypes']} prototypes carry {args.prune_share:.0%} of usage "
              f"(return {result['return_at_share']:.1f} vs {result['return_full']:.1f}); "
              f"pruned agent -> {pruned_dir}")
        return 0
    if args.faithfulness:
        ks = _ints("--ks", args.ks)
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
    returns = summary["returns"]
    print(f"viz: {len(returns)} episodes, mean return {sum(returns) / len(returns):.1f}; "
          f"wrote {', '.join(sorted(Path(p).name for p in summary['files'].values()))} "
          f"to {out} in {summary['wall_s']:.1f} s")
    return 0

