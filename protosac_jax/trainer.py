"""Host driver: runs the jitted chunks, logs, writes the run directory.

Run directory (default `checkpoints/<env>-<algo>-<seed>-<timestamp>/`):
  config.json        the TrainConfig (read back by `resume` and `load`)
  metrics.jsonl      one line per chunk, `group/name` metric keys
  events.out.*       TensorBoard scalars (tb_events)
  ckpt/              Orbax checkpoints: latest/<step> (resumable), best/<step> (see checkpoint.py)
  prototypes.png     the prototype grid (ProtoSAC on envs we can draw)

SIGINT/SIGTERM during training: the current chunk finishes (a Gymnasium host chunk at the vector
step the signal arrives, unevaluated: its chunks last minutes), a resumable checkpoint is saved
and `Interrupted` is raised; a second Ctrl-C aborts at once. A non-finite loss or parameter raises
`TrainingDiverged` without saving, so the latest checkpoint stays the last good one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from protosac_jax import config as config_lib
from protosac_jax import envs, loops
from protosac_jax import outputs, tb_events
from protosac_jax.outputs import WriteError, writing
from protosac_jax.config import ConfigError, TrainConfig


def enable_compilation_cache(path: str | None = None) -> str:
    """Turn on JAX's persistent compilation cache (cold start ~17 s -> ~5 s, DESIGN.md).

    Location: `path`, else $PROTOSAC_JAX_CACHE, else $XDG_CACHE_HOME/protosac_jax/xla.
    Programs that compiled in under $PROTOSAC_JAX_CACHE_MIN_SECS seconds (default 0.5) are not
    stored: the test suite sets 0, so that its many processes share even the small programs.
    """
    if path is None:
        path = os.environ.get("PROTOSAC_JAX_CACHE")
    if path is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = os.path.join(base, "protosac_jax", "xla")
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    text = os.environ.get("PROTOSAC_JAX_CACHE_MIN_SECS", "0.5")
    try:
        min_secs = float(text)
    except ValueError:
        raise ConfigError(f"$PROTOSAC_JAX_CACHE_MIN_SECS must be seconds (a number), got "
                          f"{text!r}") from None
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_secs)
    return path


def _use_compilation_cache() -> None:
    """The persistent compile cache for a run, except a multi-process one (--distributed):
    on this machine a second 2-process run that loaded the first one's programs from the
    cache hung in its first cross-process all-reduce (both processes idle; 2026-12-08,
    tests/test_distributed.py run twice on one cache, compiled with the test suite's
    XLA_FLAGS; with XLA's default code generation both runs passed, the cause is not
    known), so each process compiles its own."""
    if jax.process_count() > 1:
        jax.config.update("jax_enable_compilation_cache", False)
    else:
        enable_compilation_cache()


def default_run_dir(cfg: TrainConfig, root: str = "checkpoints") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{cfg.env}-{cfg.algo}-{cfg.seed}-{stamp}"


def check_writable_dir(path: Path, must_be_empty: bool = True) -> None:
    """ConfigError unless `path` is (or can be created as) a writable directory; with
    `must_be_empty` an existing non-empty directory (a run) is refused too.

    Creates nothing: called before any output is written.
    """
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"--out {path} exists and is not a directory")
        if must_be_empty and any(path.iterdir()):
            raise ConfigError(f"--out {path} is not empty; refusing to overwrite a run")
        if not os.access(path, os.W_OK):
            raise ConfigError(f"--out {path} is not writable")
        probe_dir = path
    else:
        probe_dir = path.parent
        while not probe_dir.exists():
            probe_dir = probe_dir.parent
        if not probe_dir.is_dir():
            raise ConfigError(f"--out {path}: {probe_dir} is not a directory")
    # os.access says yes to root everywhere; only trying tells (the probe is removed at once).
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".protosac-probe-", dir=probe_dir))
    except OSError as err:
        raise ConfigError(f"--out {path}: cannot write in {probe_dir} ({err.strerror})") from None


class Interrupted(RuntimeError):
    """Training stopped by a signal after saving a resumable checkpoint."""


class TrainingDiverged(RuntimeError):
    """A loss or parameter became non-finite; nothing was saved after the last good step."""


@dataclasses.dataclass
class RunResult:
    run_dir: Path
    final_eval: float
    history: list[dict[str, Any]]
    state: Any  # final loops.TrainState
    best_eval: float = -math.inf  # the best evaluation after training began (ckpt/best)


def _to_python(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        value = float(np.asarray(value))
        out[key] = None if math.isnan(value) else value
    return out


def _logged_step(line: str) -> int:
    try:
        return int(json.loads(line).get("env_steps", 0))
    except (ValueError, AttributeError, TypeError):
        return 0  # not a record of ours: kept


class _NoLogger:
    """The logger of a multi-process run's other processes (process 0 logs)."""

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class _Logger:
    """metrics.jsonl and TensorBoard events, both written synchronously.

    TensorBoard events are written in this thread (`tb_events`), not by tensorboardX's
    SummaryWriter: that writes from a background thread which, on a full disk, dies with a
    traceback and then blocks the training loop forever on its full queue (seen here).
    Here a failed write raises WriteError at the step that failed."""

    def __init__(self, run_dir: Path, tensorboard: bool, resumed_at: int = 0, wandb=None):
        self.run_dir = run_dir
        self.wandb = wandb  # a W&B run (`_start_wandb`) or None
        path = run_dir / "metrics.jsonl"
        with writing(path):
            if resumed_at and path.is_file():
                # lines past the step we resume from were logged by a run that died before
                # its next checkpoint committed (this run logs those steps again), and a last
                # line without its newline is a write cut short (full disk, kill)
                lines = path.read_text().splitlines(keepends=True)
                kept = [x for x in lines
                        if x.endswith("\n") and _logged_step(x) <= resumed_at]
                if len(kept) < len(lines):
                    outputs.write_text(path, "".join(kept))
            self.jsonl = open(path, "a", encoding="utf-8")
        self.events = None
        if tensorboard:
            with writing(run_dir / "events.out.tfevents.*"):
                self.events = tb_events.EventsWriter(run_dir)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        with writing(self.run_dir / "metrics.jsonl"):
            self.jsonl.write(json.dumps({"env_steps": step, **metrics}) + "\n")
            self.jsonl.flush()
        if self.events is not None:
            with writing(self.events.path):
                self.events.add_scalars(step, {key: value for key, value in metrics.items()
                                               if value is not None})
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in metrics.items() if v is not None}, step=step)

    def close(self) -> None:
        # a file whose last write failed may fail again on close: that was reported already
        if self.wandb is not None:
            self.wandb.finish()
        for close in (self.jsonl.close, self.events.close if self.events else None):
            try:
                if close is not None:
                    close()
            except OSError:
                pass


