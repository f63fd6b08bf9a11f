"""distributed.py building blocks: single-process fallbacks, a real 2-process gloo group, and
torch's own launcher (torchrun) relaying a stop signal and a failing rank's exit code."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from trainlab import distributed as D
from trainlab.errors import ConfigError, UsageError

SRC = str(Path(__file__).resolve().parents[1] / "src")
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def no_torchrun_env(monkeypatch):
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_single_process_context_and_noop_collectives(no_torchrun_env):
    ctx = D.setup(train_device="cpu")
    assert (ctx.rank, ctx.world_size, ctx.device, ctx.backend) == (0, 1, torch.device("cpu"), None)
    assert ctx.is_main and not ctx.enabled
    t = torch.tensor([1.0, 2.0])
    assert D.all_reduce_sum(t, ctx) is t and t.tolist() == [1.0, 2.0]
    assert D.all_gather_floats([0.5, 1], ctx) == [[0.5, 1.0]]
    assert D.broadcast_object({"a": 1}, ctx) == {"a": 1}
    D.barrier(ctx)
    model = nn.Linear(2, 2)
    assert D.wrap_model(model, ctx, sync_bn=True) is model
    assert D.unwrap(model) is model
    with D.maybe_no_sync(model, enabled=True):
        pass
    D.cleanup(ctx)


def test_auto_device_is_cpu_without_accelerators(no_torchrun_env):
    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("this machine has an accelerator")
    assert D.setup(train_device="auto").device == torch.device("cpu")
    with pytest.raises(ConfigError, match="train.device=cuda but no CUDA device is visible; use train.device=cpu or auto"):
        D.setup(train_device="cuda")


def test_launch_command_drops_nproc_and_uses_torch_launcher():
    argv = ["cfg.yaml", "train.nproc=2", "optim.lr=0.1", "++train.nproc=4"]
    assert D._strip_nproc(argv) == ["cfg.yaml", "optim.lr=0.1"]
    single = D.torchrun_command(["-m", "trainlab", "train", "cfg.yaml"], nproc=2)
    assert single[1:4] == ["-m", "trainlab.distributed", "--nproc-per-node=2"] and "--standalone" in single
    assert single[-4:] == ["-m", "trainlab", "train", "cfg.yaml"]
    multi = D.torchrun_command(["x.py"], nproc=8, nnodes=2, rdzv_endpoint="node0:29400")
    assert "--nnodes=2" in multi and "--rdzv-endpoint=node0:29400" in multi and "--standalone" not in multi
    assert "--max-restarts=3" in D.torchrun_command(["x.py"], nproc=2, max_restarts=3)
    assert not any(a.startswith("--max-restarts") for a in single)  # off by default: a dead rank ends the job
    elastic = D.torchrun_command(["x.py"], nproc=8, nnodes="2:4", rdzv_endpoint="node0:29400", max_restarts=2)
    assert "--nnodes=2:4" in elastic and "--max-restarts=2" in elastic
    with pytest.raises(UsageError, match="--nnodes=3:2"):
        D.torchrun_command(["x.py"], nproc=2, nnodes="3:2", rdzv_endpoint="h:1")


def _gloo_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    ctx = D.setup(train_device="cpu", timeout_s=30)
    try:
        summed = D.all_reduce_sum(torch.tensor([float(rank + 1), 10.0]), ctx)
        gathered = D.all_gather_floats([float(rank), rank * 0.5], ctx)
        shared = D.broadcast_object({"from": ctx.rank, "seed": 1234} if ctx.is_main else None, ctx)

        torch.manual_seed(0)  # same initial weights on every rank
        model = D.wrap_model(nn.Linear(3, 1, bias=False), ctx)
        x = torch.full((2, 3), float(rank + 1))
        with D.maybe_no_sync(model, enabled=True):  # accumulation micro-step: no all-reduce
            model(x).sum().backward()
        local_grad = D.unwrap(model).weight.grad.clone()
        D.unwrap(model).weight.grad = None
        model(x).sum().backward()  # synchronised step: DDP averages gradients across ranks
        synced_grad = D.unwrap(model).weight.grad.clone()
        D.barrier(ctx)
        torch.save({"ctx": (ctx.rank, ctx.world_size, ctx.backend, ctx.is_main), "summed": summed,
                    "gathered": gathered, "shared": shared, "local_grad": local_grad,
                    "synced_grad": synced_grad}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        D.cleanup(ctx)


def test_two_process_gloo_group(tmp_path):
    # fork (where available) skips re-importing torch in each child: seconds on a 2-core machine.
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    mp.start_processes(_gloo_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True,
                       start_method=method)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for rank, res in enumerate(results):
        assert res["ctx"] == (rank, 2, "gloo", rank == 0)
        assert res["summed"].tolist() == [3.0, 20.0]
        assert res["gathered"] == [[0.0, 0.0], [1.0, 0.5]]
        assert res["shared"] == {"from": 0, "seed": 1234}
        # d(sum(Wx))/dW = sum over the batch of x = 2 * (rank + 1) per weight
        assert res["local_grad"].tolist() == [[2.0 * (rank + 1)] * 3]
        assert res["synced_grad"].tolist() == [[3.0] * 3]  # mean of 2 and 4


WORKER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import torch
    from trainlab import distributed as D
    from trainlab.state.stops import PreemptionGuard

    mode = sys.argv[1]
    ctx = D.setup(train_device="cpu", timeout_s=60)
    D.all_reduce_sum(torch.ones(1), ctx)
    if mode == "exit" and ctx.rank == 1:
        import os
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        open(f"{sys.argv[2]}/failed-pid-attempt{attempt}", "w").write(str(os.getpid()))
        # what an older torch's failure table looked like, and a line a program may print: neither is the truth
        print("rank 1 fails on purpose\\nRoot Cause (first observed failure):\\n  exitcode  : 77",
              file=sys.stderr, flush=True)
        os._exit(5)  # no gloo teardown: the exit code is exactly 5
    if mode == "exit":  # rank 0 waits outside any collective until the agent SIGTERMs it
        time.sleep(90)
    if mode == "kill" and ctx.rank == 1:  # as the kernel's OOM killer does it
        import os, signal
        os.kill(os.getpid(), signal.SIGKILL)
    with PreemptionGuard() as guard:
        open(f"{sys.argv[2]}/ready{ctx.rank}", "w").close()
        give_up = time.monotonic() + 90  # never hang the test suite if no signal arrives
        while time.monotonic() < give_up:  # the "training loop": a step boundary every 50 ms
            time.sleep(0.05)
            stop = D.all_reduce_sum(torch.tensor([float(guard.requested)]), ctx)
            if stop.item() > 0:
                break
        with guard.saving():
            D.barrier(ctx)
        print(f"rank {ctx.rank} stopped by {guard.signal_name}", file=sys.stderr, flush=True)
    D.cleanup(ctx)
    sys.exit(143 if guard.requested else 3)
    """
)


