"""Command-line parsing for train.py: flags -> TrainConfig.

Known user errors become one line on stderr and exit code 2 (no traceback).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Any

from protosac_jax import config as config_lib
from protosac_jax import envs
from protosac_jax.config import ConfigError, TrainConfig
from protosac_jax.envs import EnvError


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are a single line (no usage dump)."""

    def error(self, message):
        raise ConfigError(message)


def parse_bool(text: str) -> bool:
    """'True/true/1/yes' -> True, 'False/false/0/no' -> False, anything else is an error."""
    value = str(text).strip().lower()
    if value in ("true", "1", "yes", "y", "on"):
        return True
    if value in ("false", "0", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def parse_optional_float(text: str):
    """A float, or 'none' (kept as the string until the config is built: None means unset)."""
    if str(text).strip().lower() == "none":
        return "none"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or none, got {text!r}") from None


def parse_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive widths, got {text!r}")
    return sizes


def build_parser() -> OneLineParser:
    p = OneLineParser(
        prog="train.py",
        description="Train ProtoSAC (default) or plain SAC (--baseline) with JAX.",
        epilog="envs: " + envs.env_help() + ". Original indices (--environment): "
        + ", ".join(f"{i}={n}" for i, n in envs.ORIGINAL_INDICES.items()),
    )
    a = p.add_argument
    a("--env", help="env name or Gymnasium id (default: pendulum)")
    a("--environment", type=int, help="the original's env index 0..6")
    a("--backend", choices=list(envs.BACKENDS),
      help="auto (default: gymnax for Pendulum/MountainCar) or gymnasium (the original envs)")
    a("--frame-stack", type=int, help="Gymnasium pixel envs: frames stacked (CarRacing: 3)")
    a("--action-repeat", type=int, help="Gymnasium envs: env frames per step (CarRacing: 2)")
    a("--episodes", type=int, help="train for N episodes' worth of env steps (original flag)")
    a("--total-steps", "--total_steps", type=int, help="env steps, summed over envs")
    a("--num-envs", "--num_envs", type=int, help="parallel envs")
    a("--seed", type=int)
    a("--baseline", type=parse_bool, nargs="?", const=True,
      help="plain SAC instead of ProtoSAC (True/False; bare flag = True)")
    a("--num-prototypes", "--num_prototypes", type=int,
      help="K prototypes (default 32; LunarLander 64)")
    a("--latent-dim", type=int)
    a("--prototypes", choices=["states", "free"],
      help="states (default): each prototype is the encoding of a stored real state, re-chosen "
      "at projections; free: trainable latent vectors projected every --projection-every "
      "updates (the original ProtoSAC)")
    a("--similarity", choices=["log", "rbf", "softmax"],
      help="softmax (default), rbf, or ProtoPNet's log")
    a("--temperature", type=float,
      help="similarity temperature (initial value when it is learned; default 0.1)")
    a("--target-weight-entropy", type=parse_optional_float,
      help="mean per-state weight entropy the learned temperature holds (default 0.3; "
      "'none' = fixed --temperature)")
    a("--target-action-spread", type=parse_optional_float,
      help="most within-decision spread of the prototypes' actions a learned penalty allows "
      "(default 0.04; none = no penalty)")
    a("--constraint-share", type=float,
      help="share of the batch (its most blended states) the learned temperature and spread "
      "penalty hold at their targets (default 0.25; 1 = the batch mean)")
    a("--recent-share", type=float,
      help="prototype states: share of the k-means candidates drawn from the newest "
      "--recent-window of the buffer (default 0 = uniform over the buffer; envs drawn from "
      "captured frames: of the frame reservoir)")
    a("--rollout-share", type=float,
      help="prototype states: share of the k-means candidates drawn from deterministic "
      "episodes of the current policy run at each re-selection, and once more at the end "
      "(device envs; default 0.25 for Pendulum, else 0 = the buffer alone)")
    a("--rollout-episodes", type=int,
      help="deterministic episodes --rollout-share runs at each re-selection (default 4)")
    a("--guard-episodes", type=int,
      help="prototype states: the re-selection at the end of training keeps the best of "
      "--selection-proposals proposals, played on this many deterministic episodes (same "
      "starts), if it returns no less (by > 10%% of |return|) than the current states (device "
      "envs; default 32 for Pendulum, else 0 = one proposal, always taken)")
    a("--selection-proposals", type=int,
      help="proposals for the end-of-training re-selection (needs --guard-episodes; default "
      "8 for Pendulum, else 1)")
    a("--local-gain", type=float,
      help="bound b of each prototype's local feedback: it acts m_k + b tanh(G_k (z - p_k) / b) "
      "(pre-squash; default 0.25 for MJX locomotion and Pendulum, else 0; 0 with --distribution "
      "mixture); 0 = "
      "a constant action per prototype")
    a("--backward-temperature-scale", type=float,
      help="learn through softer weights: the policy acts with the weights at temperature tau, "
      "the actor loss's gradient reaches the encoder through those at this multiple of tau "
      "(straight-through; default 4 for LunarLander, else 1 = off)")
    a("--recent-window", type=float,
      help="newest share of the buffer's rows --recent-share draws from (default 0.2)")
    a("--normalize-latent", type=parse_bool,
      help="unit-length latents and prototypes (True/False; default True)")
    a("--distribution", choices=["blend", "mixture"])
    a("--decide", choices=["top1", "mean", "auto"],
      help="deterministic action: auto (default: the blend's mean; a mixture's top component), "
      "top1 (the deciding prototype's own action), mean (the weighted mean)")
    a("--projection-every", type=int, help="updates between projections (0 = off)")
    a("--projection-phase", type=float,
      help="where in each cycle projections fall, as a share of --projection-every in [0, 1): "
      "at updates u with (u + phase x every) a multiple of every (Gymnasium MuJoCo preset "
      "0.5: half a cycle before each evaluation; others 0)")
    a("--weight-entropy-coef", type=float,
      help="penalty on per-state weight entropy (crisper assignments; default 0.001)")
    a("--usage-entropy-coef", type=float,
      help="reward for batch usage entropy (every prototype used; default 0.01)")
    a("--proto-init", "--proto_init", choices=["random", "kmeans"],
      help="prototype init: random (default) or k-means of encoded warm-up states")
    a("--hidden", type=parse_sizes, help="network widths, e.g. 256,256")
    a("--lr", type=float, help="learning rate of actor, critic and temperature")
    a("--batch-size", type=int)
    a("--buffer-size", type=int)
    a("--learning-starts", type=int, help="random-action env steps before updates begin")
    a("--updates-per-step", type=float, help="gradient updates per env step")
    a("--noise-correlation", type=float, help="AR(1) exploration-noise correlation in [0,1)")
    a("--gamma", type=float)
    a("--n-step", type=int,
      help="n-step returns for the critic's target (default 1; cut at episode ends)")
    a("--num-atoms", type=int,
      help="distributional (C51) critic with this many atoms on [--v-min, --v-max] "
      "(default 0 = scalar critic)")
    a("--v-min", type=float, help="lowest return of the distributional critic's support")
    a("--v-max", type=float, help="highest return of the distributional critic's support")
    a("--layer-norm", choices=["none", "critic", "all"],
      help="LayerNorm before each hidden ReLU: none (default), critic, or all networks")
    a("--weight-decay", type=float,
      help="AdamW decoupled weight decay on the Dense kernels (default 0 = Adam)")
    a("--sample-once", type=parse_bool, nargs="?", const=True,
      help="draw an iteration's training batches in one call before its updates "
      "(default False: one draw per update)")
    a("--zero-init-heads", type=parse_bool, nargs="?", const=True,
      help="start the actor's action means at 0: the baseline's output layer, ProtoSAC's "
      "prototype means (default False)")
    a("--crossq", type=parse_bool, nargs="?", const=True,
      help="CrossQ critics: batch renormalisation, no target network, one joint pass over "
      "current and next pairs, Adam b1 0.5 (default False)")
    a("--init-alpha", type=float, help="initial SAC temperature alpha (default 1)")
    a("--target-entropy", type=parse_optional_float,
      help="SAC's target policy entropy (default none = -|A|)")
    a("--eval-every", type=int)
    a("--eval-episodes", type=int)
    a("--num-seeds", type=int,
      help="train seeds --seed .. --seed+N-1 as one vmapped program (device envs); one run "
      "directory per seed under --out, <out>/seeds.json")
    a("--sweep", action="append", metavar="NAME=V1,V2,...",
      help="train one member per value of a float setting (e.g. actor_lr=1e-3,3e-4) in the "
      "same program; repeat for a product, combine with --num-seeds; <out>/sweep.json")
    a("--out", help="run directory (default checkpoints/<env>-<algo>-<seed>-<time>)")
    a("--resume", metavar="RUN_DIR",
      help="continue RUN_DIR from its newest good checkpoint with its saved config "
      "(only --total-steps/--episodes and checkpoint/log flags may be given)")
    a("--save-every", type=int, help="env steps between resumable checkpoints")
    a("--keep-checkpoints", type=int, help="resumable checkpoints kept (plus the best)")
    a("--video-every", "--video_every", type=int,
      help="record an explained evaluation episode into <run>/videos/ every N env steps")
    a("--no-save-buffer", action="store_true",
      help="leave the replay buffer out of checkpoints (resume refills it)")
    a("--distributed", action="store_true",
      help="multi-process: join the other processes first (jax.distributed.initialize; "
      "SLURM/TPU pods detected, else $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES, "
      "$JAX_PROCESS_ID); all processes' devices form one data-parallel mesh")
    a("--no-progress", action="store_true", help="no progress bar")
    a("--no-tensorboard", action="store_true")
    a("--wandb", action="store_true",
      help="also log to Weights & Biases (extra [wandb]; project $WANDB_PROJECT or "
      "protosac-jax; WANDB_MODE=offline without a network)")
    a("--quiet", action="store_true", help="only the final line")
    return p


def run_flags(args: argparse.Namespace) -> dict:
    """Checkpoint and logging flags as TrainConfig overrides (valid for new and resumed runs)."""
    out = {flag: getattr(args, flag) for flag in ("save_every", "keep_checkpoints",
                                                  "video_every")
           if getattr(args, flag) is not None}
    if args.no_save_buffer:
        out["save_buffer"] = False
    if args.no_tensorboard:
        out["log_tensorboard"] = False
    if args.wandb:
        out["log_wandb"] = True
    return out


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Preset of the chosen env, overridden by the flags that were given."""
    return config_and_env(args)[0]


def config_and_env(args: argparse.Namespace):
    """(config_from_args(args), the env it was checked and fitted against), so the trainer
    reuses the env rather than building it again (an MJX model, a Gymnasium probe)."""
    backend = args.backend or "auto"
    if args.env is not None and args.environment is not None:
        by_index = envs.resolve_index(args.environment, backend)
        if envs.resolve_name(args.env, backend) != by_index:
            raise ConfigError(f"--env {args.env} and --environment {args.environment} disagree")
    if args.environment is not None:
        name = envs.resolve_index(args.environment, backend)
    else:
        name = envs.resolve_name(args.env or "pendulum", backend)
    cfg = config_lib.preset(name)
    top, sac, proto = {}, {}, {}
    for flag, field in [("num_envs", "num_envs"), ("total_steps", "total_steps"),
                        ("seed", "seed"), ("baseline", "baseline"),
                        ("buffer_size", "buffer_size"), ("learning_starts", "learning_starts"),
                        ("updates_per_step", "updates_per_step"),
                        ("noise_correlation", "noise_correlation"),
                        ("eval_every", "eval_every"), ("eval_episodes", "eval_episodes"),
                        ("frame_stack", "frame_stack"), ("action_repeat", "action_repeat")]:
        if getattr(args, flag) is not None:
            top[field] = getattr(args, flag)
    top.update(run_flags(args))
    for flag, field in [("num_prototypes", "num_prototypes"), ("latent_dim", "latent_dim"),
                        ("similarity", "similarity"), ("distribution", "distribution"),
                        ("prototypes", "source"), ("decide", "decide"),
                        ("temperature", "temperature"),
                        ("target_weight_entropy", "target_weight_entropy"),
                        ("target_action_spread", "target_action_spread"),
                        ("constraint_share", "constraint_share"),
                        ("recent_share", "recent_share"), ("recent_window", "recent_window"),
                        ("rollout_share", "rollout_share"),
                        ("rollout_episodes", "rollout_episodes"),
                        ("guard_episodes", "guard_episodes"),
                        ("selection_proposals", "selection_proposals"),
                        ("local_gain", "local_gain"),
                        ("backward_temperature_scale", "backward_temperature_scale"),
                        ("normalize_latent", "normalize_latent"),
                        ("projection_every", "projection_every"),
                        ("projection_phase", "projection_phase"), ("proto_init", "init"),
                        ("weight_entropy_coef", "weight_entropy_coef"),
                        ("usage_entropy_coef", "usage_entropy_coef")]:
        if getattr(args, flag) is not None:
            value = getattr(args, flag)
            proto[field] = None if value == "none" else value
    if proto.get("distribution") == "mixture" and "local_gain" not in proto:
        proto["local_gain"] = 0.0  # the default local feedback is a blend's (validate)
    if proto.get("guard_episodes") == 0:  # the preset's proposals need its guard
        proto.setdefault("selection_proposals", 1)
    if proto.get("source") == "free":  # the preset's rollouts and guard are for "states"
        proto.setdefault("rollout_share", 0.0)
        proto.setdefault("guard_episodes", 0)
        proto.setdefault("selection_proposals", 1)
    for flag, field in [("hidden", "hidden_sizes"), ("batch_size", "batch_size"),
                        ("gamma", "gamma"), ("n_step", "n_step"), ("layer_norm", "layer_norm"),
                        ("weight_decay", "weight_decay"), ("init_alpha", "init_alpha"),
                        ("target_entropy", "target_entropy"), ("num_atoms", "num_atoms"),
                        ("v_min", "v_min"), ("v_max", "v_max"),
                        ("sample_once", "sample_once"),
                        ("zero_init_heads", "zero_init_heads"), ("crossq", "crossq")]:
        if getattr(args, flag) is not None:
            value = getattr(args, flag)
            sac[field] = None if value == "none" else value
    if args.lr is not None:
        sac.update(actor_lr=args.lr, critic_lr=args.lr, alpha_lr=args.lr)
    if args.episodes is not None:
        if args.total_steps is not None:
            raise ConfigError("give --episodes or --total-steps, not both")
        if args.episodes < 1:
            raise ConfigError(f"--episodes must be >= 1 (got {args.episodes})")
    cfg = dataclasses.replace(
        cfg, **top,
        sac=dataclasses.replace(cfg.sac, **sac),
        proto=dataclasses.replace(cfg.proto, **proto))
    config_lib.validate(cfg)
    env = envs.make_env_for(cfg)  # validates the env now (e.g. Discrete actions, missing extra)
    cfg = config_lib.fit_env(cfg, env.spec.obs_shape, crossq_given=args.crossq is not None)
    if args.episodes is not None:
        cfg = dataclasses.replace(cfg, total_steps=args.episodes * env.spec.episode_length)
    from protosac_jax.loops import device_rollouts

    if not device_rollouts(env):
        for flag in ("rollout_share", "guard_episodes", "selection_proposals"):
            if getattr(args, flag):
                raise ConfigError(f"--{flag.replace('_', '-')} needs an env that steps on the "
                                  "device (gymnax or MJX; Gymnasium and frame-drawn envs have "
                                  "no device rollouts)")
        cfg = dataclasses.replace(cfg, proto=dataclasses.replace(
            cfg.proto, rollout_share=0.0, guard_episodes=0, selection_proposals=1))
    # Nothing here depends on --total-steps beyond the field itself (buffer capacity and the
    # last chunk are derived from it, config.buffer_capacity / loops.schedule), so a run
    # resumed to a longer total is the run a fresh command of that length would make.
    config_lib.validate(cfg)
    return cfg, env


RESUME_FLAGS = {"resume", "total_steps", "episodes", "save_every", "keep_checkpoints",
                "video_every",
                "no_save_buffer", "no_progress", "quiet", "no_tensorboard", "wandb", "distributed"}


def resume_overrides(args: argparse.Namespace, cfg: TrainConfig) -> tuple[dict, Any]:
    """Flags allowed with --resume, as TrainConfig overrides; any other flag is refused.
    Also the run's env if `--episodes` needed it for the episode length (the resume then
    continues with it rather than building it again), else None."""
    given = {k for k, v in vars(args).items() if v not in (None, False)}
    refused = sorted(given - RESUME_FLAGS)
    if refused:
        names = ", ".join("--" + k.replace("_", "-") for k in refused)
        raise ConfigError(f"--resume keeps the run's config (model shape, env, seed); "
                          f"cannot combine it with {names}")
    overrides, env = {}, None
    if args.total_steps is not None and args.episodes is not None:
        raise ConfigError("give --episodes or --total-steps, not both")
    if args.total_steps is not None:
        overrides["total_steps"] = args.total_steps
    if args.episodes is not None:
        env = envs.make_env_for(cfg)
        overrides["total_steps"] = args.episodes * env.spec.episode_length
    overrides.update(run_flags(args))
    return overrides, env


def _viz_command() -> str:
    """How this user starts the viewer: the console script when trained through one (an
    installed package has no viz.py), else viz.py."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "protosac-viz" if name.startswith("protosac-") else "python viz.py"


