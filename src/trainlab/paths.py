"""Checks on the folders a command reads or writes, made before anything is created; the run dir's rules
(what marks one, what a failed start may remove again, no writes through symbolic links); and the one-line
error for a full disk.

Permission bits say little when the process runs as root (root may write anywhere chmod forbids), so the
output check does not read them: it creates a probe folder where the real one would go and removes it at
once. What really fails (a regular file in the way, /proc, a read-only mount, a full or missing parent)
fails here, with the path and the fix, instead of as a traceback halfway through the run.

A run dir is trainlab's when it is new or empty, or holds a file only trainlab writes there (LOCK_FILE, a
summary.json with a status, checkpoints/). Nothing in it is written through a symbolic link (a link planted
as config.yaml overwrote the file it pointed to), and a run that fails on bad input removes only the
folders this process created, recorded when it created them (MadeDirs), never one that was there before.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Optional

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


# ---------------------------------------------------------------- the run dir

LOCK_FILE = "trainlab.lock"  # the run's lock and its holder (trainlab.state.lock); also what marks a run dir
# Files only trainlab writes at the top of a run dir: one of them marks a folder as a run dir.
_MARKERS = (LOCK_FILE, "summary.json", "checkpoints")


class RunDirError(ConfigError):
    """run.dir is not a folder trainlab may write to (exit 2): a foreign folder, a link inside, in use."""


def run_dir_path(path: str | os.PathLike) -> Path:
    """The run dir a path names. A path with '..' is resolved first: 'work/new/../victim' is work/victim, and
    nothing is created at work/new (the folder the '..' climbs out of)."""
    path = Path(path).expanduser()
    return Path(os.path.realpath(path)) if ".." in path.parts else path


def _is_trainlab_summary(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "status" in data and "epochs" in data


def is_run_dir_marker(folder: Path, name: str) -> bool:
    """Whether `name` in `folder` is a file only trainlab writes there (what makes the folder a run dir)."""
    if name == LOCK_FILE:
        return True
    if name == "checkpoints":
        return (folder / name).is_dir()
    return name == "summary.json" and _is_trainlab_summary(folder / name)


def _links_inside(folder: Path) -> list[Path]:
    """Symbolic links at the top of a run dir and in its checkpoints/ (where trainlab writes)."""
    found: list[Path] = []
    checkpoints = folder / "checkpoints"
    with contextlib.suppress(OSError):
        found += [entry for entry in sorted(folder.iterdir()) if entry.is_symlink()]
    if not checkpoints.is_symlink():
        with contextlib.suppress(OSError):
            found += [entry for entry in sorted(checkpoints.iterdir()) if entry.is_symlink()]
    return found


def check_run_dir(path: str | os.PathLike) -> Path:
    """run.dir (chosen or default) must be a folder trainlab may write before the run builds anything: one
    that can be created, or an existing one that is empty or a trainlab run dir (run.dir itself may be a
    link to one), with no symbolic link where trainlab writes inside. Returns the run dir to use
    (run_dir_path); one line otherwise (RunDirError, exit 2)."""
    path = run_dir_path(path)
    check_output_dir(path, "run.dir", RunDirError)
    if not path.is_dir():
        return path
    entries = sorted(entry.name for entry in path.iterdir())
    if entries and not any(is_run_dir_marker(path, name) for name in _MARKERS if name in entries):
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise RunDirError(
            f"run.dir {path} holds files ({shown}) but is not a trainlab run dir (no {LOCK_FILE}, summary.json "
            "or checkpoints/); choose a new or empty folder for the run"
        )
    links = _links_inside(path)
    if links:
        raise RunDirError(
            f"run.dir {path}: {links[0]} is a symbolic link (to {os.readlink(links[0])}); trainlab writes no file "
            "through a link in a run dir: replace it with the file itself, or choose another run.dir"
        )
    return path


@dataclass
class MadeDirs:
    """The folders this process created for a run dir, resolved: all that a failed start may remove again
    (the deepest folder that existed before is never among them)."""

    parents: list[Path] = field(default_factory=list)  # outermost first
    run_dir: Optional[Path] = None  # the run dir itself, when this process created it
    # When the run dir existed: the names in it before this process wrote anything (taken under the run's
    # lock, so whatever appears beside them afterwards was made by this process).
    entries_before: Optional[frozenset[str]] = None


def make_run_dir(path: str | os.PathLike) -> MadeDirs:
    """Create the run dir and its missing parents one at a time, recording each folder this call created
    (a folder another process made meanwhile is not recorded, so it is never removed). Once the run holds
    the run dir's lock, `note_entries` records what an existing run dir holds."""
    target = Path(os.path.realpath(run_dir_path(path)))
    missing = []
    current = target
    while not os.path.lexists(current) and current.parent != current:
        missing.append(current)
        current = current.parent
    made = MadeDirs()
    for folder in reversed(missing):
        try:
            os.mkdir(folder)
        except FileExistsError:
            continue
        if folder == target:
            made.run_dir = folder
        else:
            made.parents.append(folder)
    if not target.is_dir():
        raise RunDirError(f"run.dir {path} could not be created as a folder; choose another run.dir")
    return made


