"""Orbax checkpoints: everything needed to continue exactly, and `load` for inference.

Layout of a run directory:
  config.json                      the TrainConfig (shape of the model; read by resume/load)
  ckpt/latest/<env_steps>/         last `keep_checkpoints` resumable checkpoints, items:
      learner      SACState: actor/critic/target params, optimizer states, temperature, counters
      provenance   where each prototype came from (buffer index, obs, render state)
      loop         env states, current obs, exploration noise, running returns, RNG, env steps
      buffer       the replay buffer (absent with --no-save-buffer; resume then refills it)
      unprojected  learner + provenance before a run's final projection (only in a step that
                   ended with one, trainer._final_projection): what `--resume` continues from,
                   while `load` uses `learner`/`provenance`, the projected policy
      meta         JSON: format version, env spec, env steps, eval return, whether buffer saved,
                   buffer capacity (rows; a resume that extends the run grows the buffer)
  ckpt/best/<env_steps>/           the best-by-eval policy (learner, provenance, meta)

Orbax writes each step into a temporary directory and renames it when complete, so a step
directory that exists is whole; an interrupted save (kill -9, full disk) leaves only a
temporary directory that is never read and is removed by the next save. After the commit each
step gets `protosac_manifest.json` (size and SHA-256 of every file): a step whose files were
truncated or overwritten afterwards is `CorruptCheckpoint`. Resume skips such a step (and any
step Orbax cannot read) with a warning and uses the previous good one; `load_policy` refuses it
in one line that names the older step. A failed write raises outputs.WriteError.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np

from protosac_jax import outputs

# 3: update credit in `loop`, `unprojected`, meta["buffer_capacity"] (2 is still read)
FORMAT_VERSION = 3
ITEMS_FULL = ("learner", "provenance", "loop", "buffer", "unprojected", "meta")
ITEMS_BEST = ("learner", "provenance", "meta")


class CheckpointError(ValueError):
    """A run directory or checkpoint that cannot be used (the CLI turns this into one line)."""


class CorruptCheckpoint(CheckpointError):
    """One step's files are damaged (truncated, overwritten, missing): resume falls back to
    the previous step; `load` and viz.py refuse it."""


def _ocp():
    import orbax.checkpoint as ocp  # imported lazily: slow import, not needed for CLI errors

    absl = logging.getLogger("absl")
    if absl.level < logging.ERROR:  # not lowered again while outputs.background_quiet holds it
        absl.setLevel(logging.ERROR)
    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, _OrphanedReadErrors) for f in asyncio_log.filters):
        asyncio_log.addFilter(_OrphanedReadErrors())
    if not _previous_hooks:  # once: outputs.background_quiet may hold the hook right now
        _previous_hooks.append(sys.unraisablehook)
        sys.unraisablehook = _quiet_closed_event_loop
    return ocp


_previous_hooks: list = []


def _quiet_closed_event_loop(unraisable):
    """After a failed restore of a corrupted step, Orbax's background threads may post to an
    event loop that is already closed; Python then prints 'Event loop is closed' tracebacks at
    exit. We already reported the failure in one line, so drop exactly those."""
    exc = unraisable.exc_value
    if isinstance(exc, RuntimeError) and "Event loop is closed" in str(exc):
        return
    _previous_hooks[0](unraisable)


class _OrphanedReadErrors(logging.Filter):
    """A failed restore of a corrupted step leaves Orbax's other read tasks with unretrieved
    tensorstore exceptions; when they are garbage-collected asyncio logs each one with a
    traceback, after our one-line report (seen as a flaky extra stderr in the corrupt-resume
    test). Drop exactly those records: unretrieved-exception reports of tensorstore reads."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("exception was never retrieved" in message
                    and "tensorstore_spec" in message)


def _loop_part(ts, version: int = FORMAT_VERSION) -> dict[str, Any]:
    # Orbax cannot save zero-size arrays (MJX data has some, e.g. `act` of a model without
    # activation states): keep the non-empty leaves, keyed by position; `_loop_unpack` puts
    # zero-size arrays back from the template.
    leaves = jax.tree_util.tree_leaves(ts.env_state)
    part = {"env_state": {str(i): x for i, x in enumerate(leaves) if np.size(x) > 0},
            "obs": ts.obs, "noise": ts.noise, "episode_return": ts.episode_return,
            "rng": ts.rng, "env_steps": ts.env_steps, "random_until": ts.random_until,
            "updates_start": ts.updates_start}
    if version >= 3:
        part["update_credit"] = ts.update_credit
    if ts.reservoir is not None:  # frame reservoir of Box2D-like envs (loops.py)
        part["reservoir"] = ts.reservoir
    return part


