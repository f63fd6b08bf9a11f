"""Checkpoints off the training path: one background thread writes (and uploads) what the loop hands it.

The loop takes the state to host memory at the step boundary (checkpoint.to_host) and submits the write;
training goes on while the thread serialises, hashes, fsyncs, renames and uploads. One write is in flight
at a time: the next submit waits for the previous one, so at most one extra copy of the state is held and
files land in the order they were taken. A failure in the thread (a full disk) is raised in the loop at
the next submit or wait, as if the write had happened there.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Optional


class BackgroundWriter:
    """Runs one job at a time on a daemon thread; `wait()` blocks until it is done (and re-raises its error)."""

    def __init__(self, name: str = "trainlab-checkpoint-writer") -> None:
        self.name = name
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None
        self.waited_s = 0.0  # time the loop spent waiting for a previous write (a write slower than an interval)

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, job: Callable[[], Any]) -> None:
        """Start `job` on the thread once the previous one has finished."""
        self.wait()
        self._error = None

        def run() -> None:
            try:
                job()
            except BaseException as exc:  # handed to the loop: it decides what the error means
                self._error = exc

        self._thread = threading.Thread(target=run, name=self.name, daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Block until the job in flight is done; raise what it raised, once."""
        thread = self._thread
        if thread is not None:
            started = time.perf_counter()
            thread.join()
            self.waited_s += time.perf_counter() - started
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error