def note_entries(made: MadeDirs, run_dir: str | os.PathLike, ours: tuple[str, ...] = ()) -> None:
    """For a run dir that existed: the names in it now, with the run's lock held (so whatever appears beside
    them later is this process's), less `ours` (the lock file, when taking the lock created it)."""
    if made.run_dir is None:
        made.entries_before = frozenset(entry.name for entry in Path(run_dir).iterdir()) - set(ours)


def remove_made_dirs(made: MadeDirs, run_dir: Path) -> None:
    """Remove what this process made for the run: the run dir itself when it made it (the same folder by its
    resolved path, not a link put in its place) and each parent it made that is left empty; in a run dir
    that existed, the entries that were not there before. Nothing that existed before is removed."""
    created = made.run_dir
    if created is not None:
        try:
            same = Path(os.path.realpath(run_dir_path(run_dir))) == created
            is_folder = stat.S_ISDIR(os.lstat(created).st_mode)
        except OSError:
            same = is_folder = False
        if same and is_folder:
            shutil.rmtree(created, ignore_errors=True)
    elif made.entries_before is not None:
        with contextlib.suppress(OSError):
            for entry in Path(run_dir).iterdir():
                if entry.name in made.entries_before:
                    continue
                if stat.S_ISDIR(os.lstat(entry).st_mode):
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink()
    for parent in reversed(made.parents):
        with contextlib.suppress(OSError):
            os.rmdir(parent)  # only when empty: something else may have been put there meanwhile


@contextmanager
def discard_new_run_dir(run: Any) -> Iterator[None]:
    """A run that fails on bad input (exit 2, e.g. an unreadable image found in the first batch) before its
    first checkpoint leaves nothing behind: the run dir and the parents (runs/) this process created are
    removed; in a run dir that existed before (a folder the user made, an earlier run's), only what this
    run added (its lock file, config.yaml, checkpoints/...); files that were there stay. Only a run that
    holds the run dir's lock removes anything: one refused because another holds it removes nothing (what
    appears there is the other run's). `run` is a Run: its `run_dir`, `made_dirs` (MadeDirs, from
    make_run_dir) and `lock` are read only after a failure."""
    try:
        yield
    except TrainlabError as exc:
        run_dir, made = getattr(run, "run_dir", None), getattr(run, "made_dirs", None)
        holds = bool(getattr(getattr(run, "lock", None), "held", False))
        if exc.exit_code == 2 and run.ctx.is_main and run_dir is not None and made is not None and holds:
            if not any(Path(run_dir).glob("checkpoints/*.pt")):
                remove_made_dirs(made, Path(run_dir))
        raise


def open_no_follow(path: str | os.PathLike, mode: str = "w", encoding: Optional[str] = "utf-8",
                   newline: Optional[str] = None) -> IO[Any]:
    """open() for writing a file in a run dir that refuses to write through a symbolic link: O_NOFOLLOW on
    the path's last part, so a link planted there, even mid-run, is refused (RunDirError), never followed.
    Modes: w, a, wb, ab, w+b."""
    flags = os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    flags |= os.O_RDWR if "+" in mode else os.O_WRONLY
    flags |= os.O_APPEND if "a" in mode else os.O_TRUNC
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP or os.path.islink(path):
            raise RunDirError(
                f"{path} is a symbolic link (to {os.readlink(path)}); trainlab writes no file through a link in a "
                "run dir: replace it with the file itself"
            ) from None
        raise
    if "b" in mode:
        return os.fdopen(fd, mode)
    return os.fdopen(fd, mode, encoding=encoding, newline=newline)


def write_text_no_follow(path: str | os.PathLike, text: str) -> None:
    """Path.write_text for a file in a run dir (see open_no_follow)."""
    with open_no_follow(path, "w") as f:
        f.write(text)


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