def _start_wandb(run_dir: Path, root: Path):
    """A W&B run for `run_dir`: its id is kept in <run>/wandb_id so a resumed run continues
    the same W&B run; a group's members share the W&B group named after the group."""
    import wandb

    cfg = config_lib.from_json((run_dir / "config.json").read_text())  # this run's own
    id_file = run_dir / "wandb_id"
    run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:16]
    outputs.write_text(id_file, run_id + "\n")
    member = run_dir != root
    try:
        return wandb.init(
            project=os.environ.get("WANDB_PROJECT", "protosac-jax"), id=run_id,
            resume="allow", dir=str(run_dir), config=config_lib.to_dict(cfg),
            name=f"{root.name}/{run_dir.relative_to(root)}" if member else run_dir.name,
            group=root.name if member else None, reinit="create_new",
            settings=wandb.Settings(silent=True))
    except Exception as err:  # noqa: BLE001 - no login, no network, ...: one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ConfigError(f"--wandb: cannot start a W&B run ({type(err).__name__}: {first}); "
                          "without a network use WANDB_MODE=offline") from None


class _SignalGuard:
    """First SIGINT/SIGTERM sets a flag (checked between chunks, and by a host chunk after
    every vector step); a second one aborts."""

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def _handler(self, signum, frame):
        if self.received is not None:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.received = signum
        print(f"\n{signal.Signals(signum).name}: stopping to save a resumable checkpoint "
              "(again to abort at once)", file=sys.stderr, flush=True)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _progress(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", disable=not enabled,
                dynamic_ncols=True, mininterval=0.5)


