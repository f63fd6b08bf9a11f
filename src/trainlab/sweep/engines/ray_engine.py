"""The Ray engine: each run one Ray task that runs `trainlab train` on whichever node Ray picks.

The task asks for what the run needs: `num_gpus` = train.nproc when it trains on GPUs (train.device cuda, or
auto on a cluster that has GPUs), else `num_cpus` = train.nproc x train.threads. The cluster is the one at
`--ray-address` (default: RAY_ADDRESS), else a Ray instance started on this machine for the sweep. The
run's files go to the sweep directory, so it must be on a filesystem every node sees (or run.dir on an
object store). trainlab must be importable on the workers (the same install as here).

A task whose worker or node dies is retried by Ray (`--ray-max-retries`, default 3); the run it starts again
resumes from its checkpoint. The run dies with its worker (PR_SET_PDEATHSIG), so a retry never shares the run
dir with a leftover process.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from typing import Any, Optional

import ray

from trainlab.errors import UsageError
from trainlab.sweep.engines import Engine, EngineOptions, Started
from trainlab.sweep.jobs import Job, Result, TrainProcess

CONNECT_TIMEOUT_S = 5.0
RAY_CLIENT_PORT = 10001


def _run_in_worker(job: Job) -> Result:
    """The task's body, on a Ray worker: the run as a child process of the worker."""
    process = TrainProcess(job, die_with_parent=True)
    process.start()
    try:
        process.wait()
    except KeyboardInterrupt:  # ray.cancel(): the sweep was interrupted; the run checkpoints and stops
        process.stop(signal.SIGTERM)
    result = process.result()
    result.where = f"{socket.gethostname()} pid {process.pid}"
    return result


train_task = ray.remote(_run_in_worker)


def _host_port(address: str) -> Optional[tuple[str, int]]:
    """(host, port) of a GCS `host:port` or a Ray Client `ray://host[:port]`; None for `auto`/`local`."""
    if address in ("auto", "local"):
        return None
    client = address.startswith("ray://")
    rest = address[len("ray://"):] if client else address
    host, sep, port = rest.rpartition(":")
    if not sep:
        host, port = rest, str(RAY_CLIENT_PORT if client else 6379)
    if not host or not port.isdigit():
        raise UsageError(f"--ray-address {address!r} is not HOST:PORT (or ray://HOST:PORT, auto)")
    return host, int(port)


def check_reachable(address: str) -> None:
    """A plain TCP connect first: ray.init on an address nobody answers retries for minutes."""
    target = _host_port(address)
    if target is None:
        return
    try:
        socket.create_connection(target, timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UsageError(
            f"--ray-address {address}: no Ray cluster answers there ({reason}); start one with "
            "`ray start --head`, or fix the address (RAY_ADDRESS, --ray-address)"
        ) from None


class RayEngine(Engine):
    name = "ray"
    default_parallel = None  # a grid hands every run to Ray at once; the cluster's resources pace them

    def __init__(self, options: EngineOptions) -> None:
        super().__init__(options)
        self.address = options.ray_address or os.environ.get("RAY_ADDRESS") or None
        self.gpus_available = False
        self.in_flight: set[Any] = set()
        self.lock = threading.Lock()

    def where(self) -> str:
        return f"the Ray cluster at {self.address}" if self.address else "a local Ray instance"

    def open(self) -> None:
        if self.address:
            check_reachable(self.address)
        kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
        if not self.address:
            kwargs["include_dashboard"] = False
        try:
            ray.init(address=self.address, **kwargs)
        except Exception as exc:  # ConnectionError, a version mismatch, a bad address: the first line
            where = f"--ray-address {self.address}" if self.address else "starting a local Ray instance"
            raise UsageError(f"{where}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        self.gpus_available = ray.cluster_resources().get("GPU", 0) > 0

    def check(self, job: Job) -> None:
        if job.device.strip().lower().startswith("cuda") and not self.gpus_available:
            raise UsageError(f"run {job.name} asks for train.device={job.device} and {self.where()} has no GPUs; "
                             "use train.device=auto or cpu, or a cluster with GPUs")  # fmt: skip

    def resources(self, job: Job) -> dict[str, float]:
        if job.wants_gpus(self.gpus_available):
            return {"num_gpus": float(max(1, job.nproc)), "num_cpus": float(max(1, job.nproc))}
        return {"num_cpus": float(job.cpus), "num_gpus": 0.0}

    def run(self, job: Job, started: Started) -> Result:
        need = self.resources(job)
        ref = train_task.options(
            **need, max_retries=self.options.ray_max_retries, retry_exceptions=False, name=f"trainlab {job.name}",
        ).remote(job)  # fmt: skip
        with self.lock:
            self.in_flight.add(ref)
        gpus = f"{need['num_gpus']:g} GPU, " if need["num_gpus"] else ""
        started(job, f" as a Ray task ({gpus}{need['num_cpus']:g} CPU) on {self.where()}")
        try:
            return ray.get(ref)
        except ray.exceptions.TaskCancelledError:
            return Result(None, message="cancelled (the sweep was interrupted)")
        except ray.exceptions.RayError as exc:  # the worker or node died more often than max_retries
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return Result(None, message=f"the Ray task failed after {self.options.ray_max_retries} retries: {first}")
        finally:
            with self.lock:
                self.in_flight.discard(ref)

    def interrupt(self) -> None:
        super().interrupt()
        with self.lock:
            refs = list(self.in_flight)
        for ref in refs:
            ray.cancel(ref)  # KeyboardInterrupt in the task: the run is asked to checkpoint and stop

    def close(self) -> None:
        ray.shutdown()