def _loop_unpack(part: dict[str, Any], template) -> Any:
    leaves, treedef = jax.tree_util.tree_flatten(template.env_state)
    env_leaves = [part["env_state"][str(i)] if str(i) in part["env_state"]
                  else np.zeros(leaf.shape, leaf.dtype) for i, leaf in enumerate(leaves)]
    return jax.tree_util.tree_unflatten(treedef, env_leaves)


def _abstract(tree):
    ocp = _ocp()
    return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)


def _policy_items(learner, provenance, meta: dict[str, Any]):
    """The ITEMS_BEST of a step: what `load_policy` needs (best and inference-only runs)."""
    ocp = _ocp()
    return ocp.args.Composite(learner=ocp.args.StandardSave(learner),
                              provenance=ocp.args.StandardSave(provenance),
                              meta=ocp.args.JsonSave(meta))


# Written into each committed step directory after Orbax's commit: size and SHA-256 of every
# file of every item. Orbax has no checksums of its own, so a file truncated or overwritten
# after the save (disk corruption, a copy cut short) could otherwise restore as wrong values;
# `_verify` refuses such a step. A step saved without one (older runs, or a kill between the
# commit and this file) is read as before, on Orbax's own checks.
MANIFEST = "protosac_manifest.json"


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_manifest(step_dir: Path) -> None:
    if jax.process_index() != 0:  # multi-process: Orbax committed the step; one writer
        return
    if not step_dir.is_dir():  # not kept (a best-mode manager drops a step below its best)
        return
    files = {str(p.relative_to(step_dir)): [p.stat().st_size, _sha256(p)]
             for p in sorted(step_dir.rglob("*"))
             if p.is_file() and "/" in str(p.relative_to(step_dir))}
    outputs.write_text(step_dir / MANIFEST, json.dumps(files, indent=0), "checkpoint manifest")


def _verify(step_dir: Path, items) -> None:
    """CheckpointError if a file of `items` in `step_dir` differs from its manifest entry."""
    path = step_dir / MANIFEST
    if not path.is_file():
        return
    try:
        files = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise CorruptCheckpoint(f"{step_dir}: {MANIFEST} is corrupt") from None
    for rel, (size, digest) in files.items():
        if rel.split("/")[0] not in items:
            continue
        file = step_dir / rel
        if not file.is_file() or file.stat().st_size != size or _sha256(file) != digest:
            raise CorruptCheckpoint(f"{step_dir}: {rel} is truncated or corrupt (it differs "
                                    "from what was saved)")


