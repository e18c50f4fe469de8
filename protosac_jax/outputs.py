"""Writing a run's files: every write error becomes one `WriteError` naming the path and cause.

A full disk (or a read-only or vanished directory) can strike any output: config.json,
metrics.jsonl, TensorBoard events, an Orbax checkpoint, the grid, a video, viz.py's exports.
Each write site wraps itself in `writing(path)`, which turns OSError (and Orbax/tensorstore's
ValueErrors that carry an OS error code) into `WriteError("cannot write PATH: CAUSE")`; the
CLIs print that line and exit 1.

Orbax writes a checkpoint from worker threads. When a write fails there, those threads log
their own tracebacks (absl), print "Exception in thread" (threading.excepthook) and leave
coroutines that Python reports at exit ("Exception ignored in", then "sys.meta_path is None"
while the interpreter shuts down). `background_quiet()` holds those back for the duration of
a save; once a save has failed they stay held (the process is ending with its one line), and
`exit_now` ends the process without the interpreter teardown that makes them print.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import sys
import threading
from pathlib import Path


class WriteError(RuntimeError):
    """An output could not be written (disk full, permissions, ...): one line for the user."""


_OS_CODE = re.compile(r"os_error_code='?(\d+)")


def cause_of(err: BaseException) -> str:
    """The OS-level reason behind `err` (its strerror, or the errno in an Orbax/tensorstore
    message), else its first line."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno:
            return err.strerror or os.strerror(err.errno)
        match = _OS_CODE.search(str(err))
        if match:
            return os.strerror(int(match.group(1)))
        if "No space left on device" in str(err):
            return os.strerror(errno.ENOSPC)
        err = err.__cause__ or err.__context__
    first = str(err).strip().splitlines()[0] if err is not None and str(err).strip() else ""
    return first[:200] or type(err).__name__


def is_write_failure(err: BaseException) -> bool:
    """OSError, or an Orbax/tensorstore error that carries an OS error (e.g. ENOSPC)."""
    if isinstance(err, OSError):
        return True
    text = str(err)
    return bool(_OS_CODE.search(text)) or "No space left on device" in text \
        or "RESOURCE_EXHAUSTED" in text


@contextlib.contextmanager
def writing(path: os.PathLike | str, what: str = ""):
    """Raise WriteError("cannot write [what ]PATH: CAUSE") for a failed write inside."""
    try:
        yield
    except WriteError:
        raise
    except Exception as err:  # noqa: BLE001 - filtered by is_write_failure
        if not is_write_failure(err):
            raise
        where = getattr(err, "filename", None) or path  # the file itself, when the OS says
        label = f"{what} {where}" if what else str(where)
        raise WriteError(f"cannot write {label}: {cause_of(err)}") from None


# ----------------------------------------------------------------------------- quiet threads
_held: list[str] = []  # what background threads tried to print while held
_state = {"depth": 0, "failed": False, "hooks": None}


def _hold_thread_exception(args):
    _held.append(f"{args.exc_type.__name__}: {args.exc_value}")


def _hold_unraisable(unraisable):
    _held.append(f"{unraisable.exc_type.__name__}: {unraisable.exc_value}")


@contextlib.contextmanager
def background_quiet():
    """Hold back what Orbax's worker threads print while a save runs; on success restore
    the hooks (and re-raise nothing); on failure keep holding (see the module docstring)."""
    if _state["depth"] == 0 and not _state["failed"]:
        absl = logging.getLogger("absl")
        _state["hooks"] = (threading.excepthook, sys.unraisablehook, absl.level)
        threading.excepthook = _hold_thread_exception
        sys.unraisablehook = _hold_unraisable
        absl.setLevel(logging.CRITICAL)
    _state["depth"] += 1
    try:
        yield
    except BaseException:
        _state["failed"] = True
        raise
    finally:
        _state["depth"] -= 1
        if _state["depth"] == 0 and not _state["failed"] and _state["hooks"] is not None:
            threading.excepthook, sys.unraisablehook, level = _state["hooks"]
            logging.getLogger("absl").setLevel(level)
            _state["hooks"] = None


def a_save_failed() -> bool:
    return _state["failed"]


def exit_now(code: int) -> None:
    """Flush stdout/stderr and end the process at once: after a failed Orbax save its
    orphaned worker threads would print tracebacks during a normal interpreter shutdown."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def write_text(path: Path, text: str, what: str = "") -> None:
    """Replace `path` by `text` atomically (a temporary file beside it, then a rename), so a
    failed write (full disk) leaves the old file whole; WriteError on failure."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with writing(path, what):
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()