def _gib(tree) -> float:
    return sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree)) / 2**30


def _first_non_finite(metrics: dict[str, Any]) -> str | None:
    if metrics.get("health/params_finite") == 0.0:
        return "parameters"
    if not metrics.get("charts/chunk_updates"):  # no updates in this chunk: no losses to check
        return None
    for key, value in metrics.items():
        if key.startswith("losses/") and (value is None or not math.isfinite(value)):
            return key
    return None


def _final_projection(loop: loops.Loop, ts, run_chunk, project):
    """(state with every prototype projected, deterministic eval return(s) of that policy,
    {"learner", "provenance"} before the projection: what a resume continues from).

    The evaluation is a chunk of zero iterations (the compiled chunk, no second program) and
    starts from the states of the chunk's own evaluation, so the two returns compare the same
    episodes before and after the projection."""
    # copies: the chunk donates its input state, and the projection passes unchanged leaves
    # (critic, optimizer states) through to the state that is donated
    unprojected = jax.tree_util.tree_map(jnp.copy, {"learner": ts.learner,
                                                    "provenance": ts.provenance})
    ts, metrics = run_chunk(loop, project(ts), 0)
    return ts, np.asarray(metrics["eval/return_mean"]), unprojected


def _note_final_selection(loop: loops.Loop, ts, metrics: dict, name: str, quiet: bool):
    """After the end-of-training re-selection: `proto/last_selection` as it now is, and a
    note when a guard (--guard-episodes) kept the current states instead."""
    if "proto/last_selection" not in metrics:
        return
    last = int(jnp.max(ts.provenance.update_step))
    metrics["proto/last_selection"] = last
    updates = int(ts.learner.num_updates)
    if loops.uses_guard(loop) and last < updates and not quiet:
        proto = loop.cfg.proto
        print(f"{name + ': ' if name else ''}the end-of-training re-selection was not taken: "
              f"none of its {proto.selection_proposals} proposals returned as much as the "
              f"current prototype states on {proto.guard_episodes} deterministic episodes "
              f"(tolerance {proto.guard_tolerance:g}); they stay the states chosen at update "
              f"{last}", file=sys.stderr)


def _record_video(loop: loops.Loop, ts, run_dir: Path, env_steps: int, quiet: bool) -> bool:
    """<run>/videos/step_<env_steps>.mp4: one deterministic episode of the current policy,
    each frame with its top-3 prototypes. False (with a note) if this env cannot render."""
    from protosac_jax import render, visualize

    try:
        frames = render.FrameSource(loop.spec)
    except render.RenderUnavailable as err:
        if not quiet:
            print(f"note: no videos ({err})", file=sys.stderr)
        return False
    try:
        episode = visualize.play_episodes(loop.cfg, loop.spec, loop.actor, ts.learner, 1,
                                          seed=env_steps)[0]
        thumbs = None
        if loop.is_proto:
            thumbs = render.prototype_images(loop.spec, render.provenance_arrays(ts.provenance),
                                             frames, blank=True)
        path = run_dir / "videos" / f"step_{env_steps}.mp4"
        with writing(path):
            path.parent.mkdir(exist_ok=True)
            visualize.save_video(path, episode, frames, thumbs, top_k=3)
    finally:
        frames.close()
    return True


