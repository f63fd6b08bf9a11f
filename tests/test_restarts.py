"""A dead rank does not end the job: `train.max_restarts=N` lets torchrun restart the workers, which continue
from the newest checkpoint. Real torchrun jobs on the CPU (gloo, 2 processes); one worker is SIGKILLed from
here, by its pid, mid-epoch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from tests import prewarmed
from tests.drills import callback

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]
SRC = str(Path(__file__).resolve().parents[1] / "src")
JOB = [
    "data.name=shapes", "data.train_size=320", "data.val_size=64", "data.img_size=16", "model.name=resnet8",
    "model.norm=none", "data.batch_size=16", "train.epochs=2", "train.threads=1", "optim.lr=0.05",
    "run.tensorboard=false", "run.progress=none", "watch.print_every=1", "dist.stop_check_every=1",
    "train.nproc=2", "run.checkpoint_every_steps=3",
    callback("SlowHook", seconds=0.1),  # 100 ms per step: time to kill a worker mid-epoch
]  # fmt: skip


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINLAB_")}
    env.update(PYTHONPATH=SRC + os.pathsep + env.get("PYTHONPATH", ""), PYTHONUNBUFFERED="1", **extra)
    return env


def _weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["model"]


def _worker(launcher: psutil.Process, rank: int) -> psutil.Process | None:
    for child in launcher.children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank) and "trainlab" in " ".join(child.cmdline()):
                return child
        except psutil.Error:
            continue
    return None


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    proc = prewarmed.run([sys.executable, "-m", "trainlab", "train", *JOB, f"run.dir={run_dir}"], env=_env(),
                          capture_output=True, text=True, timeout=240)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


@pytest.mark.parametrize("launcher", ["trainlab", "torchrun"])
def test_a_killed_worker_is_restarted_and_the_job_ends_as_if_nothing_happened(reference, tmp_path, launcher):
    """Through `train.nproc=2 train.max_restarts=2`, and through raw `torchrun --max-restarts 2` (before: the
    restarted workers met the dead attempt's keys in torchrun's shared store, and 2 of 3 tries failed or hung)."""
    run_dir = tmp_path / "run"
    if launcher == "trainlab":
        cmd = [sys.executable, "-m", "trainlab", "train", *JOB, "train.max_restarts=2", f"run.dir={run_dir}"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "--max-restarts=2",
               "-m", "trainlab", "train", *[a for a in JOB if a != "train.nproc=2"], f"run.dir={run_dir}"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    launcher, killed = psutil.Process(proc.pid), None
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None and killed is None:
        steps = run_dir / "steps.jsonl"
        logged = [json.loads(line)["step"] for line in steps.read_text().splitlines()] if steps.exists() else []
        if logged and logged[-1] >= 14:  # epoch 2, past the periodic checkpoint of step 12
            victim = _worker(launcher, 1)
            if victim is not None:
                killed = victim.pid
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.02)
    out, err = proc.communicate(timeout=240)
    assert killed is not None, "the job ended before a worker could be killed"
    assert proc.returncode == 0, err[-4000:]
    different = [k for k, v in _weights(reference).items() if not torch.equal(v, _weights(run_dir)[k])]
    assert not different, f"weights differ from the uninterrupted 2-process run: {different[:4]}"
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    restarts = [e for e in events if e["kind"] == "restart"]
    assert len(restarts) == 1, [e["kind"] for e in events]
    data = restarts[0]["data"]
    assert data["attempt"] == 1 and data["max_restarts"] == 2
    assert data["resumed_step"] in (12, 13, 14, 15) and data["steps_redone"] >= 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["restarts"] == [data]
    if launcher == "trainlab":  # trainlab's launcher notes how each rank ended, as torch's agent recorded it
        lost = [r for r in data["ranks"] if r["rank"] == 1][0]
        assert lost["pid"] == killed and "killed by SIGKILL (exit code -9)" in lost["ended"]
