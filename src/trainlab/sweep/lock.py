"""One sweep driver per sweep directory: two would launch the same runs (or trials) twice.

The run dir's own lock (trainlab.state.lock: an exclusive flock on DIR/trainlab.lock, dropped by the kernel
when the process ends however it ends, so a killed driver leaves no stale lock) taken on the sweep directory
for as long as the driver runs; a second driver is refused in one line naming the first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from trainlab.errors import UsageError
from trainlab.paths import LOCK_FILE
from trainlab.state.lock import FileLock, RunDirLocked, read_holder


class SweepLock:
    def __init__(self, sweep_dir: Path) -> None:
        self.sweep_dir = Path(sweep_dir)
        self.lock: Optional[FileLock] = None

    def __enter__(self) -> SweepLock:
        lock = FileLock(self.sweep_dir)
        try:
            lock.acquire()
        except RunDirLocked:
            holder = read_holder(self.sweep_dir / LOCK_FILE)
            whom = f" ({holder.describe()})" if holder else ""
            raise UsageError(f"sweep {self.sweep_dir} is being run by another trainlab sweep{whom}; wait for it to "
                             "end, or stop it (Ctrl-C) and run this command again to continue") from None  # fmt: skip
        self.lock = lock
        return self

    def __exit__(self, *exc: object) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None
