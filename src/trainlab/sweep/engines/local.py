"""The local engine: each run a `trainlab train` child process on this machine, `--parallel` at a time.

GPUs: each run is handed its own GPU(s) through the child's CUDA_VISIBLE_DEVICES -- the least busy of
the visible ones (the user's CUDA_VISIBLE_DEVICES list, else every GPU torch sees), train.nproc of them
for a multi-process run, returned when the run ends -- so `--parallel N` on N GPUs puts one run on each.
More runs than GPUs share the least busy. A run whose train.device names a device (cuda:N, cpu, mps)
keeps the user's choice and environment. The start line says which.
"""

from __future__ import annotations

import os
import threading
from typing import Optional

from trainlab.sweep.engines import Engine, EngineOptions, Started
from trainlab.sweep.jobs import Job, Result, run_job


def visible_gpus(environ: Optional[dict[str, str]] = None) -> list[str]:
    """The GPUs a sweep may hand out, as CUDA_VISIBLE_DEVICES entries: the user's own list when set (indices,
    UUIDs or MIG names, kept as written), else one index per GPU torch counts."""
    environ = os.environ if environ is None else environ
    if "CUDA_VISIBLE_DEVICES" in environ:
        entries = []
        for entry in environ["CUDA_VISIBLE_DEVICES"].split(","):
            entry = entry.strip()
            if not entry or entry.startswith("-"):  # CUDA stops at the first invalid entry
                break
            entries.append(entry)
        return entries
    try:
        import torch
    except ImportError:
        return []
    return [str(i) for i in range(torch.cuda.device_count())]


class GpuPool:
    """Hands each run the least busy GPUs (ties: the first listed) and takes them back when it ends."""

    def __init__(self, gpus: list[str]) -> None:
        self.busy = {gpu: 0 for gpu in gpus}

    def take(self, count: int) -> list[str]:
        chosen = sorted(self.busy, key=lambda gpu: self.busy[gpu])[: max(count, 0)]  # sorted() is stable
        for gpu in chosen:
            self.busy[gpu] += 1
        return chosen

    def give_back(self, gpus: list[str]) -> None:
        for gpu in gpus:
            self.busy[gpu] -= 1


def gpus_wanted(job: Job) -> tuple[int, str]:
    """How many GPUs the run needs from the pool (train.nproc), or 0 and why when the user's train.device
    names a device (theirs to keep)."""
    device = job.device.strip().lower()
    if device not in ("auto", "cuda"):
        return 0, f"train.device={job.device} (as set)"
    return max(1, int(job.nproc)), ""


def child_env(parallel: int) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if parallel > 1 and "OMP_NUM_THREADS" not in env:
        # N runs share the CPU: without this each torch process would start one thread per core.
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // parallel))
    return env


class LocalEngine(Engine):
    name = "local"
    default_parallel = 1

    def __init__(self, options: EngineOptions) -> None:
        super().__init__(options)
        self.lock = threading.Lock()
        self.env = child_env(self.options.parallel or 1)
        self.pool = GpuPool(visible_gpus(self.env) if options.gpus is None else options.gpus)

    def run(self, job: Job, started: Started) -> Result:
        count, kept = gpus_wanted(job) if self.pool.busy else (0, "")
        with self.lock:  # one lock for the pool and the start line: the lines show who held which GPU
            taken = self.pool.take(count)
            where = kept and f" on {kept}"
            if taken:
                shared = max(self.pool.busy[g] for g in taken) - 1
                where = f" on GPU{'s' if len(taken) > 1 else ''} {','.join(taken)}" + (
                    f" (shared with {shared} other run{'s' if shared > 1 else ''})" if shared else "")
            started(job, where)
        env = dict(self.env, CUDA_VISIBLE_DEVICES=",".join(taken)) if taken else self.env
        try:
            return run_job(job, env)
        finally:
            with self.lock:
                self.pool.give_back(taken)
