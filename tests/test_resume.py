"""Kill it any time, resume exactly: real `trainlab train` subprocesses, real signals, bitwise comparison.

A reference run goes uninterrupted; the same command is stopped (SIGTERM at an exact point through the
SelfSignal drill of tests/drills.py, a callback the test installs, or from outside to the whole process group like a spot termination, or
SIGKILL) and re-issued until it finishes. Its final weights must equal the reference bit for bit and its
metrics.csv must equal the reference's, times aside.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests import prewarmed
from tests.cli_checks import run_in_process
from tests.conftest import TINY, read_metrics, read_summary, trainlab_cmd
from tests.drills import self_signal

# 3 epochs of 20 batches, a log line every step.
BASE = [*TINY, "train.epochs=3", "data.batch_size=16", "watch.print_every=1"]
TIME_COLUMNS = {"data_time_s", "train_time_s", "other_time_s", "epoch_time_s", "val_time_s", "images_per_s",
                "time", "peak_mem_mb", "rss_mb"}  # fmt: skip


def run(run_dir: Path, *extra: str, drill: str | None = None, timeout: float = 240):
    """`drill`: PHASE:EPOCH:BATCH[:SIGNAL], the process signals itself there (tests/drills.py SelfSignal)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    drills = [self_signal(drill)] if drill else []
    return prewarmed.run(trainlab_cmd("train", *BASE, *extra, *drills, f"run.dir={run_dir}"), env=env,
                         timeout=timeout)


def here(run_dir: Path, *extra: str, base: list[str] = BASE):
    """The same command in this process (`cli.main`): for the runs no signal reaches, without a Python start
    and a torch import per run."""
    return run_in_process(["train", *base, *extra, f"run.dir={run_dir}"], cwd=run_dir.parent)


def weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["model"]


