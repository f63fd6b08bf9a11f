"""memory_leak: a steady trend in sampled memory (host RSS, or device allocated memory), judged from host
numbers only (memory.py samples them)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Optional

import numpy as np

from trainlab.watch.events import Episode, Event
from trainlab.watch.figures import WARNING
from trainlab.watch.settings import WatchSettings
from trainlab.watch.stats import theil_sen


class LeakDetector:
    """memory_leak for one memory (host RSS or device allocated): a steady, large trend over steps.

    Two series of samples: the recent window (leak_window samples at the sampling rate: a fast leak shows in
    a few hundred steps) and the whole run since its warm-up, thinned to half whenever it holds twice that
    (a slow leak shows over the run). A new process (a resume) starts both again, with a new warm-up: its
    memory is not comparable with the old process's and it ramps up while it rebuilds."""

    LABELS = {"host": "host memory (process RSS)", "gpu": "device memory (allocated)"}

    def __init__(self, s: WatchSettings, source: str) -> None:
        self.s = s
        self.source = source
        self.samples: deque[tuple[int, float]] = deque(maxlen=s.leak_window)
        self.run_samples: list[tuple[int, float]] = []
        self.run_stride = 1  # one sample in `run_stride` goes into run_samples
        self.seen = 0
        self.warm_until = s.leak_warmup_steps
        self.episode = Episode()

    def restart(self, step: int) -> None:
        """This process's memory from `step` on is a new series (after a resume), warm-up included."""
        self.samples.clear()
        self.run_samples, self.run_stride, self.seen = [], 1, 0
        self.warm_until = step + self.s.leak_warmup_steps

    def add(self, step: int, mb: float) -> None:
        if step < self.warm_until:
            return
        self.samples.append((step, mb))
        if self.seen % self.run_stride == 0:
            self.run_samples.append((step, mb))
            if len(self.run_samples) >= self.s.leak_window:  # thinned: 32..64 samples over the whole run
                self.run_samples = self.run_samples[::2]
                self.run_stride *= 2
        self.seen += 1

    def _trend(self, samples: Any) -> Optional[tuple[float, float, float, float, float]]:
        """(slope MB/step, Kendall tau, span in steps, growth MB over the span, steadiness), or None with too few
        samples. Steadiness: the median rise between consecutive samples over the rise the slope predicts. A
        leak rises at nearly every sample (about 1); a healthy process's memory, which only ever grows, rises in
        a few jumps (a first validation, an allocator arena) and sits still in between (about 0), which Kendall
        tau alone reads as consistent: every pair across a jump rises."""
        if len(samples) < self.s.leak_min_samples:
            return None
        values = [p[1] for p in samples]
        if max(values) - min(values) < 0.5 * self.s.leak_min_total_mb:  # the usual case, for a few microseconds
            return 0.0, 0.0, float(samples[-1][0] - samples[0][0]), 0.0, 0.0
        x = np.array([p[0] for p in samples], dtype=np.float64)
        y = np.array(values, dtype=np.float64)
        slope, tau = theil_sen(x, y)
        span = float(x[-1] - x[0])
        dx, dy = np.diff(x), np.diff(y)
        keep = dx > 0
        expected = slope * dx[keep]
        steadiness = float(np.median(dy[keep] / expected)) if slope > 0 and keep.any() else 0.0
        return slope, tau, span, slope * span, steadiness

    def check(self, step: int, epoch: int, steps_per_epoch: int, steps_per_s: float,
              free_mb: Callable[[], Optional[float]], remaining_steps: Optional[int] = None) -> Optional[Event]:
        """A leak is a consistent trend (Kendall tau >= leak_min_tau) that grew leak_min_total_mb or more over its
        span, in the recent window or over the run. `free_mb` is asked only when the event fires (it is slow
        to read). With `remaining_steps` (the run told the watch its budget) the event says whether memory runs
        out before the run's end (critical) or after it."""
        s = self.s
        # the run's series is the recent window itself until it has been thinned or outgrown the window
        longer = self.run_stride > 1 or len(self.run_samples) > len(self.samples)
        trends = [t for t in (self._trend(self.samples), self._trend(self.run_samples) if longer else None)
                  if t is not None]
        rising = [t for t in trends if t[1] >= s.leak_min_tau and t[3] >= s.leak_min_total_mb
                  and t[4] >= s.leak_min_steadiness and t[0] * 1024 >= s.leak_min_kb_per_step]
        if not trends:
            return None
        if not self.episode.update(WARNING if rising else 0):
            return None
        slope, tau, span, growth, steadiness = max(rising, key=lambda t: t[3])
        per_epoch = slope * max(steps_per_epoch, 1)
        runway = ""
        free = free_mb()
        now_mb = float(self.samples[-1][1])
        data: dict[str, Any] = {"source": self.source, "mb_per_step": slope, "mb_per_epoch": per_epoch,
                                "growth_mb": growth, "span_steps": span, "tau": tau, "steadiness": steadiness,
                                "now_mb": now_mb}
        if free is not None and slope > 0:
            steps_left = free / slope
            epochs_left = steps_left / max(steps_per_epoch, 1)
            data.update(free_mb=free, epochs_until_full=epochs_left)
            runway = f"; the {free:,.0f} MB still free run out in {epochs_left:.1f} epochs"
            if steps_per_s > 0:
                minutes = steps_left / steps_per_s / 60.0
                data["minutes_until_full"] = minutes
                runway += f" (~{minutes:,.0f} min)"
            if remaining_steps is not None:
                data.update(steps_until_full=steps_left, remaining_steps=remaining_steps)
                runway += (f", before the run's remaining {remaining_steps:,} steps end" if steps_left < remaining_steps
                           else f", after the run's remaining {remaining_steps:,} steps (+{slope * remaining_steps:,.0f} MB by then)")
        severity = "critical" if data.get("steps_until_full", float("inf")) < (remaining_steps or 0) else "warning"
        return Event(
            "memory_leak", severity, step, epoch,
            f"{self.LABELS[self.source]} grows steadily: {per_epoch:+,.1f} MB per epoch ({slope * 1024:,.0f} KB/step, "
            f"{growth:+,.0f} MB over {span:.0f} steps, rising in {(tau + 1) / 2:.0%} of sample pairs){runway}. "
            f"Something keeps tensors alive across steps: store loss.item() not loss, .detach() outputs you keep, "
            f"and clear lists or caches that grow every step.",
            data,
        )

    def state_dict(self) -> dict[str, Any]:
        # the samples stay with this process: a resumed process starts its own series (restart())
        return {"episode": self.episode.active_level}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.episode.active_level = d["episode"]
