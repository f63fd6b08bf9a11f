"""One writer per run dir on an object store: a lease in the store, beside the run's files.

The file lock (state/lock.py) holds on one machine: two machines working on the same `s3://` run dir each lock
their own cache and would both write the bucket (a spot instance's replacement started while the old one still
uploads, or the same command sent to two machines). A run on a store URL also takes RUN/trainlab.lease.json
there: its holder (host, pid, since), a token of its own and the time it runs out, renewed by a daemon thread
every third of `run.lease_s`. A second run that finds a live lease waits up to `run.lease_s` for it to end or
run out (a lost machine stops renewing), then is refused in one line naming the holder. A lease whose holder is
a process of this machine that no longer exists (a SIGKILL) is taken at once. An object store has no atomic
"create if absent" that every fsspec backend offers, so two runs starting within the same second could both
write a lease: each reads its own back after a moment and the one that finds the other's token gives up.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, Optional

from trainlab.errors import ConfigError, first_line
from trainlab.state.lock import Holder, RunDirLocked, this_process

LEASE_FILE = "trainlab.lease.json"
POLL_S = 1.0  # how often a waiting run reads the lease again
SETTLE_S = 0.5  # between writing a new lease and reading it back (the race of two starts in one second)


@dataclass(frozen=True)
class Lease:
    holder: Holder
    token: str
    expires: float  # seconds since the epoch (UTC): the holder renews it before then

    def describe(self) -> str:
        until = datetime.fromtimestamp(self.expires, timezone.utc).strftime("%H:%M:%S UTC")
        return f"{self.holder.describe()}, renewed until {until}"

    def dead_here(self) -> bool:
        """Whether its holder is a process of this machine that has ended (nothing will renew it)."""
        if self.holder.host != socket.gethostname() or self.holder.pid <= 0:
            return False
        try:
            os.kill(self.holder.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            pass
        return False


class StoreLease:
    """RunDirLock (acquire -> Holder, release) as a lease at `path` on the fsspec filesystem `fs`."""

    def __init__(self, fs: Any, path: str, url: str, lease_s: float,
                 say: Callable[[str], None] = print, warn: Callable[[str], None] = print) -> None:  # fmt: skip
        self.fs, self.path, self.url = fs, path, url
        self.lease_s = float(lease_s)
        self.say, self.warn = say, warn
        self.token = uuid.uuid4().hex
        self.holder: Optional[Holder] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._renew_failed = False

    # -- the lease in the store ------------------------------------------------------------------
    def _read(self) -> Optional[Lease]:
        try:
            data = json.loads(self.fs.cat_file(self.path))
            holder = Holder(**{k: data["holder"][k] for k in ("host", "pid", "since", "command")})
            return Lease(holder=holder, token=str(data["token"]), expires=float(data["expires"]))
        except (FileNotFoundError, ValueError, KeyError, TypeError):  # none, or damaged: nobody renews it
            return None

    def _write(self) -> None:
        assert self.holder is not None
        lease = Lease(holder=self.holder, token=self.token, expires=time.time() + self.lease_s)
        self.fs.pipe_file(self.path, (json.dumps(asdict(lease)) + "\n").encode())

    def _problem(self, exc: BaseException) -> ConfigError:
        first = first_line(exc)[:200]
        return ConfigError(f"run.dir {self.url}: cannot read or write its lease {LEASE_FILE} ({first}); check "
                           "the store's permissions")  # fmt: skip

    # -- RunDirLock ------------------------------------------------------------------------------
    def acquire(self) -> Holder:
        self.holder = this_process()
        deadline = time.monotonic() + self.lease_s
        said = False
        try:
            while True:
                current = self._read()
                if current is None or current.token == self.token or current.expires <= time.time():
                    break
                if current.dead_here():
                    self.say(f"the lease on {self.url} was held by {current.holder.describe()}, which has ended: "
                             "taking it over")  # fmt: skip
                    break
                if time.monotonic() >= deadline:
                    raise RunDirLocked(
                        f"run.dir {self.url} is in use by trainlab ({current.describe()}); wait for it to end or "
                        "stop it, or choose another run.dir (one run writes a run dir at a time)"
                    )
                if not said:
                    self.say(f"waiting up to {self.lease_s:g} s for the lease on {self.url}, held by "
                             f"{current.describe()} (a lost machine stops renewing it)")  # fmt: skip
                    said = True
                time.sleep(POLL_S)
            self._write()
            time.sleep(SETTLE_S)
            mine = self._read()
        except RunDirLocked:
            raise
        except Exception as exc:
            raise self._problem(exc) from None
        if mine is None or mine.token != self.token:
            other = mine.describe() if mine is not None else "another process"
            raise RunDirLocked(f"run.dir {self.url} was taken at the same moment by trainlab ({other}); choose "
                               "another run.dir or stop that run")  # fmt: skip
        self._thread = threading.Thread(target=self._renew, name="trainlab-lease", daemon=True)
        self._thread.start()
        return self.holder

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                self._write()
                self._renew_failed = False
            except Exception as exc:  # the store is away: the run goes on; the lease may run out meanwhile
                if not self._renew_failed:
                    first = first_line(exc)[:160]
                    self.warn(f"could not renew the lease on {self.url} ({first}); retrying")
                self._renew_failed = True

    def release(self) -> None:
        """Stop renewing and remove the lease if it is still this run's (this process wrote it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.holder is None:
            return
        with contextlib.suppress(Exception):
            current = self._read()
            if current is not None and current.token == self.token:
                self.fs.rm_file(self.path)
        self.holder = None