class Checkpointer:
    """Saves a run's latest and best checkpoints under `<run_dir>/ckpt`."""

    def __init__(self, run_dir: Path, keep: int = 3):
        ocp = _ocp()
        self.run_dir = Path(run_dir)
        with outputs.writing(self.run_dir / "ckpt"):
            self._open(ocp, keep)

    def _open(self, ocp, keep: int) -> None:
        self.latest = ocp.CheckpointManager(
            (self.run_dir / "ckpt" / "latest").absolute(),
            # cleanup: a save cut short (full disk, kill) leaves <step>.orbax-checkpoint-tmp*,
            # never read as a step; removed here so the same step can be saved again
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                 enable_async_checkpointing=False,
                                                 cleanup_tmp_directories=True),
            item_names=ITEMS_FULL)
        self.best = ocp.CheckpointManager(
            (self.run_dir / "ckpt" / "best").absolute(),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1, create=True, best_fn=lambda m: m["eval_return"],
                best_mode="max", enable_async_checkpointing=False,
                cleanup_tmp_directories=True),
            item_names=ITEMS_BEST)

    def save(self, ts, meta: dict[str, Any], save_buffer: bool, unprojected=None) -> int:
        """Save a resumable step; `unprojected` ({"learner", "provenance"}) is the state
        before a final projection (trainer._final_projection), which resume continues from."""
        from protosac_jax import replay

        ocp = _ocp()
        step = int(meta["env_steps"])
        args = {
            "learner": ocp.args.StandardSave(ts.learner),
            "provenance": ocp.args.StandardSave(ts.provenance),
            "loop": ocp.args.StandardSave(_loop_part(ts)),
            "meta": ocp.args.JsonSave({**meta, "buffer_saved": save_buffer,
                                       "final_projection": unprojected is not None}),
        }
        if save_buffer:
            args["buffer"] = ocp.args.StandardSave(replay.saved_form(ts.buffer))
        if unprojected is not None:
            args["unprojected"] = ocp.args.StandardSave(unprojected)
        with outputs.background_quiet(), \
                outputs.writing(self.latest.directory / str(step), "checkpoint"):
            if step not in self.latest.all_steps():
                self.latest.save(step, args=ocp.args.Composite(**args), force=True)
            self.latest.wait_until_finished()
            _write_manifest(Path(self.latest.directory) / str(step))
        return step

    def save_best(self, ts, meta: dict[str, Any]) -> None:
        step = int(meta["env_steps"])
        if step in self.best.all_steps():
            return
        with outputs.background_quiet(), \
                outputs.writing(self.best.directory / str(step), "checkpoint"):
            self.best.save(step, args=_policy_items(ts.learner, ts.provenance, meta),
                           metrics={"eval_return": float(meta["eval_return"])}, force=True)
            self.best.wait_until_finished()
            _write_manifest(Path(self.best.directory) / str(step))

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def save_agent(run_dir: Path, agent) -> Path:
    """Write an inference-only run directory for `agent` (e.g. a pruned one,
    `interpret.prune_agent`): config.json and ckpt/latest/<step> with learner, provenance and
    meta. `load` / viz.py read it like any run; it cannot be resumed (no env/buffer state)."""
    from protosac_jax import config as config_lib
    from protosac_jax.prototype import Provenance

    ocp = _ocp()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(config_lib.to_json(agent.config))
    provenance = Provenance(**{k: np.asarray(v) for k, v in agent.prototypes.items()})
    step = int(agent.meta.get("env_steps", 0))
    meta = {**agent.meta, "format_version": FORMAT_VERSION,
            "spec": dataclasses.asdict(agent.spec), "buffer_saved": False,
            "inference_only": True}
    with ocp.CheckpointManager((run_dir / "ckpt" / "latest").absolute(),
                               options=ocp.CheckpointManagerOptions(
                                   create=True, enable_async_checkpointing=False),
                               item_names=ITEMS_BEST) as manager:
        manager.save(step, args=_policy_items(agent.learner, provenance, meta), force=True)
        manager.wait_until_finished()
    _write_manifest(run_dir / "ckpt" / "latest" / str(step))
    return run_dir


def is_inference_only(run_dir: Path) -> bool:
    """True for a run directory written by `save_agent` (safe for viz.py to replace)."""
    directory = Path(run_dir) / "ckpt" / "latest"
    steps = _steps(directory)
    if not (Path(run_dir) / "config.json").is_file() or not steps:
        return False
    try:
        return bool(_read_meta(directory, steps[0]).get("inference_only"))
    except (CheckpointError, OSError, ValueError):
        return False


# ----------------------------------------------------------------------------- reading
def read_config(run_dir: Path):
    from protosac_jax import config as config_lib

    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise CheckpointError(f"{run_dir} does not exist")
    path = run_dir / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a run directory (no config.json)")
    try:
        return config_lib.from_json(path.read_text())
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{path} is not a valid config ({err})") from None


def _check_meta(meta: dict[str, Any], where: Path) -> None:
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 2:
        raise CheckpointError(
            f"{where}: checkpoint format {version!r} is not readable by this protosac-jax "
            f"(reads format 2..{FORMAT_VERSION}); upgrade protosac-jax")


def _steps(directory: Path) -> list[int]:
    if not directory.is_dir():
        return []
    return sorted((int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit()),
                  reverse=True)


def committed_steps(run_dir: Path, best: bool = False) -> list[int]:
    """Steps of `run_dir` whose Orbax save was committed (newest first): Orbax writes a step
    into `<step>.orbax-checkpoint-tmp-*` and renames it to `<step>` only when every item is
    complete, so a save cut short (kill -9, full disk) leaves no step directory."""
    return _steps(Path(run_dir) / "ckpt" / ("best" if best else "latest"))


