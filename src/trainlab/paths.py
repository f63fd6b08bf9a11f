"""Checks on the folders a command reads or writes, made before anything is created, and the one-line
error for a full disk.

Permission bits say little when the process runs as root (root may write anywhere chmod forbids), so the
output check does not read them: it creates a probe folder where the real one would go and removes it at
once. What really fails (a regular file in the way, /proc, a read-only mount, a full or missing parent)
fails here, with the path and the fix, instead of as a traceback halfway through the run.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

from trainlab.errors import ConfigError, TrainlabError

# errno values that mean "the file system is full" (a quota counts as full for the user)
_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class DiskFullError(TrainlabError):
    """A write failed because the file system is full (exit 1: not bad input, but one line naming the path
    and the space needed)."""

    exit_code = 1


def _nearest_existing(path: Path) -> Path:
    current = path
    while not os.path.lexists(current) and current.parent != current:
        current = current.parent
    return current


def check_output_dir(path: str | os.PathLike, what: str, error: type[TrainlabError] = ConfigError) -> Path:
    """Make sure `path` is a folder that exists or can be created, and that files can be made in it,
    without leaving anything behind. Raises `error` with one line naming `what` (e.g. 'run.dir')."""
    path = Path(path)
    fix = f"choose another {what}"
    if os.path.lexists(path) and not path.exists():
        raise error(f"{what} {path} is a broken symbolic link; remove it or {fix}")
    if path.exists() and not path.is_dir():
        raise error(f"{what} {path} is a file, not a folder; {fix}")
    parent = path if path.exists() else _nearest_existing(path.parent)
    if not parent.is_dir():
        raise error(f"{what} {path} cannot be created: {parent} is a file, not a folder; {fix}")
    try:
        probe = tempfile.mkdtemp(prefix=".trainlab-probe-", dir=parent)
        os.rmdir(probe)
    except OSError as exc:
        where = "written to" if parent == path else f"created in {parent}"
        raise error(f"{what} {path} cannot be {where} ({exc.strerror or exc}); {fix}") from None
    return path


def check_run_dir(path: str | os.PathLike) -> Path:
    """run.dir (chosen or default) must be a folder we can write before the run builds anything. Returns its
    nearest existing folder (itself when it exists): what `discard_new_run_dir` may not remove."""
    check_output_dir(path, "run.dir")
    return _nearest_existing(Path(path))


@contextmanager
def discard_new_run_dir(run: Any) -> Iterator[None]:
    """A run that fails on bad input (exit 2, e.g. an unreadable image found in the first batch) before its
    first checkpoint leaves nothing behind: the run dir it created, and the parents it created (runs/), are
    removed. A run dir that existed before (a resume, a folder the user made) is never touched.
    `run` is a Run: its `run_dir` and `run_dir_existing` (set by execute from check_run_dir) are read only
    after a failure."""
    try:
        yield
    except TrainlabError as exc:
        run_dir = getattr(run, "run_dir", None)
        existing = getattr(run, "run_dir_existing", None)
        keep = exc.exit_code != 2 or run_dir is None or existing is None or Path(existing) == Path(run_dir)
        if not keep and run.ctx.is_main and not any(Path(run_dir).glob("checkpoints/*.pt")):
            shutil.rmtree(run_dir, ignore_errors=True)
            parent = Path(run_dir).parent
            while parent != Path(existing) and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent
        raise


def check_input_dir(path: str | os.PathLike, what: str, fix: str, error: type[TrainlabError]) -> Path:
    """An existing folder: says 'does not exist' or 'is a file' accordingly, then `fix`."""
    path = Path(path).expanduser()
    if not path.exists():
        raise error(f"{what} {path} does not exist; {fix}")
    if not path.is_dir():
        raise error(f"{what} {path} is a file, not a folder; {fix}")
    return path


def free_bytes(path: str | os.PathLike) -> Optional[int]:
    try:
        return shutil.disk_usage(_nearest_existing(Path(path))).free
    except OSError:
        return None


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{max(n, 1) / 1024:.0f} KB"


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in _FULL


def disk_full(path: str | os.PathLike, needed: Optional[int], what: str = "", note: str = "") -> DiskFullError:
    """The one-line error: what was being written, where, how much it needs and how much is free."""
    free = free_bytes(Path(path).parent)
    need = f"it needs {_mb(needed)}" if needed else "it needs more space"
    have = f", {_mb(free)} free there" if free is not None else ""
    label = f"{what} " if what else ""
    tail = f" ({note})" if note else ""
    return DiskFullError(
        f"disk full writing {label}{path}: {need}{have}{tail}; free some space or write elsewhere"
    )


def require_space(path: str | os.PathLike, needed: int, what: str = "") -> None:
    """Fail before writing when the file system holding `path` has less than `needed` bytes free. For writes
    through a memory map, where a full disk is a SIGBUS, not an error a program can catch."""
    free = free_bytes(path)
    if free is not None and free < needed:
        raise disk_full(path, needed, what)


@contextmanager
def writing(path: str | os.PathLike, needed: Optional[int] = None, what: str = "") -> Iterator[None]:
    """Turn ENOSPC/EDQUOT raised in the block into a DiskFullError naming `path` (other errors pass)."""
    try:
        yield
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full(path, needed, what) from None
        raise