def assert_bitwise_equal(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"weights differ after resume: {different[:5]}"


def assert_same_metrics(a: Path, b: Path) -> None:
    ra, rb = read_metrics(a), read_metrics(b)
    assert len(ra) == len(rb), f"{len(ra)} rows vs {len(rb)}"
    for row_a, row_b in zip(ra, rb):
        for key in row_a:
            if key not in TIME_COLUMNS:
                assert row_a[key] == row_b[key], f"epoch {row_a['epoch']}: {key} {row_a[key]} != {row_b[key]}"


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """One uninterrupted run per num_workers setting, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("reference")
    refs = {}
    for workers in (0, 2):
        run_dir = root / f"w{workers}"
        proc = run(run_dir, f"data.num_workers={workers}", "data.loader=torch")
        assert proc.returncode == 0, proc.stderr
        refs[workers] = run_dir
    return refs


def stop_then_finish(run_dir: Path, drill: str, *extra: str, expect: int = 143) -> str:
    first = run(run_dir, *extra, drill=drill)
    assert first.returncode == expect, f"exit {first.returncode}\n{first.stdout[-2000:]}\n{first.stderr[-2000:]}"
    second = run(run_dir, *extra)
    assert second.returncode == 0, second.stderr[-3000:]
    return first.stderr + second.stdout + second.stderr


@pytest.mark.parametrize("workers", [0, 2])
def test_sigterm_mid_epoch_resumes_bitwise(tmp_path, references, workers):
    extra = (f"data.num_workers={workers}", "data.loader=torch")
    log = stop_then_finish(tmp_path / "run", "train:2:7", *extra)
    assert "stopped by SIGTERM at epoch 2, batch 8" in log
    assert "Continue with the same command" in log
    assert_bitwise_equal(references[workers], tmp_path / "run")
    assert_same_metrics(references[workers], tmp_path / "run")
    assert read_summary(tmp_path / "run")["status"] == "finished"


def test_sigterm_in_first_epoch_and_mid_validation(tmp_path, references):
    extra = ("data.num_workers=0", "data.loader=torch")
    stop_then_finish(tmp_path / "first", "train:1:2", *extra)
    assert_bitwise_equal(references[0], tmp_path / "first")
    assert_same_metrics(references[0], tmp_path / "first")

    log = stop_then_finish(tmp_path / "val", "val:2:1", *extra)
    assert "stopped by SIGTERM at epoch 2" in log
    assert_bitwise_equal(references[0], tmp_path / "val")
    assert_same_metrics(references[0], tmp_path / "val")


def test_sigterm_to_process_group_from_outside(tmp_path, references):
    """What a spot termination does: SIGTERM to every process of the job, loader workers included."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = trainlab_cmd("train", *BASE, "data.num_workers=2", "data.loader=torch", f"run.dir={run_dir}")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    steps = run_dir / "steps.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if steps.exists() and len(steps.read_text().splitlines()) >= 3:
            os.killpg(proc.pid, signal.SIGTERM)
            break
        time.sleep(0.02)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, f"exit {proc.returncode}\n{out[-2000:]}\n{err[-2000:]}"
    assert "Traceback" not in err
    again = run(run_dir, "data.num_workers=2", "data.loader=torch")
    assert again.returncode == 0, again.stderr[-3000:]
    assert_bitwise_equal(references[2], run_dir)
    assert_same_metrics(references[2], run_dir)


def test_sigkill_resumes_from_periodic_checkpoint(tmp_path, references):
    extra = ("data.num_workers=0", "data.loader=torch", "run.checkpoint_every_steps=4")
    first = run(tmp_path / "run", *extra, drill="train:2:10:SIGKILL")
    assert first.returncode == -signal.SIGKILL
    periodic = sorted((tmp_path / "run" / "checkpoints").glob("periodic-*.pt"))
    assert periodic, "no periodic checkpoint written"
    assert len(periodic) <= 2  # run.keep_periodic=2: the newest few only
    second = run(tmp_path / "run", *extra)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "periodic-step=" in second.stdout
    assert_bitwise_equal(references[0], tmp_path / "run")
    assert_same_metrics(references[0], tmp_path / "run")


def test_truncated_checkpoint_falls_back_to_previous_good_one(tmp_path, references):
    extra = ("data.num_workers=0", "data.loader=torch", "run.checkpoint_every_steps=3")
    first = run(tmp_path / "run", *extra, drill="train:2:15")
    assert first.returncode == 143
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a half-written file, as after power loss
    second = run(tmp_path / "run", *extra)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "last.pt" in second.stderr and "unusable" in second.stderr
    assert_bitwise_equal(references[0], tmp_path / "run")
    assert_same_metrics(references[0], tmp_path / "run")


def test_finished_never_and_changed_keys(tmp_path, references):
    run_dir = references[0]
    again = here(run_dir, "data.num_workers=0", "data.loader=torch")
    assert again.returncode == 0 and "is finished" in again.stdout

    never = here(run_dir, "data.num_workers=0", "data.loader=torch", "run.resume=never")
    assert never.returncode == 2 and "not empty" in never.stderr and "Traceback" not in never.stderr

    stopped = tmp_path / "stopped"
    assert run(stopped, "data.num_workers=0", "data.loader=torch", drill="train:1:4").returncode == 143
    changed = here(stopped, "data.num_workers=0", "data.loader=torch", "optim.lr=0.2")
    assert changed.returncode == 2
    assert "optim.lr changed from 0.05 to 0.2" in changed.stderr and "run.resume_force=true" in changed.stderr
    forced = here(stopped, "data.num_workers=0", "data.loader=torch", "optim.lr=0.2", "run.resume_force=true",
                  "train.epochs=1")  # fmt: skip
    assert forced.returncode == 0, forced.stderr[-2000:]


def test_extending_a_finished_run_names_the_lr_jump_and_follows_sched_extend(tmp_path):
    """Issue 11 item 7: the one-cycle schedule is sized from train.epochs, so extending a finished run would
    restart its LR curve mid-way. Plain extension is refused naming the jump; sched.extend=restart runs a new
    one-cycle over the added epoch. Issue 26 item 2: the finished one-cycle ended at ~4e-6 of its peak, so
    sched.extend=hold (which keeps the last LR) is neither offered nor accepted there (tests/test_schedule_resume.py
    has the hold that trains)."""
    short = [*BASE[:-1], "watch.print_every=5"]
    first = tmp_path / "first"
    done = here(first, "train.epochs=1", base=short)
    assert done.returncode == 0, done.stderr
    steps = [json.loads(line) for line in (first / "steps.jsonl").read_text().splitlines()]
    final_lr = steps[-1]["lr"]  # metrics.csv rounds to 6 decimals; the final one-cycle LR is ~2e-7

    refused = here(first, "train.epochs=2", base=short)
    assert refused.returncode == 2
    assert "sched.extend=restart" in refused.stderr and "would jump from" in refused.stderr
    assert "sched.extend=hold" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1

    for mode in ("hold", "restart"):
        run_dir = tmp_path / mode
        shutil.copytree(first, run_dir)
        proc = here(run_dir, "train.epochs=2", f"sched.extend={mode}", base=short)
        if mode == "hold":
            assert proc.returncode == 2 and "cannot resume with sched.extend=hold" in proc.stderr
            assert len(proc.stderr.strip().splitlines()) == 1
            continue
        assert proc.returncode == 0, proc.stderr
        rows = read_metrics(run_dir)
        assert [r["epoch"] for r in rows] == ["1", "2"]
        epoch2_lrs = [r["lr"] for r in map(json.loads, (run_dir / "steps.jsonl").read_text().splitlines())
                      if r["epoch"] == 2]  # fmt: skip
        # a new cycle: up towards the peak (optim.lr) and down again
        assert max(epoch2_lrs) > 50 * final_lr
        assert float(rows[1]["lr"]) < max(epoch2_lrs) / 10


def test_same_command_without_run_dir_continues_the_unfinished_run(tmp_path):
    """No run.dir: after a stop, re-issuing the same command continues that run (runs/<name>-<time>);
    a command that changes the math starts a new run instead."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = trainlab_cmd("train", *BASE, "train.epochs=2", "data.num_workers=0")
    stop = self_signal("train:1:3")
    first = prewarmed.run([*args, stop], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert first.returncode == 143, first.stderr[-2000:]
    second = run_in_process(["train", *BASE, "train.epochs=2", "data.num_workers=0"], cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "continuing the unfinished run" in second.stdout
    (run_dir,) = list((tmp_path / "runs").iterdir())
    assert read_summary(run_dir)["status"] == "finished" and len(read_metrics(run_dir)) == 2

    assert prewarmed.run([*args, stop], cwd=tmp_path, env=env, capture_output=True, timeout=240).returncode == 143
    changed = prewarmed.run([*args, "optim.lr=0.02"], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=240)  # fmt: skip
    assert changed.returncode == 0 and "continuing" not in changed.stdout
    assert len(list((tmp_path / "runs").iterdir())) == 3