def jax_process_index() -> int:
    import jax

    return jax.process_index()


def main(argv=None) -> int:
    # Flags and the env are checked before JAX and the trainer are imported (~2 s on 2 CPU
    # cores), so a mistyped command answers at once. Groups (--num-seeds, --sweep) set the
    # host device count before their config is built, --distributed joins the other
    # processes first, and a resume reads its config from the run: those check later.
    try:
        args = build_parser().parse_args(argv)
        sweep = config_lib.parse_sweep(args.sweep or [])
        cfg = env = None
        if (args.resume is None and not args.distributed and args.num_seeds is None
                and not sweep):
            cfg, env = config_and_env(args)
    except (ConfigError, EnvError) as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        return 2

    from protosac_jax import outputs
    from protosac_jax.checkpoint import CheckpointError
    from protosac_jax.outputs import WriteError

    try:
        from protosac_jax import trainer

        progress = not (args.no_progress or args.quiet)
        from protosac_jax import groups

        if args.distributed:
            if args.num_seeds is not None or sweep or (
                    args.resume is not None and groups.is_group(args.resume)):
                raise ConfigError("--distributed trains one data-parallel run; seed groups "
                                  "and sweeps run on the devices of one process")
            from protosac_jax import parallel

            parallel.init_distributed()
        if args.resume is not None and groups.is_group(args.resume):
            groups.use_host_cores(len(groups.read_group(args.resume)["members"]))
            cfg = groups.base_config(args.resume)
            overrides, env = resume_overrides(args, cfg)
            result = groups.resume_group(args.resume, progress=progress, quiet=args.quiet,
                                         env=env, **overrides)
        elif args.resume is not None:
            from protosac_jax.checkpoint import read_config

            cfg = read_config(args.resume)
            overrides, env = resume_overrides(args, cfg)
            result = trainer.resume(args.resume, progress=progress, quiet=args.quiet,
                                    env=env, **overrides)
            cfg = config_lib.from_json((result.run_dir / "config.json").read_text())
        else:
            if args.num_seeds is not None or sweep:  # before JAX starts (config_from_args)
                groups.use_host_cores(groups.group_size(args.num_seeds, sweep))
            if cfg is None:
                cfg, env = config_and_env(args)
            if args.out is not None:
                trainer.check_writable_dir(args.out)
            if args.num_seeds is not None or sweep:
                result = groups.train_group(cfg, args.num_seeds if args.num_seeds is not None
                                            else 1, sweep, out=args.out, progress=progress,
                                            quiet=args.quiet, env=env)
            else:
                result = trainer.train(cfg, out=args.out, progress=progress,
                                       quiet=args.quiet, env=env)
    except (ConfigError, EnvError, CheckpointError) as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        return 2
    except trainer.TrainingDiverged as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        return 1
    except WriteError as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        if outputs.a_save_failed():
            outputs.exit_now(1)  # Orbax's orphaned writer threads would print at shutdown
        return 1
    except trainer.Interrupted as err:
        print(f"train.py: {err}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("train.py: aborted (no checkpoint written for the current chunk)", file=sys.stderr)
        return 130
    if isinstance(result, groups.GroupResult):
        evals = result.summary["final_eval"]
        print(f"done: {cfg.env} {cfg.algo}, {len(result.members)} runs: final eval return "
              f"mean {evals['mean']:.1f}, min {evals['min']:.1f} -> {result.out} "
              "(seeds.json)")
        if not args.quiet:
            viz = _viz_command()
            print(f"next: {viz} --curves {result.out}   (learning curves); "
                  f"{viz} --ckpt {result.members[0].run_dir}   (one member)")
    elif args.distributed and jax_process_index() != 0:
        pass  # process 0 reports
    else:
        print(f"done: {cfg.env} {cfg.algo} seed {cfg.seed}: final eval return "
              f"{result.final_eval:.1f} -> {result.run_dir}")
        if not args.quiet:
            print(f"next: {_viz_command()} --ckpt {result.run_dir}   (prototypes, report, "
                  "video)")
    return 0