def spec_from_meta(meta: dict[str, Any]):
    from protosac_jax.envs.base import EnvSpec

    spec = dict(meta["spec"])
    for key in ("obs_shape", "action_low", "action_high"):
        spec[key] = tuple(spec[key])
    return EnvSpec(**spec)


def _restore(directory: Path, step: int, items: dict[str, Any]) -> dict[str, Any]:
    """Restore `items` (name -> abstract template, or None for JSON) of one step."""
    _verify(directory / str(step), items)
    ocp = _ocp()
    # Onto this process's first device: without a sharding in the template Orbax reuses the
    # saved one, which fails on another topology (a run trained sharded over 2 devices, loaded
    # on 1). A sharded resume places the state on its mesh afterwards (trainer._chunk_runner).
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def placed(leaf):
        if isinstance(leaf, jax.ShapeDtypeStruct) and leaf.sharding is None:
            return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device)
        return leaf

    args = {name: (ocp.args.JsonRestore() if template is None
                   else ocp.args.StandardRestore(jax.tree_util.tree_map(placed, template)))
            for name, template in items.items()}
    with ocp.CheckpointManager(directory.absolute(), item_names=tuple(items)) as manager:
        restored = manager.restore(step, args=ocp.args.Composite(**args))
    return {name: restored[name] for name in items}


def _read_meta(directory: Path, step: int) -> dict[str, Any]:
    path = directory / str(step) / "meta" / "metadata"
    if not path.is_file():
        raise CorruptCheckpoint(f"{directory / str(step)}: meta is missing")
    _verify(directory / str(step), ("meta",))
    try:
        meta = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise CorruptCheckpoint(f"{path} is corrupt (not JSON)") from None
    if not isinstance(meta, dict):
        raise CorruptCheckpoint(f"{path} is corrupt (not a JSON object)")
    _check_meta(meta, directory / str(step))
    return meta


def restore_train_state(run_dir: Path, loop, step: int | None = None):
    """(TrainState, meta) of the newest restorable step (or `step`); buffer may be empty.

    The buffer is restored at the capacity it was saved with and grown to the capacity of
    `loop.cfg` (a resume that extends --total-steps, replay.resize). A step that ended with a
    final projection resumes from the state before it (`unprojected`). Falls back to older
    steps, with a warning, when the newest cannot be read.
    """
    from protosac_jax import replay
    from protosac_jax import loops

    directory = Path(run_dir) / "ckpt" / "latest"
    candidates = _steps(directory)
    if step is not None:
        candidates = [s for s in candidates if s == step]
    if not candidates:
        raise CheckpointError(f"{run_dir} has no checkpoint to resume from"
                              + (f" at step {step}" if step is not None else ""))
    template = jax.eval_shape(lambda: loops.init_state(loop, jax.random.PRNGKey(0)))
    failures = []
    for candidate in candidates:
        try:
            meta = _read_meta(directory, candidate)
            if meta.get("inference_only"):
                raise CheckpointError(
                    f"{run_dir} holds an inference-only agent (e.g. written by viz.py --prune); "
                    "it has no env or buffer state to resume from")
            version = meta["format_version"]
            items = {"learner": template.learner, "provenance": template.provenance,
                     "loop": _loop_part(template, version), "meta": None}
            saved_capacity = int(meta.get("buffer_capacity", template.buffer.capacity))
            if saved_capacity > template.buffer.capacity:
                raise CheckpointError(
                    f"{directory / str(candidate)}: its replay buffer has {saved_capacity} rows,"
                    f" more than this run's {template.buffer.capacity}")
            buffer_template = jax.eval_shape(
                lambda: replay.init(saved_capacity, jax.tree_util.tree_map(
                    lambda x: np.zeros(x.shape[1:], x.dtype), template.buffer.data)))
            if meta.get("buffer_saved"):
                items["buffer"] = replay.saved_form(buffer_template)
            if meta.get("final_projection"):
                items["unprojected"] = {"learner": template.learner,
                                        "provenance": template.provenance}
            restored = _restore(directory, candidate, items)
        except CorruptCheckpoint as err:
            failures.append(f"step {candidate}: {err}")
            continue
        except CheckpointError:
            raise
        except Exception as err:  # noqa: BLE001 - any unreadable step: try the previous one
            failures.append(f"step {candidate}: {type(err).__name__}")
            continue
        if failures:
            warnings.warn(f"skipped unreadable checkpoint(s) {', '.join(failures)}; "
                          f"resuming from step {candidate}", stacklevel=2)
        buffer = restored.get("buffer")
        if buffer is not None:
            buffer = replay.from_saved_form(buffer, buffer_template)
        else:  # not saved: an empty buffer, refilled by the trainer
            buffer = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype),
                                            template.buffer)
        buffer = replay.resize(buffer, template.buffer.capacity)
        part = restored["loop"]
        learner, provenance = restored["learner"], restored["provenance"]
        if "unprojected" in restored:
            learner = restored["unprojected"]["learner"]
            provenance = restored["unprojected"]["provenance"]
        ts = loops.TrainState(
            learner=learner, buffer=buffer,
            env_state=_loop_unpack(part, template), obs=part["obs"], noise=part["noise"],
            episode_return=part["episode_return"], provenance=provenance,
            rng=part["rng"], env_steps=part["env_steps"], random_until=part["random_until"],
            updates_start=part["updates_start"],
            update_credit=part.get("update_credit", np.zeros((), np.int32)),
            reservoir=part.get("reservoir"))
        return ts, restored["meta"]
    raise CheckpointError(f"{run_dir}: no readable checkpoint ({'; '.join(failures)})")