def _last_committed(members, target: Path, finished: bool = False) -> str:
    """What a user can continue from after a failed write: the newest step committed in
    every member (a lone run has one)."""
    from protosac_jax import checkpoint

    steps = [set(checkpoint.committed_steps(m.run_dir)) for m in members]
    common = sorted(set.intersection(*steps), reverse=True)
    if not common:
        return "no checkpoint was committed"
    if finished:  # training ended and its final step is saved; only the extras failed
        return (f"the final checkpoint (step {common[0]}) is committed; free space, then "
                f"python viz.py --ckpt {target}")
    return (f"the last committed checkpoint is step {common[0]}; free space, then "
            f"python train.py --resume {target}")


def make_loop(cfg: TrainConfig, env=None) -> loops.Loop:
    env = env if env is not None else envs.make_env_for(cfg)
    config_lib.fit_env(cfg, env.spec.obs_shape)  # raises on what cannot work
    return loops.Loop(env=env, actor=loops.make_actor(cfg, env.spec.action_dim), cfg=cfg)


def train(cfg: TrainConfig, out: str | os.PathLike | None = None, progress: bool = True,
          quiet: bool = False, env=None) -> RunResult:
    """Train a new run; returns its directory, final deterministic eval return and history.
    `env`: cfg.env already built (by the caller that needed its spec), else built here."""
    config_lib.validate(cfg)
    from protosac_jax import parallel

    parallel.check_divisible(cfg)
    env = env if env is not None else envs.make_env_for(cfg)
    parallel.check_multiprocess(env)
    run_dir = Path(out) if out is not None else default_run_dir(cfg)
    if jax.process_count() > 1 and out is None:
        raise ConfigError("--distributed needs --out (the same run directory, on storage "
                          "every process sees)")
    check_writable_dir(run_dir)
    parallel.barrier("protosac_run_dir_checked")  # every process checked before any writes
    _use_compilation_cache()
    loop = make_loop(cfg, env)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--out {run_dir}: {err.strerror}") from None
    if parallel.is_primary():
        outputs.write_text(run_dir / "config.json", config_lib.to_json(cfg))
    ts = loops.init_state_jit(loop, jax.random.PRNGKey(cfg.seed))
    return _run(loop, ts, run_dir, progress and not quiet, quiet, refill=False)


def _committed(ts):
    """The state committed to the default device, whether it was just initialised
    (uncommitted) or restored by Orbax (committed): jit marks committed arguments in the
    program it lowers, so without this a resumed run compiled a program of its own instead of
    hitting the persistent compile cache of the run it continues (17-40 s cold on MJX)."""
    return jax.device_put(ts, jax.devices()[0])


def _chunk_runner(loop: loops.Loop, ts):
    """(state placed on the devices, chunk function): the host loop for Gymnasium envs;
    sharded over all local devices when there are several (see parallel.py); else the plain
    jitted chunk."""
    if loop.on_host:
        return ts, loops.HostRunner(loop)
    if jax.device_count() == 1:
        return _committed(ts), loops.run_chunk_jit
    from protosac_jax import parallel

    mesh = parallel.make_mesh()
    shardings = parallel.state_shardings(ts, mesh, loop.cfg.num_envs)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    if jax.process_count() > 1:
        # every process holds the whole state (initialised from the same seed, or restored
        # from the shared checkpoint); from host memory each places its own shards
        ts = jax.device_get(ts)
    ts = jax.device_put(ts, shardings)
    jitted = jax.jit(loops.run_chunk, static_argnums=(0,), donate_argnums=(1,),
                     in_shardings=(shardings, replicated),
                     out_shardings=(shardings, replicated))
    return ts, jitted


