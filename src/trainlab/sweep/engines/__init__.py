"""Engines run a sweep's jobs: `local` (a process pool on this machine), `ray` (one Ray task per run, on a
Ray cluster), `submitit` (one SLURM job per run through submitit; grids as job arrays).

An engine runs one job to its end with `run(job)` (blocking; the sweep calls it from a thread per job in
flight) and a grid's jobs with `run_all`. `open()` checks that it can run anything at all (the package is
installed, the cluster answers) and raises a one-line UsageError (exit 2) naming the extra to install or the
address that did not answer, before the sweep writes anything.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Optional

from trainlab.errors import UsageError
from trainlab.sweep.jobs import Job, Result

ENGINES = ("local", "ray", "submitit")
EXTRAS = {"ray": ("ray", "trainlab[ray]"), "submitit": ("submitit", "trainlab[slurm]"),
          "optuna": ("optuna", "trainlab[optuna]")}  # fmt: skip


@dataclass
class EngineOptions:
    parallel: Optional[int] = None  # runs at a time; None: the engine's default
    gpus: Optional[list[str]] = None  # local: the CUDA_VISIBLE_DEVICES entries to hand out
    ray_address: Optional[str] = None
    ray_max_retries: int = 3
    submitit_cluster: str = "slurm"  # slurm | local
    slurm_partition: Optional[str] = None
    slurm_gpus_per_task: Optional[int] = None
    slurm_cpus_per_task: Optional[int] = None
    slurm_time_min: Optional[int] = None
    slurm_signal_delay_s: int = 120
    slurm_options: dict[str, str] = field(default_factory=dict)
    folder: Any = None  # where the engine keeps its own files (submitit's job folders)


Started = Callable[[Job, str], None]  # (job, where it runs) once it is handed to the engine


class Engine:
    name = "engine"
    default_parallel: Optional[int] = 1  # None: every job of a grid is handed over at once

    def __init__(self, options: EngineOptions) -> None:
        self.options = options
        self.stopping = threading.Event()  # set by interrupt(): start no job that has not started

    def open(self) -> None:
        """Check the engine can run jobs; one-line UsageError if not."""

    def close(self) -> None:
        """Let go of the cluster (the jobs are done)."""

    def launch_info(self, job: Job) -> dict:
        """What identifies the job in the engine (kept with its trial, for `alive` in a later sweep)."""
        return {}

    def alive(self, launch: dict) -> Optional[bool]:
        """Whether the job a previous sweep launched (the trial's `trainlab:launch` record) is still queued or
        running, when the engine can tell; None when it cannot (the trial's heartbeat decides)."""
        return None

    def check(self, job: Job) -> None:
        """Refuse, in one line, a job this engine cannot place (before anything is launched)."""

    def run(self, job: Job, started: Started) -> Result:
        raise NotImplementedError

    def interrupt(self) -> None:
        """The sweep was interrupted: start nothing new, ask the jobs in flight to checkpoint and stop."""
        self.stopping.set()

    def parallel(self, count: int) -> int:
        wanted = self.options.parallel or self.default_parallel or count
        return max(1, min(wanted, count)) if count else 1

    def run_all(self, jobs: list[Job], started: Started, finished: Callable[[Job, Result], None]) -> None:
        """A grid: every job to its end, `parallel` at a time."""
        if not jobs:
            return

        def one(job: Job) -> None:
            if not self.stopping.is_set():
                finished(job, self.run(job, started))

        with ThreadPoolExecutor(max_workers=self.parallel(len(jobs))) as pool:
            for future in [pool.submit(one, job) for job in jobs]:
                future.result()


def require(extra: str, what: str) -> Any:
    """Import the package behind an extra, or say in one line which extra to install."""
    module, name = EXTRAS[extra]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(f"{what} needs {module}, which is not installed: pip install '{name}'") from None


def make_engine(name: str, options: EngineOptions) -> Engine:
    if name == "local":
        from trainlab.sweep.engines.local import LocalEngine

        return LocalEngine(options)
    if name == "ray":
        require("ray", "--engine ray")
        from trainlab.sweep.engines.ray_engine import RayEngine

        return RayEngine(options)
    if name == "submitit":
        from trainlab.sweep.engines import preempt_signal  # before submitit is imported: it reads it then

        preempt_signal.choose()
        require("submitit", "--engine submitit")
        from trainlab.sweep.engines.submitit_engine import SubmititEngine

        return SubmititEngine(options)
    raise UsageError(f"--engine {name}: choose one of {', '.join(ENGINES)}")
