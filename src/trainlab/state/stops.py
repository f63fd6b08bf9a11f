"""Stop signals (SIGTERM, SIGINT, SIGUSR1) turned into a flag the loop checks, so a run saves and exits 143."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


def _default_signals() -> tuple[int, ...]:
    names = ("SIGTERM", "SIGINT", "SIGUSR1")  # SIGUSR1 is absent on Windows
    return tuple(getattr(signal, name) for name in names if hasattr(signal, name))


class PreemptionGuard:
    """Turns stop signals into a flag the training loop checks at step boundaries.

    The first signal sets ``requested`` and records ``signal_name``; later ones never raise (they
    are counted in ``extra_signals``), so a save in progress is never interrupted. Previous handlers
    are restored on exit. Off the main thread Python cannot install handlers: the guard is then a
    no-op and says so in ``note``.
    """

    def __init__(self, signals: tuple[int, ...] | None = None) -> None:
        self.signals = tuple(signals) if signals is not None else _default_signals()
        self.requested = False
        self.signal_name: str | None = None
        self.extra_signals = 0
        self.note: str | None = None
        self._saving_depth = 0
        self._previous: dict[int, Any] = {}

    @property
    def is_saving(self) -> bool:
        return self._saving_depth > 0

    def _handle(self, signum: int, frame: Any) -> None:
        if not self.requested:
            self.requested = True
            self.signal_name = signal.Signals(signum).name
        else:
            # While saving this keeps the save intact; otherwise the flag is already set and the
            # loop will stop at the next step boundary anyway.
            self.extra_signals += 1

    def request(self, signal_name: str) -> None:
        """Set the flag as if a signal had arrived (e.g. a stop agreed across DDP ranks)."""
        if not self.requested:
            self.requested = True
            self.signal_name = signal_name

    def __enter__(self) -> PreemptionGuard:
        if threading.current_thread() is not threading.main_thread():
            self.note = "stop signals are not handled: the training loop is not on the main thread"
            return self
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    @contextlib.contextmanager
    def saving(self) -> Iterator[None]:
        """Marks a save in progress (signals arriving now are absorbed)."""
        self._saving_depth += 1
        try:
            yield
        finally:
            self._saving_depth -= 1