class _GroupRunner:
    """`runner(loop, ts, iterations) -> (ts, metrics)` for a group (loops.run_group_chunk):
    the swept values ride along. With several devices whose count divides the group, the
    member axis is split over them (a "seed" mesh axis: no cross-device traffic at all);
    otherwise the group runs on the default device."""

    def __init__(self, values, jitted=loops.run_group_chunk_jit):
        self.values = values
        self.jitted = jitted

    def __call__(self, loop, ts, iterations):
        return self.jitted(loop, ts, self.values, iterations)


def _group_devices(ts) -> int:
    return len(ts.env_steps.sharding.device_set)


def _group_runner(loop: loops.Loop, ts, values):
    size = int(ts.env_steps.shape[0])
    devices = jax.devices()
    if len(devices) == 1 or size % len(devices):
        return _committed(ts), _GroupRunner(values)
    from jax.sharding import PartitionSpec as P

    mesh = jax.sharding.Mesh(np.asarray(devices), ("seed",))
    split = jax.sharding.NamedSharding(mesh, P("seed"))
    ts = jax.device_put(ts, split)
    values = jax.device_put(values, split)
    # shard_map: each device runs the whole chunk on its own members; the schedule counters
    # come from its first local member, so no iteration waits on another device
    sharded = jax.shard_map(functools.partial(loops.run_group_chunk, loop), mesh=mesh,
                            in_specs=(P("seed"), P("seed"), P()),
                            out_specs=(P("seed"), P("seed")), check_vma=False)
    jitted = jax.jit(lambda loop, ts, values, n: sharded(ts, values, jnp.asarray(n, jnp.int32)),
                     static_argnums=(0,), donate_argnums=(1,))
    return ts, _GroupRunner(values, jitted)


def resume(run_dir: str | os.PathLike, progress: bool = True, quiet: bool = False,
           env=None, **overrides) -> RunResult:
    """Continue a run from its newest good checkpoint with its saved config.

    `overrides` may only touch config_lib.RESUMABLE_FIELDS (e.g. a larger total_steps).
    `env`: the run's env if the caller built it already (default: built from the config).
    """
    from protosac_jax import checkpoint

    run_dir = Path(run_dir)
    cfg = checkpoint.read_config(run_dir)
    bad = sorted(set(overrides) - set(config_lib.RESUMABLE_FIELDS))
    if bad:
        raise ConfigError(f"--resume keeps the run's config; cannot change {', '.join(bad)}")
    cfg = dataclasses.replace(cfg, **overrides)
    config_lib.validate(cfg)
    from protosac_jax import parallel

    parallel.check_divisible(cfg)
    _use_compilation_cache()
    loop = make_loop(cfg, env)
    ts, meta = checkpoint.restore_train_state(run_dir, loop)
    if int(ts.env_steps) >= cfg.total_steps:
        raise ConfigError(f"{run_dir} already has {int(ts.env_steps)} env steps; raise "
                          f"--total-steps above that to continue")
    parallel.check_multiprocess(loop.env)
    parallel.barrier("protosac_resume_restored")  # every process read it before any writes
    if parallel.is_primary():
        outputs.write_text(run_dir / "config.json", config_lib.to_json(cfg))
    return _run(loop, ts, run_dir, progress and not quiet, quiet,
                refill=not meta.get("buffer_saved", True))


@dataclasses.dataclass
class _Member:
    """One run directory of a chunk loop (a lone run has one; a group one per member)."""

    run_dir: Path
    loop: loops.Loop  # this member's own loop (its config: seed, swept values)
    logger: Any = None
    checkpointer: Any = None
    history: list = dataclasses.field(default_factory=list)
    best_eval: float = -math.inf
    last_saved: int | None = None
    video_ok: bool = True


# Chunk metrics without meaning when no update ran (warm-up): dropped instead of logged null.
_UPDATE_METRICS = ("losses/", "charts/alpha", "charts/entropy", "proto/orthogonality",
                   "proto/weight_", "proto/usage", "proto/proximity", "proto/dead")


