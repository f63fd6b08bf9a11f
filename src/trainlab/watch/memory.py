"""Memory sampling and the leak checks: host RSS (and device allocated memory on CUDA) sampled every
`watch.leak_sample_every` steps into one LeakDetector each; host-side counters only, no device sync."""

from __future__ import annotations

from typing import Any, Optional

import psutil
import torch

from trainlab.watch.events import Event
from trainlab.watch.leaks import LeakDetector
from trainlab.watch.sampler import MB, rss_mb
from trainlab.watch.settings import WatchSettings


class MemoryWatch:
    def __init__(self, s: WatchSettings, device: torch.device, on_cuda: bool) -> None:
        self.device, self.on_cuda = device, on_cuda
        self.leaks = {"host": LeakDetector(s, "host")}
        if on_cuda:
            self.leaks["gpu"] = LeakDetector(s, "gpu")
        self.last_rss_mb = 0.0
        self.peak_rss_mb = 0.0
        self.rss_start = 0.0  # of the epoch
        self.gpu_start: Optional[float] = None

    def gpu_allocated_mb(self) -> Optional[float]:
        return torch.cuda.memory_allocated(self.device) / MB if self.on_cuda else None

    def sample(self, step: int) -> float:
        rss = rss_mb()
        self.last_rss_mb = rss
        self.peak_rss_mb = max(self.peak_rss_mb, rss)
        self.leaks["host"].add(step, rss)
        if "gpu" in self.leaks:
            self.leaks["gpu"].add(step, self.gpu_allocated_mb())
        return rss

    def epoch_start(self, step: int) -> None:
        self.rss_start = self.sample(step)
        self.gpu_start = self.gpu_allocated_mb()

    def epoch_figures(self, step: int, sampler_peak_mb: float) -> dict[str, Any]:
        """The epoch report's memory fields (one more sample, at the epoch's end)."""
        rss = self.sample(step)
        self.peak_rss_mb = max(self.peak_rss_mb, sampler_peak_mb)
        return {"rss_mb": rss, "rss_delta_mb": rss - self.rss_start, "peak_rss_mb": self.peak_rss_mb}

    def gpu_figures(self) -> dict[str, Any]:
        if not self.on_cuda:
            return {}
        alloc = self.gpu_allocated_mb()
        return {"gpu_alloc_mb": alloc, "gpu_alloc_delta_mb": alloc - (self.gpu_start or 0.0),
                "gpu_peak_mb": torch.cuda.max_memory_allocated(self.device) / MB}

    def step_figures(self) -> dict[str, Any]:
        """The step record's device memory fields: host-side counters, no sync."""
        if not self.on_cuda:
            return {}
        return {"gpu_alloc_mb": self.gpu_allocated_mb(), "gpu_reserved_mb": torch.cuda.memory_reserved(self.device) / MB,
                "gpu_peak_mb": torch.cuda.max_memory_allocated(self.device) / MB}

    def leak_events(self, step: int, epoch: int, steps_per_epoch: int, steps_per_s: float,
                    remaining_steps: Optional[int]) -> list[Event]:
        free = {"host": lambda: psutil.virtual_memory().available / MB, "gpu": self.gpu_free_mb}
        events = []
        for source, detector in self.leaks.items():
            e = detector.check(step, epoch, steps_per_epoch, steps_per_s, free[source], remaining_steps)
            events += [e] if e else []
        return events

    def gpu_free_mb(self) -> Optional[float]:
        try:  # free memory on the device plus what the caching allocator holds but does not use
            free, _ = torch.cuda.mem_get_info(self.device)
            cached = torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
            return (free + cached) / MB
        except Exception:
            return None

    def state_dict(self) -> dict[str, Any]:
        return {k: d.state_dict() for k, d in self.leaks.items()}

    def load_state_dict(self, d: dict[str, Any], step: int) -> None:
        """A resume: the leak episodes carry over (a leak reported before the stop is not reported again), the
        samples do not: this process's memory starts a new series at `step`, after its own warm-up."""
        for key, detector in self.leaks.items():
            if key in d:
                detector.load_state_dict(d[key])
            detector.restart(step)
