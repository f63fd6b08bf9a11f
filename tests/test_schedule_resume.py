"""The LR across a resume that changes the plan (sched.extend), and the LR a run reports: real in-process runs
of `trainlab train` on tiny shapes, their metrics.csv and steps.jsonl read back, and the LR each optimizer step
trained with (tests/drills.py RecordLR)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from tests.cli_checks import run_in_process
from tests.conftest import TINY, read_metrics
from tests.drills import callback

# 2 epochs of 4 optimizer steps; cosine from optim.lr=0.05 to 0 over the 8 steps (the 8th lands on 0)
SHORT = [*TINY, "sched.name=cosine", "data.train_size=128", "data.val_size=32", "train.max_steps_per_epoch=4",
         "run.progress=none", "watch.print_every=1"]  # fmt: skip


def cosine_lr(k: int, steps: int = 8, peak: float = 0.05) -> float:
    """The LR of 0-based optimizer step k of a cosine over `steps` steps."""
    return peak * 0.5 * (math.cos(math.pi * k / (steps - 1)) + 1)


def step_lrs(run_dir: Path, epoch: int) -> list[float]:
    rows = map(json.loads, (run_dir / "steps.jsonl").read_text().splitlines())
    return [r["lr"] for r in rows if r.get("epoch") == epoch]


def trained_lrs(path: Path) -> list[float]:
    """What RecordLR saw: the LR of each optimizer step, in order."""
    return [json.loads(line)["lr"] for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def cosine_runs(tmp_path_factory) -> dict[str, Path]:
    """One 2-epoch cosine run stopped after optimizer step 6 (mid epoch 2), and a copy of it finished."""
    root = tmp_path_factory.mktemp("cosine")
    stopped, finished = root / "stopped", root / "finished"
    first = run_in_process(["train", *SHORT, callback("StopAfter", steps=6), f"run.dir={stopped}"], root)
    assert first.returncode == 143, first.stderr[-2000:]
    shutil.copytree(stopped, finished)
    assert run_in_process(["train", *SHORT, f"run.dir={finished}"], root).returncode == 0
    return {"stopped": stopped, "finished": finished}


def copy_of(run_dir: Path, tmp_path: Path) -> Path:
    shutil.copytree(run_dir, tmp_path / run_dir.name)
    return tmp_path / run_dir.name


def test_sched_extend_hold_keeps_the_lr_the_run_stopped_at_and_refuses_a_finished_cosine(tmp_path, cosine_runs):
    """Issue 26 item 2: past the end of the old cosine the LR stayed at min_lr, so `hold` trained the added
    epochs at LR 0 (before: metrics.csv epoch 3 lr 0.0). Now hold keeps the LR of the last step taken,
    constant, says it at the start, and is refused where that LR is below 1% of the peak."""
    held = cosine_lr(5)  # step 6 (0-based 5) was the last one trained: 0.00941
    extended = copy_of(cosine_runs["stopped"], tmp_path)
    hold = run_in_process(["train", *SHORT, "train.epochs=3", "sched.extend=hold", f"run.dir={extended}"],
                          tmp_path)  # fmt: skip
    assert hold.returncode == 0, hold.stderr[-2000:]
    rows = read_metrics(extended)
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert float(rows[2]["lr"]) == pytest.approx(held, abs=1e-6)
    assert step_lrs(extended, 3) and all(lr == pytest.approx(held) for lr in step_lrs(extended, 3))
    assert f"the LR stays at {held:.4g}" in hold.stdout and f"LR {held:.4g}" in hold.stdout.split("resumed at")[1]

    # the finished run: its cosine ended at min_lr=0, so there is nothing to hold
    finished = copy_of(cosine_runs["finished"], tmp_path)
    refused = run_in_process(["train", *SHORT, "train.epochs=3", "sched.extend=hold", f"run.dir={finished}"],
                             tmp_path)  # fmt: skip
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert "sched.extend=hold" in refused.stderr and "sched.extend=restart" in refused.stderr
    assert "run.resume_force=true" in refused.stderr and "LR" in refused.stderr
    plain = run_in_process(["train", *SHORT, "train.epochs=3", f"run.dir={finished}"], tmp_path)
    assert plain.returncode == 2 and "sched.extend=restart" in plain.stderr
    assert "sched.extend=hold" not in plain.stderr  # not offered: it would train at LR 0
    assert len(read_metrics(finished)) == 2  # nothing half-written


def test_the_first_step_after_a_resume_trains_at_the_plans_lr(tmp_path, cosine_runs):
    """Issue 26 item 8: the optimizer's LR came from the checkpoint, and the scheduler set the new plan's LR
    only after the first step, so the first step of a sched.extend=restart trained at the old LR (before: 0.0,
    the finished cosine's end, instead of the new cosine's 0.05) and the first step of a hold at the old curve's
    next LR (before: 0.002476 instead of 0.009413). A plain resume keeps the same curve."""
    cases = {
        "restart": (cosine_runs["finished"], ["train.epochs=3", "sched.extend=restart"],
                    [cosine_lr(k, steps=4) for k in range(4)]),
        "hold": (cosine_runs["stopped"], ["train.epochs=3", "sched.extend=hold"], [cosine_lr(5)] * 6),
        "plain": (cosine_runs["stopped"], [], [cosine_lr(6), cosine_lr(7)]),
    }  # fmt: skip
    for name, (source, extra, expected) in cases.items():
        run_dir, record = copy_of(source, tmp_path / name), tmp_path / f"{name}-lr.jsonl"
        proc = run_in_process(["train", *SHORT, *extra, callback("RecordLR", path=str(record)), f"run.dir={run_dir}"],
                              tmp_path)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert trained_lrs(record) == pytest.approx(expected), name


def test_a_forced_resume_trains_with_the_new_optimizer_settings(tmp_path, cosine_runs):
    """Sibling of item 8: with run.resume_force=true a changed optim.lr or optim.weight_decay was accepted,
    then overwritten by the checkpoint's param groups and the scheduler's saved base LR: the run went on at
    the old ones (before: first step LR 0.002476 and weight_decay 0.0005 with optim.lr=0.1
    optim.weight_decay=0.01). Now the config's values train, on the same curve."""
    run_dir, record = copy_of(cosine_runs["stopped"], tmp_path), tmp_path / "lr.jsonl"
    proc = run_in_process(["train", *SHORT, "optim.lr=0.1", "optim.weight_decay=0.01", "run.resume_force=true",
                           callback("RecordLR", path=str(record)), f"run.dir={run_dir}"], tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "optim.lr" in proc.stderr  # the forced change is named
    assert trained_lrs(record) == pytest.approx([cosine_lr(6, peak=0.1), cosine_lr(7, peak=0.1)])
    assert [json.loads(line)["weight_decay"] for line in record.read_text().splitlines()] == [0.01, 0.01]


def test_an_epochs_lr_is_the_lr_its_steps_trained_at(tmp_path, cosine_runs):
    """Issue 26 item 10: metrics.csv and the console showed the optimizer's LR after the epoch's last scheduler
    step, the next epoch's: a step schedule's first epoch, trained at 0.1, showed 0.01 (before: lr column
    [0.01, 0.001]; steps.jsonl's boundary step the same). Now `lr` is the LR of the epoch's last step,
    lr_min/lr_max its range (kept across a stop mid-epoch), and the console says `LR: first→last`."""
    run_dir, record = tmp_path / "step", tmp_path / "lr.jsonl"
    proc = run_in_process(["train", *SHORT, "sched.name=step", "sched.step_size=1", "sched.gamma=0.1",
                           "optim.lr=0.1", callback("RecordLR", path=str(record)), f"run.dir={run_dir}"],
                          tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = read_metrics(run_dir)
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.1, 0.01])
    assert [float(r[k]) for r in rows for k in ("lr_min", "lr_max")] == pytest.approx([0.1, 0.1, 0.01, 0.01])
    assert "| LR: 0.1\n" in proc.stdout and "| LR: 0.01\n" in proc.stdout
    steps = [json.loads(line)["lr"] for line in (run_dir / "steps.jsonl").read_text().splitlines()]
    assert steps == pytest.approx(trained_lrs(record))  # each step's line: the LR its optimizer step used

    # cosine: the LR moves every step; epoch 2 was stopped after its 2nd step and resumed
    rows = read_metrics(cosine_runs["finished"])
    figures = [float(r[k]) for r in rows for k in ("lr", "lr_min", "lr_max")]
    assert figures == pytest.approx([cosine_lr(3), cosine_lr(3), cosine_lr(0),
                                     cosine_lr(7), cosine_lr(7), cosine_lr(4)], abs=1e-6)  # fmt: skip
    from trainlab.runlog.console import lr_text

    assert lr_text({"lr": 0.01, "lr_first": 0.05, "lr_min": 0.01, "lr_max": 0.05}) == "0.05→0.01"
    warmup_then_decay = {"lr": 0.09, "lr_first": 0.01, "lr_min": 0.01, "lr_max": 0.1}
    assert lr_text(warmup_then_decay) == "0.01→0.09 (min 0.01, max 0.1)"
    assert lr_text({"lr": 0.1}) == "0.1"  # a row of an older run (metrics_rows in its checkpoint)
