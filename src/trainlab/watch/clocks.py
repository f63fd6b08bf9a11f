"""An epoch's time split: data (blocked in the loader), compute, other; see watcher.py's docstring.

Host clocks only. On CUDA the compute figure comes from the device timer (cuda_timer.py) instead of the host
time between a batch's hand-over and the next request."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any, Optional

from trainlab.watch.cuda_timer import CudaStepTimer


class EpochClock:
    def __init__(self) -> None:
        self.start()

    def start(self) -> None:
        now = time.perf_counter()
        self.t_epoch_start = now
        self.t_last_step = now
        self.t_loop_end: Optional[float] = None
        self.t_yield: Optional[float] = None  # when the loop body received its batch
        self.watching = False  # the epoch's batches come through watch()
        self.wait_since_step = 0.0
        self.data_s = 0.0
        self.compute_host_s = 0.0
        self.excluded_s = 0.0  # host work inside the loop that is not the step (outside_compute)

    def timed(self, iterable: Iterable) -> Iterator[Any]:
        """Yield from `iterable`, adding the time blocked in `next()` (and `iter()`) to data time."""
        self.watching = True
        clock = time.perf_counter
        t_request = clock()
        iterator = iter(iterable)
        try:
            while True:
                if self.t_yield is not None:  # the loop body just finished with the previous batch
                    self.compute_host_s += t_request - self.t_yield
                    self.t_yield = None
                try:
                    batch = next(iterator)
                except StopIteration:
                    self.t_loop_end = clock()
                    self._add_wait(self.t_loop_end - t_request)
                    return
                t_got = clock()
                self._add_wait(t_got - t_request)
                self.t_yield = t_got
                yield batch
                t_request = clock()
        finally:
            if self.t_yield is not None:  # the loop was left with break (or an exception)
                now = clock()
                self.compute_host_s += now - self.t_yield
                self.t_yield = None
                self.t_loop_end = now

    def _add_wait(self, seconds: float) -> None:
        self.data_s += seconds
        self.wait_since_step += seconds

    def step(self, t: float) -> tuple[float, float]:
        """At step(): (wall time since the previous step, time waiting for data within it)."""
        wall, self.t_last_step = t - self.t_last_step, t
        wait, self.wait_since_step = self.wait_since_step, 0.0
        if not self.watching:  # no watch(): the whole step is compute
            self.compute_host_s += wall
        return wall, wait

    def split(self, t_end: float, timer: Optional[CudaStepTimer]) -> dict[str, Any]:
        """The epoch's figures at epoch_end(), data + compute + other = epoch time."""
        loop_end = self.t_loop_end if self.watching and self.t_loop_end is not None else t_end
        epoch_time = max(loop_end - self.t_epoch_start, 0.0)
        data = min(self.data_s, epoch_time)
        if timer is not None:  # the device events never span outside_compute() work
            device_time = timer.epoch_reset()  # waits for the epoch's last step: once per epoch
            compute = min(device_time, epoch_time - data)
        else:
            device_time = None
            compute = min(max(self.compute_host_s - self.excluded_s, 0.0), epoch_time - data)
        return {"data_time_s": data, "compute_time_s": compute, "train_time_s": compute,  # the run-dir name
                "other_time_s": max(epoch_time - data - compute, 0.0), "excluded_time_s": self.excluded_s,
                "epoch_time_s": epoch_time, "after_loop_s": max(t_end - loop_end, 0.0),
                "device_time_s": device_time}  # fmt: skip
