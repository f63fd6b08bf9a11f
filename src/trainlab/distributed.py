"""torchrun-native distributed helpers: environment, DDP wrapping, reductions, launching.

Like the torchvision references: torchrun (``torch.distributed.run``) starts one process per device
and sets RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT; ``setup`` reads them. Without
them everything here degrades to a single process and the collectives are no-ops.

How a failing rank ends the job:
- under torchrun, a worker that exits non-zero makes the agent SIGTERM the others (SIGKILL after
  30 s) and exit; ``launch`` reports the first failed rank's exit code.
- a rank that hangs or dies without its peers noticing (e.g. started without torchrun) is ended by
  the collective timeout ``dist.timeout_s`` (default 300 s): the surviving ranks' next collective
  raises an error naming the timeout instead of hanging forever. NCCL's asynchronous error handling
  (TORCH_NCCL_ASYNC_ERROR_HANDLING) tears the process down when such a timeout fires on the GPU.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from trainlab.errors import ConfigError, TrainlabError, UsageError, first_line

# A rank that fails must end the job rather than leave the others blocked in a collective.
_ENV_DEFAULTS = {
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "3",  # abort communicators and exit on a collective error/timeout
}

_RESET_SIGNALS_ENV = "TRAINLAB_RESET_STOP_SIGNALS"

# Signals a stop request arrives as (SLURM's --signal=USR1@90 included); SIGUSR1 is absent on Windows.
_STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGINT", "SIGUSR1") if hasattr(signal, n))


@dataclass
class DistContext:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None


def resolve_device(train_device: str, local_rank: int = 0, local_world_size: int = 1) -> torch.device:
    """train.device -> torch.device for this process (cuda -> cuda:LOCAL_RANK under torchrun)."""
    dev = (train_device or "auto").strip().lower()
    under_torchrun = local_world_size > 1
    if dev == "auto":
        if torch.cuda.is_available():
            dev = "cuda"
        elif not under_torchrun and torch.backends.mps.is_available():
            return torch.device("mps")
        else:
            return torch.device("cpu")
    if dev == "cpu":
        return torch.device("cpu")
    if dev == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError("train.device=mps but MPS is not available; use train.device=cpu or auto")
        if under_torchrun:
            raise ConfigError("train.device=mps cannot be used with several processes; use train.nproc=1")
        return torch.device("mps")
    if dev.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"train.device={train_device} but no CUDA device is visible; use train.device=cpu or auto"
            )
        count = torch.cuda.device_count()
        if dev == "cuda":
            if local_rank >= count:
                raise ConfigError(
                    f"LOCAL_RANK={local_rank} needs a GPU but only {count} CUDA device(s) are visible; "
                    f"start at most {count} processes per node (--nproc_per_node / train.nproc)"
                )
            return torch.device("cuda", local_rank)
        try:
            index = int(dev.split(":", 1)[1])
        except (IndexError, ValueError):
            raise ConfigError(
                f"train.device={train_device!r} is not valid; choose auto, cpu, cuda, cuda:N or mps"
            ) from None
        if under_torchrun:
            raise ConfigError(
                f"train.device={train_device} pins one GPU but {local_world_size} processes run on this "
                f"node; use train.device=cuda (each rank takes cuda:LOCAL_RANK)"
            )
        if index >= count:
            raise ConfigError(f"train.device={train_device} but only {count} CUDA device(s) are visible")
        return torch.device("cuda", index)
    raise ConfigError(f"train.device={train_device!r} is not valid; choose auto, cpu, cuda, cuda:N or mps")


def _restore_default_stop_signals() -> None:
    # Workers started by run_torchrun inherit the agent's SIG_IGN for stop signals; until the
    # training loop installs its PreemptionGuard, a SIGTERM (e.g. the agent ending the job after
    # another rank failed) should end this process as usual.
    if os.environ.get(_RESET_SIGNALS_ENV) != "1" or threading.current_thread() is not threading.main_thread():
        return
    for signum in _STOP_SIGNALS:
        if signal.getsignal(signum) == signal.SIG_IGN:
            signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)


def setup(train_device: str = "auto", backend: str = "auto", timeout_s: float = 300.0) -> DistContext:
    """Read the torchrun environment and join the process group (a no-op for a single process)."""
    _restore_default_stop_signals()
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    local_world_size = _env_int("LOCAL_WORLD_SIZE", world_size)
    device = resolve_device(train_device, local_rank, local_world_size)
    if world_size <= 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return DistContext(rank=0, local_rank=0, world_size=1, device=device, backend=None)

    if backend in (None, "", "auto"):
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ConfigError(f"dist.backend=nccl needs CUDA devices but train.device resolved to {device}; "
                          f"use dist.backend=gloo (or auto) on the CPU")
    if backend not in ("nccl", "gloo"):
        raise ConfigError(f"dist.backend={backend!r} is not valid; choose auto, nccl or gloo")
    for name, value in _ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {}
        if backend == "nccl":
            kwargs["device_id"] = device  # binds the communicator to this rank's GPU eagerly
        try:
            store = _attempt_store(rank, world_size, timeout_s)
            if store is not None:
                kwargs["store"] = store
            dist.init_process_group(
                backend=backend, timeout=timedelta(seconds=timeout_s), rank=rank, world_size=world_size, **kwargs
            )
        except (RuntimeError, dist.DistError) as exc:
            attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            after = f" after restart {attempt}" if attempt not in ("", "0") else ""
            first = first_line(exc)[:300]
            raise DistributedSetupError(
                f"rank {rank} could not join the other {world_size - 1} process(es){after} within "
                f"dist.timeout_s={timeout_s:g} s ({first}); the job ends here instead of waiting"
            ) from None
    return DistContext(rank=rank, local_rank=local_rank, world_size=world_size, device=device, backend=backend)


class DistributedSetupError(TrainlabError):
    """A rank could not form the process group (a peer never came, a restarted job hung): exit 1, one line."""

    exit_code = 1


def _attempt_store(rank: int, world_size: int, timeout_s: float) -> Any:
    """The store this attempt's process group meets in, when torchrun shares its own with the workers.

    torchrun (2.4 and later) lets workers use the agent's TCPStore, which outlives a restart: the restarted
    workers then read the keys of the attempt before, and gloo connects to the dead worker's old port
    ("connectFullMesh failed ... Connection refused") or waits forever. Each attempt gets its own key prefix
    here (TORCHELASTIC_RESTART_COUNT, the same for every worker a single agent restarts), so nothing of an
    earlier attempt is read. Multi-node elastic jobs whose agents restart separately should also set
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (what `trainlab train --nnodes` does): each attempt then gets a new
    store on a new port. None: let init_process_group build its own store from the environment."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not host or not port:
        return None
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "")
    client = dist.TCPStore(host, int(port), world_size, is_master=False, timeout=timedelta(seconds=timeout_s))
    return dist.PrefixStore(f"trainlab/{run_id}/attempt-{attempt}", client)


