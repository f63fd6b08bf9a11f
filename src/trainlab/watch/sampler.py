"""System figures from a low-rate daemon thread, so the training loop never pays for them."""

from __future__ import annotations

import os
import threading
from typing import Any, Optional

import psutil
import torch

MB = 1024 * 1024


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_statm_fd: Optional[int] = None


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: a container's or taskset's limit), as torch's DataLoader
    counts them when it warns that more workers than that may run slow or freeze."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def rss_mb() -> float:
    """This process's resident memory. Reads /proc/self/statm directly on Linux (~10x cheaper than psutil),
    because the training loop calls it every few steps."""
    global _statm_fd
    try:
        if _statm_fd is None:
            _statm_fd = os.open("/proc/self/statm", os.O_RDONLY)
        return int(os.pread(_statm_fd, 128, 0).split()[1]) * _PAGE / MB
    except OSError:
        return psutil.Process().memory_info().rss / MB


class SystemSampler:
    """Samples CPU %, process RSS, RAM % and GPU utilisation every `interval_s` seconds.

    `latest` is replaced as a whole dict (an atomic reference swap), so readers need no lock.
    """

    def __init__(self, interval_s: float = 0.5, device: torch.device | None = None) -> None:
        self.interval_s = max(0.05, float(interval_s))
        self.device = device
        self.latest: dict[str, Any] = {}
        self.peak_rss_mb = 0.0
        self._gpu_util_ok = device is not None and device.type == "cuda"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        psutil.cpu_percent(None)  # the first call only starts the measurement interval
        self.sample()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="trainlab-watch-sampler", daemon=True)
            self._thread.start()

    def stop(self, join: bool = True) -> None:
        self._stop.set()
        if join and self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sample()
            except Exception:  # a monitor must never take the run down
                pass

    def sample(self) -> dict[str, Any]:
        rss = rss_mb()
        self.peak_rss_mb = max(self.peak_rss_mb, rss)
        snap: dict[str, Any] = {
            "cpu_pct": psutil.cpu_percent(None),
            "rss_mb": rss,
            "ram_pct": psutil.virtual_memory().percent,
        }
        if self._gpu_util_ok:
            try:  # NVML through torch (needs pynvml / nvidia-ml-py); absent on many machines
                snap["gpu_util_pct"] = float(torch.cuda.utilization(self.device))
            except Exception:
                self._gpu_util_ok = False
        self.latest = snap
        return snap
