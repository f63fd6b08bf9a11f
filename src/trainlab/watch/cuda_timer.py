"""Device time of each step from CUDA events, read only once the device has passed them (no sync)."""

from __future__ import annotations

from collections import deque

import torch


class CudaStepTimer:
    """Records an event at each step's start (batch handed over) and end (`step()`); sums the elapsed
    device time of pairs whose end event has completed. Events are pooled and reused."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._free: list[torch.cuda.Event] = []
        self._pending: deque[tuple[torch.cuda.Event, torch.cuda.Event]] = deque()
        self._start: torch.cuda.Event | None = None
        self._last_end: torch.cuda.Event | None = None  # start of the next step when there is no watch()
        self.device_time_s = 0.0  # completed steps, this epoch
        self.steps_timed = 0

    def _event(self) -> torch.cuda.Event:
        return self._free.pop() if self._free else torch.cuda.Event(enable_timing=True)

    def mark_start(self) -> None:
        self._start = self._event()
        self._start.record(torch.cuda.current_stream(self.device))

    def mark_end(self) -> None:
        end = self._event()
        end.record(torch.cuda.current_stream(self.device))
        if self._start is not None:
            self._pending.append((self._start, end))
            self._start = None
        elif self._last_end is not None:  # no watch(): a step runs from the previous step's end
            self._pending.append((self._last_end, end))
        self._last_end = end
        self.poll()

    def poll(self, wait: bool = False) -> None:
        while self._pending:
            start, end = self._pending[0]
            if wait:
                end.synchronize()  # only at epoch end: one wait per epoch for the figures
            elif not end.query():
                return
            self._pending.popleft()
            self.device_time_s += start.elapsed_time(end) / 1000.0
            self.steps_timed += 1
            self._free.append(start)  # a start is never needed again once its pair is read
            if end is not self._last_end and (not self._pending or self._pending[0][0] is not end):
                self._free.append(end)

    def epoch_reset(self) -> float:
        """Wait for the epoch's last step, return its device time, and start the next epoch from zero."""
        self.poll(wait=True)
        total = self.device_time_s
        self.device_time_s, self.steps_timed = 0.0, 0
        self._last_end = None
        return total