def cleanup(ctx: DistContext | None = None) -> None:
    """Leave the process group (safe to call when none was joined)."""
    _CONTROL.clear()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


_CONTROL: dict[str, Any] = {}


def control_group(ctx: DistContext) -> Any:
    """The process group for bookkeeping (stop flags, per-rank figures, RNG states): host tensors only.

    Under nccl that is a gloo group made once beside it (every rank must call this at the same point the
    first time), so agreeing on a stop never waits for the device; under gloo it is the default group."""
    if not ctx.enabled or ctx.backend != "nccl":
        return None
    if "group" not in _CONTROL:
        _CONTROL["group"] = dist.new_group(backend="gloo")
    return _CONTROL["group"]


def wrap_model(model: nn.Module, ctx: DistContext, sync_bn: bool = False) -> nn.Module:
    """DDP-wrap ``model`` (already on ctx.device) for a multi-process run; unchanged for one process."""
    if not ctx.enabled:
        return model
    if sync_bn:
        if ctx.device.type != "cuda":
            raise ConfigError(
                "model.sync_bn=true needs CUDA devices (SyncBatchNorm has no CPU kernel); "
                "set model.sync_bn=false on the CPU"
            )
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if ctx.device.type == "cuda":
        return nn.parallel.DistributedDataParallel(model, device_ids=[ctx.device.index],
                                                   output_device=ctx.device.index)
    return nn.parallel.DistributedDataParallel(model)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP (or DataParallel) and/or torch.compile wrappers (what state_dict should come
    from, and what an EMA copies)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def find_ddp(model: nn.Module) -> nn.parallel.DistributedDataParallel | None:
    """The DDP wrapper of ``model``, also when torch.compile wrapped it (``_orig_mod``)."""
    inner = getattr(model, "_orig_mod", model)
    return inner if isinstance(inner, nn.parallel.DistributedDataParallel) else None