def _run(loop: loops.Loop, ts, run_dir: Path, progress: bool, quiet: bool,
         refill: bool) -> RunResult:
    return _run_members(loop, ts, [_Member(run_dir, loop)], progress, quiet, refill)[0]


def _run_members(loop: loops.Loop, ts, members: list[_Member], progress: bool, quiet: bool,
                 refill: bool, values=None, root: Path | None = None) -> list[RunResult]:
    """The chunk loop. `values` None: a lone run (`ts` one state, `members` one). Else a
    group: `ts` stacked over `members`, trained by one vmapped program with each member's
    swept `values` ({name: [G]}); `root` is the directory `--resume` continues (the group's,
    default the lone run's)."""
    from protosac_jax import checkpoint, parallel

    cfg = loop.cfg
    group = values is not None
    # multi-process (--distributed): every process runs the program and writes its shards
    # of each checkpoint; process 0 alone writes the rest (logs, summary, grid, videos)
    primary = parallel.is_primary()
    quiet, progress = quiet or not primary, progress and primary
    root = root if root is not None else members[0].run_dir
    pick = (lambda tree, i: loops.group_member(tree, i)) if group else (lambda tree, i: tree)
    lead = (lambda x: x[0]) if group else (lambda x: x)  # a counter: equal in all members
    start_steps = int(lead(ts.env_steps))
    capacity = jax.tree_util.tree_leaves(ts.buffer.data)[0].shape[int(group)]
    chunks = loops.schedule(cfg, done_iterations=start_steps // cfg.num_envs)
    if refill:
        # Resumed without a saved buffer: collect with the current policy before updating.
        refill_steps = max(cfg.num_envs, min(cfg.learning_starts,
                                             config_lib.buffer_capacity(cfg)))
        ts = ts.replace(updates_start=jnp.full_like(ts.updates_start,
                                                    start_steps + refill_steps))
        if not quiet:
            print(f"resume: the buffer was not saved; refilling {refill_steps} env steps with "
                  "the current policy before updating", file=sys.stderr)
    if group:
        ts, run_chunk = _group_runner(loop, ts, values)
        project = functools.partial(loops.project_group_jit, loop, values=values, final=True)
    else:
        ts, run_chunk = _chunk_runner(loop, ts)
        project = functools.partial(loops.project_jit, loop, final=True)
    if not quiet:
        where = f" x {len(members)} members ({_group_devices(ts)} devices)" if group else ""
        print(f"replay buffer: {capacity} transitions{where}, "
              f"{_gib(ts.buffer.data):.2f} GiB on {jax.devices()[0].platform}"
              + (" (resume of a Gymnasium run: episodes in progress restart)"
                 if loop.on_host and start_steps else ""), file=sys.stderr)
    for m in members:
        m.logger = _Logger(m.run_dir, cfg.log_tensorboard, resumed_at=start_steps,
                           wandb=_start_wandb(m.run_dir, root) if cfg.log_wandb else None) \
            if primary else _NoLogger()
        m.checkpointer = checkpoint.Checkpointer(m.run_dir, keep=cfg.keep_checkpoints)
    t_start = time.perf_counter()
    total = start_steps + sum(chunks) * cfg.num_envs
    bar = _progress(total, start_steps, progress)
    env_steps, updates = start_steps, int(lead(ts.learner.num_updates))
    first_chunk_s = None
    checkpoint_s = 0.0

    def meta(member_ts, eval_return):
        return {"format_version": checkpoint.FORMAT_VERSION,
                "spec": dataclasses.asdict(loop.spec), "env_steps": env_steps,
                "updates": updates, "eval_return": eval_return, "algo": cfg.algo,
                "buffer_capacity": int(member_ts.buffer.capacity)}

    def where(m: _Member) -> str:
        return f"{m.run_dir}: " if group else ""

    try:
        with _SignalGuard() as guard:
            if hasattr(run_chunk, "stop"):  # a host chunk stops at the step a signal arrives
                run_chunk.stop = lambda: guard.received is not None
            for index, iterations in enumerate(chunks):
                t0 = time.perf_counter()
                ts, raw = run_chunk(loop, ts, iterations)
                raw = jax.device_get(raw)
                done = getattr(run_chunk, "iterations_done", iterations)  # host: < if stopped
                stopped, iterations = done < iterations, done
                elapsed = time.perf_counter() - t0
                if first_chunk_s is None:
                    first_chunk_s = time.perf_counter() - t_start
                steps = iterations * cfg.num_envs
                chunk_metrics = [_to_python(pick(raw, i)) for i in range(len(members))]
                new_updates = int(chunk_metrics[0]["charts/updates"]) - updates
                env_steps += steps
                updates += new_updates
                for metrics in chunk_metrics:
                    if not metrics["charts/chunk_updates"]:  # no update ran: drop averages
                        for key in [k for k, v in metrics.items()
                                    if v is None and k.startswith(_UPDATE_METRICS)]:
                            del metrics[key]
                    if index == 0:
                        metrics["perf/time_to_first_chunk_s"] = first_chunk_s
                    # whole-program rates: a group's members share one program
                    metrics["perf/env_steps_per_s"] = steps / elapsed
                    metrics["perf/updates_per_s"] = new_updates / elapsed
                    metrics["perf/wall_s"] = time.perf_counter() - t_start
                    # cumulative seconds spent outside training proper (benchmarks subtract
                    # them; device-loop evaluations run inside the chunk, not separable)
                    metrics["perf/eval_s"] = getattr(run_chunk, "eval_seconds", 0.0)
                    metrics["perf/checkpoint_s"] = checkpoint_s
                for m, metrics in zip(members, chunk_metrics):
                    bad = _first_non_finite(metrics)
                    if bad is not None:
                        m.logger.log(env_steps, metrics)
                        saved = f"last good checkpoint: step {m.last_saved}" if m.last_saved \
                            else "no checkpoint of this session"
                        raise TrainingDiverged(
                            f"{where(m)}non-finite {bad} at env step {env_steps} (update "
                            f"{updates}); training stopped, {saved}")
                unprojected = None
                last_chunk = index == len(chunks) - 1 and not stopped
                if last_chunk and loops.needs_final_projection(loop, pick(ts, 0)):
                    # End on real states: project once more (the re-fit keeps the policy) and
                    # evaluate the policy that is saved. The checkpoint keeps the state before
                    # this projection too: a resumed run continues from it, exactly as a
                    # longer run that never stopped here.
                    ts, returns, unprojected = _final_projection(loop, ts, run_chunk, project)
                    for i, metrics in enumerate(chunk_metrics):
                        metrics["eval/return_mean_before_final_projection"] = \
                            metrics["eval/return_mean"]
                        metrics["eval/return_mean"] = float(returns[i] if group else returns)
                        _note_final_selection(loop, pick(ts, i), metrics,
                                              members[i].run_dir.name if group else "", quiet)
                for m, metrics in zip(members, chunk_metrics):
                    m.history.append({"env_steps": env_steps, **metrics})
                    m.logger.log(env_steps, metrics)
                evals = [m["eval/return_mean"] for m in chunk_metrics]
                bar.update(steps)
                if group:
                    postfix = {"eval_mean": f"{np.mean(evals):.1f}",
                               "eval_min": f"{np.min(evals):.1f}"}
                else:  # None: a host chunk stopped by a signal, unevaluated
                    postfix = {"eval": "-" if evals[0] is None else f"{evals[0]:.1f}"}
                bar.set_postfix({
                    **postfix,
                    "sps": f"{chunk_metrics[0]['perf/env_steps_per_s']:.0f}",
                    "ups": f"{chunk_metrics[0]['perf/updates_per_s']:.0f}",
                    "alpha": f"{chunk_metrics[0].get('charts/alpha') or float('nan'):.3f}",
                })
                trained = bool(chunk_metrics[0]["charts/chunk_updates"])
                t_save = time.perf_counter()
                better = [trained and metrics["eval/return_mean"] is not None
                          and metrics["eval/return_mean"] > m.best_eval
                          for m, metrics in zip(members, chunk_metrics)]
                host = None  # a group's state copied to the host once, sliced there

                def saved(tree_index):
                    nonlocal host
                    if not group:
                        return (ts, unprojected)[tree_index]
                    if host is None:
                        host = jax.device_get((ts, unprojected))
                    return host[tree_index]

                for i, (m, metrics) in enumerate(zip(members, chunk_metrics)):
                    if better[i]:
                        m.best_eval = metrics["eval/return_mean"]
                        member_ts = pick(saved(0), i)
                        m.checkpointer.save_best(member_ts, meta(member_ts, m.best_eval))
                # decided after the best saves: a signal that arrives during them is honoured
                crossed = env_steps // cfg.save_every > (env_steps - steps) // cfg.save_every
                if last_chunk or crossed or guard.received is not None:
                    for i, (m, metrics) in enumerate(zip(members, chunk_metrics)):
                        member_ts = pick(saved(0), i)
                        m.last_saved = m.checkpointer.save(
                            member_ts, meta(member_ts, metrics["eval/return_mean"]),
                            cfg.save_buffer, unprojected=None if unprojected is None
                            else pick(saved(1), i))
                checkpoint_s += time.perf_counter() - t_save
                if primary and cfg.video_every and \
                        env_steps // cfg.video_every > (env_steps - steps) // cfg.video_every:
                    for i, m in enumerate(members):
                        if m.video_ok:
                            m.video_ok = _record_video(m.loop, pick(ts, i), m.run_dir,
                                                       env_steps, quiet)
                if guard.received is not None:
                    raise Interrupted(f"interrupted at env step {env_steps}; resumable "
                                      f"checkpoint saved: python train.py --resume {root}")
    except WriteError as err:
        raise WriteError(f"{err}; {_last_committed(members, root)}") from None
    finally:
        bar.close()
        closers = [f for m in members for f in (m.logger.close if m.logger else None,
                                                m.checkpointer.close if m.checkpointer
                                                else None) if f is not None]
        for close in closers + [getattr(run_chunk, "close", lambda: None)]:
            try:
                close()
            except Exception:  # noqa: BLE001 - after a failed save, closing may fail again
                if not outputs.a_save_failed():
                    raise
    results = []
    wall_s = time.perf_counter() - t_start
    for i, m in enumerate(members):
        final_eval = m.history[-1]["eval/return_mean"]
        member_ts = pick(ts, i)
        if not primary:
            results.append(RunResult(run_dir=m.run_dir, final_eval=final_eval,
                                     history=m.history, state=member_ts,
                                     best_eval=m.best_eval))
            continue
        try:
            outputs.write_text(m.run_dir / "summary.json", json.dumps({
                "env_steps": env_steps, "updates": updates, "final_eval": final_eval,
                "best_eval": m.best_eval, "wall_s": wall_s,
                "time_to_first_chunk_s": first_chunk_s}, indent=2))
            if loop.is_proto:
                from protosac_jax import render

                try:
                    with writing(m.run_dir / "prototypes.png"):
                        render.save_prototype_grid(m.run_dir / "prototypes.png", m.loop,
                                                   member_ts)
                except render.RenderUnavailable as err:  # an env we cannot draw yet
                    if not quiet and i == 0:
                        print(f"note: no prototype grid ({err})")
        except WriteError as err:
            raise WriteError(f"{err}; {_last_committed([m], m.run_dir, finished=True)}") \
                from None
        results.append(RunResult(run_dir=m.run_dir, final_eval=final_eval, history=m.history,
                                 state=member_ts, best_eval=m.best_eval))
    return results