def _run_launcher(tmp_path: Path, mode: str, monkeypatch, pythonpath: tuple[str, ...] = (), **options) -> int:
    """run_torchrun in this (main) thread, as `trainlab train ... train.nproc=2` would call it."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT)
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([*pythonpath, SRC]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return D.run_torchrun([str(script), mode, str(tmp_path)], nproc=2, **options)


def test_torchrun_stop_signal_reaches_workers_and_exit_code_is_143(tmp_path, monkeypatch, capfd):
    def send_sigterm_when_ready() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if all((tmp_path / f"ready{r}").exists() for r in range(2)):
                os.kill(os.getpid(), signal.SIGTERM)  # the launcher's handler relays it to the workers
                return
            time.sleep(0.05)

    threading.Thread(target=send_sigterm_when_ready, daemon=True).start()
    code = _run_launcher(tmp_path, "stop", monkeypatch)
    output = capfd.readouterr().err
    assert code == 143, output
    assert "rank 0 stopped by SIGTERM" in output and "rank 1 stopped by SIGTERM" in output
    # a clean stop ends there: torchrun's ChildFailedError traceback and FAILED table used to follow (issue 24)
    assert "Traceback" not in output and "ChildFailedError" not in output and "FAILED" not in output, output


def test_torchrun_killed_rank_is_named_with_its_signal(tmp_path, monkeypatch, capfd):
    """A worker SIGKILLed (an OOM kill): the job's exit code is 137 and one trainlab line names the rank and
    the signal, instead of torchrun's ChildFailedError traceback alone."""
    code = _run_launcher(tmp_path, "kill", monkeypatch)
    output = capfd.readouterr().err
    assert code == 128 + signal.SIGKILL, output
    lines = [ln for ln in output.splitlines() if ln.startswith("trainlab: rank")]
    assert len(lines) == 1 and "trainlab: rank 1 (pid " in lines[0] and "was killed by SIGKILL" in lines[0], output
    assert "ChildFailedError" not in output and "FAILED" not in output, output


