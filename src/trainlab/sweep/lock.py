"""One sweep driver per sweep directory: two would launch the same runs (or trials) twice.

An exclusive `flock` on SWEEP_DIR/.sweep.lock, held for as long as the driver runs; the kernel lets go of it
when the process ends, however it ends, so a killed driver never leaves a stale lock behind. The file says
who holds it, for the message the second driver prints.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Optional

from trainlab.errors import UsageError

LOCK_FILE = ".sweep.lock"


class SweepLock:
    def __init__(self, sweep_dir: Path) -> None:
        self.path = Path(sweep_dir) / LOCK_FILE
        self.handle: Optional[Any] = None

    def __enter__(self) -> SweepLock:
        try:
            import fcntl
        except ImportError:  # not a POSIX system: no lock, as before
            return self
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            try:
                who = json.loads(holder)
                whom = f" (pid {who['pid']} on {who['host']}, since {who['since']})"
            except (ValueError, KeyError, TypeError):
                whom = ""
            raise UsageError(f"sweep {self.path.parent} is being run by another trainlab sweep{whom}; wait for it "
                             "to end, or stop it (Ctrl-C) and run this command again to continue") from None  # fmt: skip
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")  # fmt: skip
        handle.flush()
        self.handle = handle
        return self

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.close()  # closing releases the flock
            self.handle = None