def maybe_no_sync(model: nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
    """``no_sync()`` for DDP micro-steps that accumulate (skip the gradient all-reduce), through compile too."""
    ddp = find_ddp(model) if enabled else None
    return ddp.no_sync() if ddp is not None else contextlib.nullcontext()


def all_reduce_sum(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``t`` over ranks in place and return it (no-op for one process)."""
    if ctx.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_floats(values: list[float], ctx: DistContext) -> list[list[float]]:
    """Every rank's list of floats, indexed by rank (e.g. per-rank step times for straggler checks)."""
    values = [float(v) for v in values]
    if not ctx.enabled:
        return [values]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, values, group=control_group(ctx))
    return [list(v) for v in gathered]


def broadcast_object(obj: Any, ctx: DistContext, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (picklable objects only)."""
    if not ctx.enabled:
        return obj
    holder = [obj if ctx.rank == src else None]
    dist.broadcast_object_list(holder, src=src, group=control_group(ctx))
    return holder[0]


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        if ctx.backend == "nccl":
            dist.barrier(device_ids=[ctx.device.index])
        else:
            dist.barrier()


def host_barrier(ctx: DistContext) -> None:
    """A barrier on the host-side group (gloo beside nccl): waiting for a file never waits on the device."""
    if ctx.enabled:
        dist.barrier(group=control_group(ctx))


# ---------------------------------------------------------------------------------------------
# launching through torchrun


def _strip_nproc(argv: list[str]) -> list[str]:
    return [a for a in argv if not re.match(r"^(\+{0,2})train\.nproc=", a)]


def parse_nnodes(value: int | str) -> tuple[int, int]:
    """--nnodes N or MIN:MAX (an elastic job: it runs while at least MIN machines take part)."""
    text = str(value).strip()
    try:
        low, _, high = text.partition(":")
        low_n, high_n = int(low), int(high or low)
    except ValueError:
        raise UsageError(f"--nnodes={value}: give a number of machines, or MIN:MAX for an elastic job") from None
    if low_n < 1 or high_n < low_n:
        raise UsageError(f"--nnodes={value}: MIN must be at least 1 and MAX at least MIN")
    return low_n, high_n


def torchrun_command(target: list[str], nproc: int, nnodes: int | str = 1, rdzv_endpoint: str | None = None,
                     max_restarts: int = 0) -> list[str]:  # fmt: skip
    """``python -m trainlab.distributed ... <target>``: torchrun's own agent and arguments (torch.distributed.run)
    with the job's end reported in trainlab's words (``_agent``); target is ``['-m', 'pkg', ...]`` or a script."""
    if nproc < 1:
        raise UsageError(f"train.nproc={nproc} must be at least 1")
    cmd = [sys.executable, "-m", "trainlab.distributed", f"--nproc-per-node={nproc}"]
    low, high = parse_nnodes(nnodes)
    if high > 1 or rdzv_endpoint:
        if not rdzv_endpoint:
            raise UsageError(f"--nnodes={nnodes} needs a rendezvous endpoint (host:port of the first node)")
        cmd += [f"--nnodes={low}:{high}" if low != high else f"--nnodes={low}", "--rdzv-backend=c10d",
                f"--rdzv-endpoint={rdzv_endpoint}"]  # fmt: skip
    else:
        cmd += ["--standalone"]
    if max_restarts:
        cmd += [f"--max-restarts={int(max_restarts)}"]
    return cmd + list(target)


def _worker_pids(agent_pid: int) -> list[int]:
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a dependency
        return []
    try:
        return [child.pid for child in psutil.Process(agent_pid).children(recursive=False)]
    except psutil.Error:
        return []


ATTEMPTS_FOLDER = os.path.join(".trainlab", "attempts")  # in the run's local folder (state.attempts reads it)


def record_exit(run_dir: Any, pid: int, exitcode: int, local_rank: int) -> None:
    """The launcher's note of a worker torchrun's agent saw fail, for the next attempt to read."""
    folder = os.path.join(str(run_dir), ATTEMPTS_FOLDER)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"exit-{pid}.json")
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as file:
        json.dump({"pid": pid, "exitcode": exitcode, "local_rank": local_rank}, file)
    os.replace(tmp, path)


_RECORD_DIR_ENV = "TRAINLAB_ATTEMPTS_DIR"  # launcher -> agent: the run's local folder for the exit notes


def run_torchrun(target: list[str], nproc: int, nnodes: int | str = 1, rdzv_endpoint: str | None = None,
                 env: dict[str, str] | None = None, max_restarts: int = 0, record_dir: Any = None) -> int:
    """Run ``target`` under torch's launcher; relay output and stop signals; return the job's exit code.

    Stop signals (SIGTERM, SIGINT, SIGUSR1) received here are sent straight to the worker processes,
    which save and exit 143; the torchrun agent is started ignoring them (a SIGUSR1 would otherwise
    kill it, and its own SIGTERM handling turns a clean stop into a traceback). The agent (``_agent``)
    exits with the exit code of the rank that failed first, from torch's own record of the failures
    (``ChildFailedError.failures``), not from anything printed: 143 for a preempted job, 2 for bad
    input, 128+N for a signal.
    """
    cmd = torchrun_command(target, nproc, nnodes, rdzv_endpoint, max_restarts)
    env = dict(os.environ if env is None else env)
    # The agent ignores stop signals (SIG_IGN, inherited through exec); it still shuts the workers
    # down on SIGHUP/SIGQUIT. Read by torchrun's process context (same as --signals-to-handle).
    env["TORCHELASTIC_SIGNALS_TO_HANDLE"] = "SIGHUP,SIGQUIT"
    env[_RESET_SIGNALS_ENV] = "1"  # workers put the default dispositions back in setup()
    if max_restarts and parse_nnodes(nnodes)[1] > 1:  # agents restart separately: a new store per attempt
        env.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    if max_restarts and record_dir is not None:
        env[_RECORD_DIR_ENV] = str(record_dir)  # the agent (_agent) notes failed workers there

    def agent_preexec() -> None:  # pragma: no cover - runs in the child
        for signum in _STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)

    # The workers' output goes straight to this process's stdout and stderr: nothing here reads it. The job's
    # exit code is the agent's, which takes it from torch's record of each failed worker (_agent, job_outcome).
    proc = subprocess.Popen(
        cmd, env=env, preexec_fn=agent_preexec if os.name == "posix" else None,
        start_new_session=True,  # a terminal Ctrl-C reaches only this process, which relays it once
    )

    def forward(signum: int, frame: Any) -> None:
        workers = _worker_pids(proc.pid)
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        if not workers:  # still in rendezvous: nothing to save, shut the agent down
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGHUP)

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in _STOP_SIGNALS:
            previous[signum] = signal.signal(signum, forward)
    try:
        returncode = proc.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
    return 128 - returncode if returncode < 0 else returncode


def note_lost_peer(message: str) -> None:
    """Tell torch's agent that this worker ends because another rank of the job is gone (its collective failed),
    so that the job's exit code is the cause's, not this consequence's (job_outcome). The channel is torch's
    own: the error file the agent names in TORCHELASTIC_ERROR_FILE and reads back into the worker's
    ProcessFailure (``error_file_data``). Nothing happens outside an elastic agent."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    record = {"message": message, "timestamp": int(time.time()), "trainlab": {"lost_peer": True}}
    with contextlib.suppress(OSError):
        with open(path, "w") as file:
            json.dump(record, file)


def _is_consequence(failure: Any) -> bool:
    """A failure another rank's caused: SIGTERMed by the agent after it, or a worker whose collective found its
    peer gone (note_lost_peer). A saved stop (143) counts too: rank 0 has said it."""
    data = getattr(failure, "error_file_data", None)
    lost = isinstance(data, dict) and isinstance(data.get("trainlab"), dict) and data["trainlab"].get("lost_peer")
    return bool(lost) or failure.exitcode in (143, -signal.SIGTERM)


def _failure_sort_key(item: tuple[int, Any]) -> tuple[int, int, int]:
    rank, failure = item
    return (failure.timestamp, 0 if failure.exitcode < 0 else 1, rank)  # a kill before what it caused


def job_outcome(failures: dict[int, Any]) -> tuple[int, str | None]:
    """(exit code, trainlab line or None) for a torchrun job whose workers failed, from torch's own record of
    each failed rank (``ChildFailedError.failures``: exit code, or a negative signal number; pid; time).

    The agent SIGTERMs the other workers once one fails, so a SIGTERM death (-15) is taken for the
    consequence, and so is a worker that noted it lost its peer (note_lost_peer: it ends with exit 1 as soon
    as the cause dies, often seen by the agent in the same look); a saved stop (143) is a clean stop that rank
    0 already announced. The cause is the earliest other failure, a killed process before one that raised at
    the same second."""
    causes = sorted(((r, f) for r, f in failures.items() if not _is_consequence(f)), key=_failure_sort_key)
    if not causes:
        if any(f.exitcode == 143 for f in failures.values()):
            return 143, None
        causes = sorted(failures.items(), key=_failure_sort_key)  # SIGTERMed before any rank could save
    rank, failure = causes[0]
    if failure.exitcode >= 0:
        return failure.exitcode, None  # the rank printed its own error (a trainlab line, or its traceback)
    name = failure.signal_name()
    hint = " (the kernel's out-of-memory killer sends SIGKILL: see `dmesg`)" if -failure.exitcode == signal.SIGKILL else ""
    return 128 - failure.exitcode, (
        f"trainlab: rank {rank} (pid {failure.pid}) was killed by {name}{hint}; the job ended. Re-issue the same "
        "command to continue from the last checkpoint"
    )


def _agent(argv: list[str]) -> int:
    """torchrun's agent (``python -m torch.distributed.run ARGS`` does the same) that ends the job in trainlab's
    words: instead of torch's ChildFailedError traceback and FAILED table, the job exits with the exit code
    torch recorded for the rank that caused it (``ChildFailedError.failures``, job_outcome) and, when that rank
    was killed by a signal, prints one line naming it. This exit code is the launcher's (run_torchrun)."""
    import logging

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # The agent's own log lines ("Sending process N closing signal SIGTERM", "failed (exitcode: 143) ...")
    # say again, less clearly, what the ranks and job_outcome say (TRAINLAB_DEBUG=1 keeps them).
    if not os.environ.get("TRAINLAB_DEBUG"):
        for name in list(logging.root.manager.loggerDict):
            if name.startswith("torch.distributed"):
                logging.getLogger(name).setLevel(logging.CRITICAL)

    _note_restarted_failures()
    try:
        run(parse_args(argv))
    except ChildFailedError as err:
        code, line = job_outcome(err.failures)
        if line:
            print(line, file=sys.stderr, flush=True)
        return code
    return 0


def _note_restarted_failures() -> None:
    """With restarts, the agent's record of each failed worker (exit code or signal, pid, local rank) is kept in
    the run's folder for the next attempt, which cannot learn it otherwise (trainlab.state.attempts).

    The record is the RunResult torch's agent acts on: ``_monitor_workers`` is the documented hook of an elastic
    agent (SimpleElasticAgent) that reports the worker group's state and its ``ProcessFailure``s; the agent
    torchrun builds (``launcher.api.LocalElasticAgent``) is given a subclass that notes the failures it returns,
    before the agent restarts the workers or ends the job. Nothing is read from the agent's log or output."""
    record_dir = os.environ.get(_RECORD_DIR_ENV)
    if not record_dir:
        return
    from torch.distributed.launcher import api as launcher_api

    base = getattr(launcher_api, "LocalElasticAgent", None)
    if base is None:  # pragma: no cover - a torch without it: restarts still work, without the exit notes
        return

    class ExitNotingAgent(base):  # type: ignore[misc, valid-type]
        def _monitor_workers(self, worker_group: Any) -> Any:
            result = super()._monitor_workers(worker_group)
            if result.is_failed():
                for failure in result.failures.values():
                    with contextlib.suppress(OSError, TypeError, ValueError):
                        record_exit(record_dir, int(failure.pid), int(failure.exitcode), int(failure.local_rank))
            return result

    launcher_api.LocalElasticAgent = ExitNotingAgent


def launch(argv: list[str], nproc: int, nnodes: int | str = 1, rdzv_endpoint: str | None = None,
           max_restarts: int = 0, record_dir: Any = None) -> int:
    """``trainlab train ... train.nproc=N``: re-run the same command under torchrun with N processes
    (``train.max_restarts``: torchrun restarts the workers that many times when one dies; the exit codes
    of the workers it restarts are noted in ``record_dir``, the run's local folder, when known)."""
    return run_torchrun(["-m", "trainlab", "train", *_strip_nproc(argv)], nproc, nnodes, rdzv_endpoint,
                        max_restarts=max_restarts, record_dir=record_dir)


__all__ = [
    "DistContext",
    "all_gather_floats",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "cleanup",
    "launch",
    "maybe_no_sync",
    "resolve_device",
    "run_torchrun",
    "setup",
    "unwrap",
    "wrap_model",
]


if __name__ == "__main__":  # the torchrun agent of `trainlab train ... train.nproc=N` (torchrun_command)
    sys.exit(_agent(sys.argv[1:]))
