"""One writer per run dir: an exclusive lock held for the run's life.

Two `trainlab train` on the same run.dir both ran to the end: metrics.csv got every epoch twice, two "best"
files from different runs, and the second resumed from the first's periodic checkpoint while it kept
writing. The run now takes an OS lock (`fcntl.flock`) on RUN_DIR/trainlab.lock before it reads or writes
anything there, and writes the holder (host, pid, since when, command) into the file. The kernel drops the
lock when the process ends however it ends, so a SIGKILL, an OOM kill or a power loss leaves no stale lock,
and whether a run is running is whether its lock is held (`held_by`, read by `trainlab runs`). Processes the
run forks (DataLoader workers) close their copy, so the lock dies with the run itself. Under torchrun rank 0
holds it for the job.

`RunDirLock` is the interface a run needs: `acquire() -> Holder` (or RunDirLocked naming the holder) and
`release()`. A run dir on an object store also takes a lease in the store (state/lease.py), which implements
the same two: the file lock here holds only on the machine whose cache it is.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import time
import weakref
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Optional, Protocol

from trainlab.paths import LOCK_FILE, RunDirError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; the run goes on unlocked, and says so
    fcntl = None  # type: ignore[assignment]

# A reader (`trainlab runs`) probes the lock for a moment; a starting run that meets a probe tries again for
# this long before it calls the run dir busy.
ACQUIRE_PATIENCE_S = 0.5


@dataclass(frozen=True)
class Holder:
    """Who holds a run dir."""

    host: str
    pid: int
    since: str  # ISO time, local
    command: str = ""

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, since {self.since}"


class RunDirLocked(RunDirError):
    """Another process holds the run dir (exit 2)."""


class RunDirLock(Protocol):
    """What a run needs from a lock on its run dir (a file lock here; a lease on an object store)."""

    def acquire(self) -> Holder: ...

    def release(self) -> None: ...


def this_process() -> Holder:
    return Holder(host=socket.gethostname(), pid=os.getpid(),
                  since=datetime.now().isoformat(timespec="seconds"), command=" ".join(sys.argv)[:500])  # fmt: skip


def read_holder(path: Path) -> Optional[Holder]:
    """The holder a lock file names (whoever wrote it last; see held_by for whether it still holds it)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Holder(host=str(data["host"]), pid=int(data["pid"]), since=str(data["since"]),
                      command=str(data.get("command", "")))  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError):
        return None


class FileLock:
    """RunDirLock on RUN_DIR/trainlab.lock with flock. `created_file`: whether acquire made the file (a run
    that fails on bad input removes what it made)."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: Optional[int] = None
        self.created_file = False
        self.holder: Optional[Holder] = None

    def acquire(self) -> Holder:
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        existed = os.path.lexists(self.path)
        try:
            fd = os.open(self.path, flags, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise RunDirError(f"{self.path} is a symbolic link; remove it (trainlab writes no file through a "
                                  "link in a run dir)") from None  # fmt: skip
            raise
        self.created_file = not existed
        if fcntl is None:
            self.fd = fd
            return self._write_holder()
        deadline = time.monotonic() + ACQUIRE_PATIENCE_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                os.close(fd)
                self.created_file = False
                holder = read_holder(self.path)
                who = f"trainlab ({holder.describe()})" if holder else "another trainlab process"
                raise RunDirLocked(
                    f"run.dir {self.path.parent} is in use by {who}; wait for it to end or stop it, or choose "
                    "another run.dir (one run writes a run dir at a time)"
                ) from None
            except OSError as exc:  # a file system without locks (some FUSE/NFS setups): go on, and say so
                print(f"WARNING: cannot lock {self.path} ({exc.strerror or exc}); a second trainlab on this run "
                      "dir would not be refused", file=sys.stderr, flush=True)  # fmt: skip
                break
        self.fd = fd
        _HELD.add(self)  # a forked child (a DataLoader worker) closes its copy: the lock ends with this process
        return self._write_holder()

    @property
    def held(self) -> bool:
        """Whether this process holds the lock now."""
        return self.fd is not None

    def _write_holder(self) -> Holder:
        assert self.fd is not None
        self.holder = this_process()
        data = (json.dumps(asdict(self.holder)) + "\n").encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)
        with contextlib.suppress(OSError):
            os.fsync(self.fd)
        return self.holder

    def _close_in_child(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None

    def release(self) -> None:
        """Drop the lock (the file stays: removing it would race a process opening it)."""
        _HELD.discard(self)
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            if fcntl is not None:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
        self.fd = None


# The locks this process holds. A forked child inherits their descriptors, and flock belongs to the open file,
# not the process: a DataLoader worker outliving a SIGKILLed run (seconds) would keep its run dir locked.
_HELD: weakref.WeakSet[FileLock] = weakref.WeakSet()


def _close_inherited_locks() -> None:
    for lock in list(_HELD):
        lock._close_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


def held_by(run_dir: str | os.PathLike) -> Optional[Holder]:
    """The holder of a run dir's lock while it is held, else None. None too for a run dir without a lock
    file (made before locks) or where locks do not work: the caller falls back on what the files say."""
    path = Path(run_dir) / LOCK_FILE
    if fcntl is None or not path.is_file() or path.is_symlink():
        return None
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        # A shared lock conflicts only with the run's exclusive one, and is dropped at once.
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return read_holder(path) or Holder(host="?", pid=0, since="?")
    except OSError:
        return None
    finally:
        os.close(fd)  # also drops the shared lock when it was taken
    return None


def is_held(run_dir: str | os.PathLike) -> Optional[bool]:
    """True while a process holds the run dir's lock, False when its lock file is there and free, None when
    the run dir has no lock file (a run from before locks: nothing to tell)."""
    path = Path(run_dir) / LOCK_FILE
    if fcntl is None or not path.is_file():
        return None
    return held_by(run_dir) is not None
