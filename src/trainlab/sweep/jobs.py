"""One run of a sweep as a job: the `trainlab train` command, the process that runs it, its logs and outcome.

Every engine runs a job the same way, wherever it lands: `python -m trainlab train ARGS` with the
interpreter of the process that runs it (a Ray worker's, a SLURM job's), stdout and stderr to
SWEEP_DIR/logs/NAME.out/.err, the exit code back. A run stopped by a signal exits 143 after its checkpoint;
the same job started again continues it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from trainlab.paths import open_no_follow

ERROR_TAIL_LINES = 40
ATTEMPT_MARK = "=== trainlab train "  # the line each attempt of a job starts its logs with
STOPPED = 143  # trainlab's exit code after a stop signal (or a callback's request_stop) and its checkpoint


@dataclass
class Job:
    name: str  # the run's folder name in the sweep dir
    train_args: list[str]  # what follows `trainlab train`
    run_dir: Path
    logs: Path  # SWEEP_DIR/logs
    nproc: int = 1  # train.nproc: processes (and GPUs, on GPUs) the run needs
    device: str = "auto"  # train.device as configured
    threads: Optional[int] = None  # train.threads
    env: dict[str, str] = field(default_factory=dict)  # set in the run's environment on top of the engine's
    # the sweep's working directory: the run starts there when that folder exists where it runs (a shared
    # filesystem), so relative paths in the user's config mean the same on every node
    cwd: str = field(default_factory=os.getcwd)

    @property
    def out_path(self) -> Path:
        return self.logs / f"{self.name}.out"

    @property
    def err_path(self) -> Path:
        return self.logs / f"{self.name}.err"

    @property
    def cpus(self) -> int:
        """CPU cores the run keeps busy: its processes times its torch threads."""
        return max(1, self.nproc) * max(1, int(self.threads or 1))

    def wants_gpus(self, gpus_available: bool) -> bool:
        device = self.device.strip().lower()
        if device == "cpu" or device == "mps":
            return False
        return device.startswith("cuda") or gpus_available


@dataclass
class Result:
    returncode: Optional[int]  # None when the job never reported one (its worker or node died)
    seconds: float = 0.0
    message: str = ""  # why there is no return code, or where it ran
    where: str = ""  # the job's id in its engine (pid, Ray task, SLURM job)


class TrainProcess:
    """`python -m trainlab train ARGS` as a child process, waited for without holding a lock in the calling
    thread, so a signal handler of that thread (submitit's preemption handler, a Ray cancel) can forward a stop
    signal and wait for the checkpoint itself."""

    def __init__(self, job: Job, env: Optional[dict[str, str]] = None, die_with_parent: bool = False,
                 ignore: tuple[int, ...] = ()) -> None:  # fmt: skip
        self.job = job
        self.env = dict(os.environ if env is None else env, **job.env, PYTHONUNBUFFERED="1")
        self.die_with_parent = die_with_parent
        self.ignore = ignore  # signals the run must not die of (a scheduler's own, handled by its parent)
        self.proc: Optional[subprocess.Popen] = None
        self.returncode: Optional[int] = None
        self.started = 0.0

    def command(self) -> list[str]:
        return [sys.executable, "-m", "trainlab", "train", *self.job.train_args]

    def _child_setup(self) -> None:  # runs in the child between fork and exec
        for signum in self.ignore:
            signal.signal(signum, signal.SIG_IGN)
        if self.die_with_parent and sys.platform.startswith("linux"):
            import ctypes

            # the worker that runs us died (a Ray node lost, a worker killed): the run dies with it instead of
            # writing the run dir beside the retry, which resumes from the last checkpoint
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    def start(self) -> None:
        self.job.logs.mkdir(parents=True, exist_ok=True)
        self.started = time.perf_counter()
        # appended: a job requeued or retried keeps the earlier attempts' lines above its own
        with open_no_follow(self.job.out_path, "a") as out, open_no_follow(self.job.err_path, "a") as err:
            for log in (out, err):
                log.write(f"{ATTEMPT_MARK}{self.job.name}: started {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n")
                log.flush()
            self.proc = subprocess.Popen(
                self.command(), stdout=out, stderr=err, env=self.env, stdin=subprocess.DEVNULL,
                cwd=self.job.cwd if os.path.isdir(self.job.cwd) else None,
                preexec_fn=self._child_setup if (self.ignore or self.die_with_parent) else None,
            )  # fmt: skip
        threading.Thread(target=self._reap, name=f"wait-{self.job.name}", daemon=True).start()

    def _reap(self) -> None:
        assert self.proc is not None
        self.returncode = self.proc.wait()

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc is not None else None

    def wait(self, timeout: Optional[float] = None, poll_s: float = 0.2) -> Optional[int]:
        """The exit code once the run has ended (None if `timeout` seconds pass first)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None and (deadline is None or time.monotonic() < deadline):
            time.sleep(poll_s)
        return self.returncode

    def stop(self, signum: int = signal.SIGTERM, grace_s: float = 120.0) -> Optional[int]:
        """Ask the run to checkpoint and stop (trainlab exits 143), and wait up to `grace_s` for it."""
        if self.proc is not None and self.returncode is None:
            try:
                self.proc.send_signal(signum)
            except ProcessLookupError:
                pass
        return self.wait(grace_s)

    def result(self) -> Result:
        return Result(self.returncode, time.perf_counter() - self.started, where=f"pid {self.pid}")


def run_job(job: Job, env: Optional[dict[str, str]] = None) -> Result:
    """Run a job to its end in this process's thread (what the local engine and the remote workers do)."""
    process = TrainProcess(job, env)
    process.start()
    try:
        process.wait()
    except KeyboardInterrupt:
        process.stop(signal.SIGINT)  # the terminal's Ctrl-C reached the run too; wait for its checkpoint
        raise
    return process.result()


def tail(path: Path, lines: int = ERROR_TAIL_LINES) -> str:
    """The last lines of a log's last attempt (a requeued job appends to the same file)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    attempt = text.rstrip().splitlines()
    marks = [i for i, line in enumerate(attempt) if line.startswith(ATTEMPT_MARK)]
    if marks:
        attempt = attempt[marks[-1] + 1:]
    return "\n".join(attempt[-lines:])


def last_line(job: Job) -> str:
    """The job's last words: its stderr's last line (trainlab's one-line error), else its stdout's."""
    text = tail(job.err_path) or tail(job.out_path)
    return next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip()), "no output")


def describe_exit(returncode: Optional[int]) -> str:
    if returncode is None:
        return "no exit code"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit {returncode}"
