"""One grid, three engines: a local process pool, Ray tasks on a Ray instance this test starts (and stops),
submitit jobs through its local executor. Each must end with the sweep.md the local engine writes (the same
finished runs with the same numbers: CPU runs are deterministic, and a resumed run is exact), also when a Ray
worker is killed mid-run (the task is retried and the run resumes from its checkpoint) and when a job gets the
scheduler's time-limit signal (checkpoint, requeue, resume)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import REPO, run_trainlab, trainlab_cmd
from tests.drills import callback

GRID_TINY = [
    "data.name=shapes", "data.train_size=128", "data.val_size=64", "data.img_size=16", "data.batch_size=32",
    "model.name=resnet8", "train.epochs=2", "run.tensorboard=false", "train.threads=1", "watch.print_every=2",
    callback("SlowHook", seconds=0.4),  # 8 steps of 0.4 s: time to hit a run mid-epoch; the numbers do not change
]  # fmt: skip
GRID = ["--grid", "optim.lr=0.05,0.1"]
RUNS = ["lr=0.05", "lr=0.1"]
DETERMINISTIC = ["run", "optim.lr", "status", "epochs", "val top-1 %", "best top-1 %", "val top-5 %", "train loss",
                 "val loss"]  # fmt: skip


def table_rows(sweep: Path) -> list[dict[str, str]]:
    """sweep.md's comparison table, keeping the columns that do not depend on timing."""
    lines = [ln for ln in (sweep / "sweep.md").read_text().splitlines() if ln.startswith("|")]
    headers = [h.strip() for h in lines[0].strip("|").split("|")]
    rows = [dict(zip(headers, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines[2:]]
    return [{key: row[key] for key in DETERMINISTIC} for row in rows]


def events(run_dir: Path) -> list[str]:
    import json

    return [json.loads(line)["kind"] for line in (run_dir / "events.jsonl").read_text().splitlines()]


def train_process(run_dir: Path, timeout: float = 240) -> psutil.Process:
    """The `trainlab train` process of this run dir, once it exists."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for proc in psutil.process_iter(["cmdline"]):
            cmd = proc.info["cmdline"] or []
            if "train" in cmd and f"run.dir={run_dir}" in cmd:
                return proc
        time.sleep(0.05)
    raise AssertionError(f"no trainlab train process for {run_dir}")


def wait_for(path: Path, timeout: float = 240, nonempty: bool = False) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and (not nonempty or path.stat().st_size > 0):
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} did not appear")


@pytest.fixture(scope="module")
def local_rows(tmp_path_factory) -> list[dict[str, str]]:
    sweep = tmp_path_factory.mktemp("local") / "grid"
    run_trainlab("sweep", *GRID_TINY, *GRID, "--dir", str(sweep), "--parallel", "2", check=True, timeout=400)
    rows = table_rows(sweep)
    assert [r["run"] for r in rows] == RUNS and all(r["status"] == "finished" for r in rows)
    return rows


@pytest.fixture
def ray_head():
    """`ray start --head` on the loopback in its own session, stopped (with every process it started) at the end."""
    pytest.importorskip("ray")
    temp_dir = tempfile.mkdtemp(prefix="trl-ray-")  # short: Ray's socket paths must fit in 107 characters
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(Path(temp_dir) / "head.log", "w")
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=false", "--node-ip-address=127.0.0.1", f"--temp-dir={temp_dir}",
         "--disable-usage-stats"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO,
    )  # fmt: skip
    try:
        deadline = time.time() + 120
        while "Ray runtime started" not in (Path(temp_dir) / "head.log").read_text():
            assert head.poll() is None and time.time() < deadline, (Path(temp_dir) / "head.log").read_text()
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        head.send_signal(signal.SIGTERM)  # ray start --block stops the processes it started
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            head.kill()
        for proc in psutil.process_iter(["cmdline"]):  # anything of this instance still there: by pid
            if any(temp_dir in part for part in proc.info["cmdline"] or []):
                proc.kill()
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_grid_on_ray_matches_the_local_engine_and_a_killed_worker_is_retried(local_rows, ray_head, tmp_path):
    sweep = tmp_path / "grid"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    driver = subprocess.Popen(trainlab_cmd("sweep", *GRID_TINY, *GRID, "--dir", str(sweep), "--engine", "ray",
                                           "--ray-address", ray_head),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)  # fmt: skip
    victim = sweep / "lr=0.05"
    wait_for(victim / "checkpoints" / "last.pt")  # epoch 1 is saved: kill the worker that runs the task
    worker = train_process(victim).parent()
    assert "ray" in " ".join(worker.cmdline()).lower() or worker.name().startswith("ray::")
    worker.kill()
    out, _ = driver.communicate(timeout=400)
    assert driver.returncode == 0, out
    assert out.count("started as a Ray task (1 CPU) on the Ray cluster at " + ray_head) == 2
    assert table_rows(sweep) == local_rows  # the same sweep.md, the retried run included
    assert "resumed" in events(victim)  # the retry continued from the checkpoint, not from scratch


@pytest.mark.slow
def test_grid_on_submitit_matches_the_local_engine_and_the_time_limit_signal_requeues(local_rows, tmp_path):
    pytest.importorskip("submitit")
    sweep = tmp_path / "grid"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    driver = subprocess.Popen(trainlab_cmd("sweep", *GRID_TINY, *GRID, "--dir", str(sweep), "--engine", "submitit",
                                           "--submitit-cluster", "local"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)  # fmt: skip
    victim = sweep / "lr=0.05"
    wait_for(victim / "steps.jsonl", nonempty=True)  # training: the scheduler's warning signal comes now
    job = train_process(victim).parent()  # the job's own process (python -m submitit.core._submit), as SLURM signals it
    assert "submitit" in " ".join(job.cmdline())
    job.send_signal(signal.SIGUSR1)
    out, _ = driver.communicate(timeout=400)
    assert driver.returncode == 0, out
    assert out.count("started as submitit local job") == 2
    assert table_rows(sweep) == local_rows
    kinds = events(victim)
    assert "preempted" in kinds and kinds.index("resumed") > kinds.index("preempted")  # checkpoint, requeue, resume
    logs = "".join(p.read_text() for p in (sweep / "jobs").rglob("*_log.err"))
    assert "Caught signal SIGUSR1" in logs
