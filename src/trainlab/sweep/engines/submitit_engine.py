"""The submitit engine: each run one SLURM job (a grid one job array), or with `--submitit-cluster local` the
same jobs as processes of submitit's local executor (how the tests run it).

The job asks for one task on one node, `--slurm-gpus-per-task` GPUs (default train.nproc, 0 for
train.device=cpu), `--slurm-partition`, `--slurm-time`, `--slurm-cpus-per-task` and any `--slurm-option
KEY=VALUE` (sbatch's long options). SLURM signals the job `--slurm-signal-delay` seconds before its time
limit (USR1: preempt_signal.py); submitit hands the signal to TrainJob.checkpoint, which passes SIGUSR1 on to
the run (trainlab checkpoints and exits 143) and waits for it, then submitit requeues the job; the requeued
job runs the same command, which resumes the run. A preempted job is requeued the same way.
"""

from __future__ import annotations

import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import submitit
from submitit.core.job_environment import JobEnvironment

from trainlab.errors import UsageError
from trainlab.sweep.engines import Engine, EngineOptions, Started, preempt_signal
from trainlab.sweep.jobs import Job, Result, TrainProcess

LOCAL_TIMEOUT_MIN = 7 * 24 * 60  # the local executor's default is 2 minutes: no limit unless --slurm-time
ALIVE_STATES = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED", "UNKNOWN")
STOP_MARGIN_S = 15  # of the signal delay: what the checkpoint may take before SLURM's kill


class TrainJob(submitit.helpers.Checkpointable):
    """What a submitit job runs: the run as a child process, stopped and requeued on the scheduler's signal."""

    def __init__(self, job: Job, grace_s: float = 100.0) -> None:
        self.job = job
        self.grace_s = grace_s
        self.process: Optional[TrainProcess] = None

    def __call__(self) -> Result:
        usr = JobEnvironment._usr_sig()
        # the scheduler's signal is submitit's to handle (it calls checkpoint below); the run gets SIGUSR1 from
        # there, and must not die of a signal it has no handler for (USR2 ends a process by default)
        ignore = (usr,) if usr not in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT) else ()
        self.process = TrainProcess(self.job, ignore=ignore)
        self.process.start()
        self.process.wait()
        result = self.process.result()
        result.where = f"job {submitit.JobEnvironment().job_id}"
        return result

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Called by submitit's signal handler (time limit near, or preempted): stop the run at a checkpoint,
        then requeue this job; the requeued job resumes the run from that checkpoint."""
        if self.process is not None:
            self.process.stop(signal.SIGUSR1, grace_s=self.grace_s)
        return submitit.helpers.DelayedSubmission(TrainJob(self.job, self.grace_s))

    def __getstate__(self) -> dict:
        return {"job": self.job, "grace_s": self.grace_s, "process": None}


def parse_time(text: str) -> int:
    """SLURM's time formats (minutes, MM:SS, HH:MM:SS, D-HH[:MM[:SS]]) -> whole minutes, at least 1."""
    text = str(text).strip()
    days = 0
    if "-" in text:
        day_text, text = text.split("-", 1)
        if not day_text.isdigit():
            raise ValueError(text)
        days = int(day_text)
    parts = [int(p) for p in text.split(":")]  # ValueError on anything else
    if any(p < 0 for p in parts) or not 1 <= len(parts) <= 3:
        raise ValueError(text)
    if days:
        hours, minutes, seconds = (parts + [0, 0])[:3]
    elif len(parts) == 1:
        hours, minutes, seconds = 0, parts[0], 0
    elif len(parts) == 2:
        hours, minutes, seconds = 0, parts[0], parts[1]
    else:
        hours, minutes, seconds = parts
    total = days * 24 * 60 + hours * 60 + minutes + (1 if seconds else 0)
    if total < 1:
        raise ValueError(text)
    return total