# Loaded by every interpreter of the job (PYTHONPATH): torch's log lines about a failed worker reworded, as a
# newer torch may word them. Neither the job's exit code nor the restart notes may depend on that wording.
REWORDED_TORCH_LOGS = textwrap.dedent(
    """
    import logging

    class Reworded(logging.Filter):
        def filter(self, record):
            record.msg, record.args = "worker gone (code %s)", (record.args or ("?",))[:1]
            return True

    for name in ("torch.distributed.elastic.multiprocessing.api", "torch.distributed.elastic.agent.server.api"):
        logging.getLogger(name).addFilter(Reworded())
    """
)


def test_a_failing_rank_s_exit_code_is_the_job_s_whatever_is_printed(tmp_path, monkeypatch, capfd):
    """Rank 1 exits 5 on both attempts of a job with one restart, after printing a failure table that says 77;
    torch's own log lines are reworded. The job ends with 5 (the exit code torch's agent recorded for rank 1,
    not a number read from the output), and the note of each failed attempt has rank 1's pid and 5."""
    (tmp_path / "sitecustomize.py").write_text(REWORDED_TORCH_LOGS)
    monkeypatch.setenv("TRAINLAB_DEBUG", "1")  # torch's agent logs what it sees, reworded (its default is quiet)
    started = time.monotonic()
    code = _run_launcher(tmp_path, "exit", monkeypatch, pythonpath=(str(tmp_path),), max_restarts=1,
                         record_dir=tmp_path / "run")  # fmt: skip
    output = capfd.readouterr().err
    assert code == 5, output
    assert "rank 1 fails on purpose" in output
    assert "ChildFailedError" not in output and "trainlab: rank" not in output, output  # the rank spoke for itself
    notes = {}
    for path in (tmp_path / "run" / D.ATTEMPTS_FOLDER).glob("exit-*.json"):
        note = json.loads(path.read_text())
        notes[note["pid"]] = note
    for attempt in (0, 1):
        pid = int((tmp_path / f"failed-pid-attempt{attempt}").read_text())
        assert notes.get(pid) == {"pid": pid, "exitcode": 5, "local_rank": 1}, (attempt, notes)
    assert time.monotonic() - started < 120  # rank 0 was ended each time, not left waiting


def test_an_elastic_restart_on_fewer_processes_keeps_the_global_batch(monkeypatch):
    """torchrun --nnodes MIN:MAX came back with 1 process instead of 2: 2 x 16 becomes 1 x 32 by itself (no
    person is there to set data.batch_size); on a first attempt the number is taken as given (and a changed
    global batch is refused, as on a manual resume); 3 processes cannot keep 32 and keep 16."""
    from trainlab.config import load_config
    from trainlab.state.resume import resume_batch_size, same_global_batch

    cfg = load_config(None, ["data.batch_size=16"])
    state = {"world_size": 2, "config": {"data": {"batch_size": 16}, "train": {"nproc": 2, "grad_accum": 1}}}
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert resume_batch_size(cfg, state, 1) == 32 and same_global_batch(cfg, state, 1)
    assert resume_batch_size(cfg, state, 3) == 16
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    assert resume_batch_size(cfg, state, 1) == 16
    with pytest.raises(ConfigError, match="global batch is 32"):
        same_global_batch(cfg, state, 1)


def test_a_rank_that_lost_its_peer_is_not_taken_for_the_cause(tmp_path, monkeypatch):
    """Rank 1 exits 5; rank 0's next collective finds it gone and rank 0 exits 1 within milliseconds, so torch's
    agent can see both failed in one look, at the same second. The job's exit code must be rank 1's 5, not the
    consequence's 1 (rank 0 came first by rank order). Rank 0's note goes through torch's own channel, the error
    file the agent names; the failures are torch's ProcessFailure records built from what the workers left."""
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    error_file = tmp_path / "rank0-error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
    D.note_lost_peer("trainlab: error (rank 0): a collective with the other ranks failed: another rank ended first")
    failures = {0: ProcessFailure(local_rank=0, pid=100, exitcode=1, error_file=str(error_file)),
                1: ProcessFailure(local_rank=1, pid=101, exitcode=5, error_file=str(tmp_path / "none.json"))}
    failures[0].timestamp = failures[1].timestamp  # seen in the same look
    assert D.job_outcome(failures) == (5, None)
    # a rank that failed by itself still wins by time, then by rank
    alone = {0: ProcessFailure(local_rank=0, pid=100, exitcode=1, error_file=str(tmp_path / "none.json")),
             1: ProcessFailure(local_rank=1, pid=101, exitcode=5, error_file=str(tmp_path / "none.json"))}
    alone[1].timestamp = alone[0].timestamp
    assert D.job_outcome(alone) == (1, None)