def load_policy(path, step: int | None = None, best: bool = False):
    """(config, spec, actor, learner SACState, provenance, meta) for inference on this host.

    `path` is a run directory or one step directory inside it (`<run>/ckpt/latest/<step>`).
    """
    from protosac_jax import loops, sac
    from protosac_jax.prototype import Provenance

    path = Path(path)
    if path.name.isdigit() and path.parent.parent.name == "ckpt":
        run_dir, step, best = path.parent.parent.parent, int(path.name), path.parent.name == "best"
    else:
        run_dir = path
    cfg = read_config(run_dir)
    directory = run_dir / "ckpt" / ("best" if best else "latest")
    candidates = _steps(directory)
    if step is not None:
        if step not in candidates:
            raise CheckpointError(f"{run_dir} has no checkpoint at step {step} "
                                  f"(has {sorted(candidates) or 'none'})")
        candidates = [step]
    if not candidates:
        raise CheckpointError(f"{run_dir} has no {'best' if best else ''} checkpoint yet".replace(
            "  ", " "))
    # Only the newest step (or the one asked for): a damaged step is refused, never replaced
    # silently by an older policy; the message names the step that does load.
    candidate = candidates[0]
    try:
        meta = _read_meta(directory, candidate)
        spec = spec_from_meta(meta)
        actor = loops.make_actor(cfg, spec.action_dim)
        obs = jax.ShapeDtypeStruct(spec.obs_shape, spec.obs_dtype)
        learner_t = jax.eval_shape(lambda o: sac.init(jax.random.PRNGKey(0), actor, cfg.sac, o,
                                                      spec.action_dim), obs)
        prov_t = jax.eval_shape(lambda: Provenance.empty(
            cfg.proto.num_prototypes, spec.obs_example(), spec.render_example()))
        cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
        with_sharding = lambda t: jax.tree_util.tree_map(  # noqa: E731
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=cpu), t)
        items = {"learner": with_sharding(learner_t), "provenance": with_sharding(prov_t),
                 "meta": None}
        try:
            restored = _restore(directory, candidate, items)
        except CheckpointError:
            raise
        except Exception as err:  # noqa: BLE001 - Orbax/tensorstore cannot read the step
            raise CorruptCheckpoint(f"{directory / str(candidate)} is unreadable "
                                    f"({type(err).__name__}: {outputs.cause_of(err)})") from None
    except CorruptCheckpoint as err:
        raise CorruptCheckpoint(f"{err}; {_older_hint(directory, candidates)}") from None
    provenance = {f.name: np.asarray(getattr(restored["provenance"], f.name))
                  for f in dataclasses.fields(restored["provenance"])}
    return cfg, spec, actor, restored["learner"], provenance, restored["meta"]


def _older_hint(directory: Path, candidates: list[int]) -> str:
    older = candidates[1:]
    if not older:
        return "no older checkpoint to load instead"
    return f"an older checkpoint can be loaded: {directory / str(older[0])}"