class SubmititEngine(Engine):
    name = "submitit"
    default_parallel = None  # a grid is one job array; SLURM paces it (--parallel: the array's %N)

    def __init__(self, options: EngineOptions) -> None:
        super().__init__(options)
        self.cluster = options.submitit_cluster
        self.jobs: dict[str, Any] = {}
        self.lock = threading.Lock()
        # submitit read the variable when it was imported; a process that imported it earlier is told too
        JobEnvironment.USR_SIG = preempt_signal.choose()

    def open(self) -> None:
        if self.cluster not in ("slurm", "local"):
            raise UsageError(f"--submitit-cluster {self.cluster}: choose slurm or local")
        if self.cluster == "slurm" and shutil.which("sbatch") is None:
            raise UsageError("--engine submitit: SLURM's sbatch is not on PATH here; run the sweep on a SLURM login "
                             "node, or give --submitit-cluster local to run the same jobs on this machine")  # fmt: skip
        if self.options.folder is None:
            raise UsageError("--engine submitit needs a folder for its job files")

    def gpus(self, job: Job) -> int:
        if self.options.slurm_gpus_per_task is not None:
            return int(self.options.slurm_gpus_per_task)
        if self.cluster == "local" or job.device.strip().lower() in ("cpu", "mps"):
            return 0
        return max(1, job.nproc)

    def executor(self, job: Job, array_parallelism: Optional[int] = None) -> Any:
        o = self.options
        folder = Path(o.folder) / "%j"
        delay = int(o.slurm_signal_delay_s)
        if self.cluster == "local":
            ex = submitit.LocalExecutor(folder=folder, max_num_timeout=3)
            ex.update_parameters(timeout_min=o.slurm_time_min or LOCAL_TIMEOUT_MIN, tasks_per_node=1, nodes=1,
                                 gpus_per_node=self.gpus(job), signal_delay_s=delay)  # fmt: skip
            return ex
        ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=3)
        params: dict[str, Any] = {"job_name": f"trainlab-{job.name}"[:64], "nodes": 1, "ntasks_per_node": 1,
                                  "signal_delay_s": delay, "additional_parameters": {"requeue": True, **o.slurm_options}}  # fmt: skip
        if self.gpus(job):
            params["gpus_per_task"] = self.gpus(job)
        for key, value in (("partition", o.slurm_partition), ("time", o.slurm_time_min),
                           ("cpus_per_task", o.slurm_cpus_per_task), ("array_parallelism", array_parallelism)):
            if value is not None:
                params[key] = value
        ex.update_parameters(**params)
        return ex

    def _grace(self) -> float:
        return max(5.0, float(self.options.slurm_signal_delay_s) - STOP_MARGIN_S)

    def _wait(self, job: Job, handle: Any) -> Result:
        start = time.perf_counter()
        with self.lock:
            self.jobs[job.name] = handle
        try:
            result = handle.result()
        except Exception as exc:  # the job failed outside the run (killed, not requeued, no result)
            lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
            return Result(None, time.perf_counter() - start, f"submitit job {handle.job_id}: "
                          + (lines[-1] if lines else type(exc).__name__), where=f"job {handle.job_id}")  # fmt: skip
        finally:
            with self.lock:
                self.jobs.pop(job.name, None)
        return result

    def launch_info(self, job: Job) -> dict:
        with self.lock:
            handle = self.jobs.get(job.name)
        if handle is None:
            return {}
        return {"cluster": self.cluster, "job_id": str(handle.job_id), "folder": str(self.options.folder),
                "host": socket.gethostname()}  # fmt: skip

    def alive(self, launch: dict) -> Optional[bool]:
        """A SLURM job still queued or running (sacct/squeue through submitit), or the local executor's job
        process still there on this host; None when the record names no job."""
        job_id = launch.get("job_id")
        if not job_id or launch.get("cluster") != self.cluster:
            return None
        if self.cluster == "local":
            if launch.get("host") != socket.gethostname() or not str(job_id).isdigit():
                return None
            import psutil

            return psutil.pid_exists(int(job_id))
        try:
            state = submitit.SlurmJob(folder=Path(launch["folder"]) / "%j", job_id=str(job_id)).state
        except Exception:  # noqa: BLE001 - sacct unavailable: let the heartbeat decide
            return None
        return state.split()[0] in ALIVE_STATES

    def _where(self, handle: Any) -> str:
        kind = "SLURM job" if self.cluster == "slurm" else "submitit local job"
        return f" as {kind} {handle.job_id}, job files {Path(self.options.folder) / str(handle.job_id)}"

    def run(self, job: Job, started: Started) -> Result:
        handle = self.executor(job).submit(TrainJob(job, self._grace()))
        with self.lock:
            self.jobs[job.name] = handle
        started(job, self._where(handle))
        return self._wait(job, handle)

    def run_all(self, jobs: list[Job], started: Started, finished: Callable[[Job, Result], None]) -> None:
        """A grid: one job array per group of runs that ask for the same resources, all submitted at once
        (SLURM paces an array by --parallel). The local executor starts an array's jobs at once, so there the
        arrays are --parallel long and run one after the other."""
        groups: dict[tuple, list[Job]] = {}
        for job in jobs:
            groups.setdefault((self.gpus(job), job.nproc), []).append(job)
        if self.cluster == "slurm":
            self._arrays(list(groups.values()), started, finished)
            return
        step = self.options.parallel
        for group in groups.values():
            for i in range(0, len(group), step or len(group)):
                if self.stopping.is_set():
                    return
                self._arrays([group[i:i + (step or len(group))]], started, finished)

    def _arrays(self, arrays: list[list[Job]], started: Started, finished: Callable[[Job, Result], None]) -> None:
        """Submit each list of jobs as one array, then wait for every job of them."""
        submitted = []
        for array in arrays:
            ex = self.executor(array[0], self.options.parallel if self.cluster == "slurm" else None)
            with ex.batch():
                handles = [ex.submit(TrainJob(job, self._grace())) for job in array]
            for job, handle in zip(array, handles):
                with self.lock:
                    self.jobs[job.name] = handle
                started(job, self._where(handle))
                submitted.append((job, handle))
        waiters = [threading.Thread(target=lambda j=job, h=handle: finished(j, self._wait(j, h)))
                   for job, handle in submitted]  # fmt: skip
        for waiter in waiters:
            waiter.start()
        for waiter in waiters:
            waiter.join()

    def interrupt(self) -> None:
        super().interrupt()
        with self.lock:
            handles = list(self.jobs.values())
        for handle in handles:
            try:
                handle.cancel(check=False)  # scancel: SIGTERM, the run checkpoints and exits 143
            except Exception:  # noqa: BLE001 - best effort: the job may have ended meanwhile
                pass
