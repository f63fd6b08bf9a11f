"""The LR across a resume that changes the plan (sched.extend), and the LR a run reports: real in-process runs
of `trainlab train` on tiny shapes, their metrics.csv and steps.jsonl read back."""

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
    return peak * 0.5 * (math.cos(math.pi * k / (steps - 1)) + 1)


def step_lrs(run_dir: Path, epoch: int) -> list[float]:
    rows = map(json.loads, (run_dir / "steps.jsonl").read_text().splitlines())
    return [r["lr"] for r in rows if r.get("epoch") == epoch]


def test_sched_extend_hold_keeps_the_lr_the_run_stopped_at_and_refuses_a_finished_cosine(tmp_path):
    """Issue 26 item 2: past the end of the old cosine the LR stayed at min_lr, so `hold` trained the added
    epochs at LR 0 (before: metrics.csv epoch 3 lr 0.0). Now hold keeps the LR of the last step taken,
    constant, says it at the start, and is refused where that LR is below 1% of the peak."""
    stopped = tmp_path / "stopped"
    first = run_in_process(["train", *SHORT, callback("StopAfter", steps=6), f"run.dir={stopped}"], tmp_path)
    assert first.returncode == 143, first.stderr[-2000:]
    held = cosine_lr(5)  # step 6 (0-based 5) was the last one trained: 0.00941

    extended = tmp_path / "extended"
    shutil.copytree(stopped, extended)
    hold = run_in_process(["train", *SHORT, "train.epochs=3", "sched.extend=hold", f"run.dir={extended}"],
                          tmp_path)  # fmt: skip
    assert hold.returncode == 0, hold.stderr[-2000:]
    rows = read_metrics(extended)
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert float(rows[2]["lr"]) == pytest.approx(held, abs=1e-6)
    assert step_lrs(extended, 3) and all(lr == pytest.approx(held) for lr in step_lrs(extended, 3))
    assert f"the LR stays at {held:.4g}" in hold.stdout and f"LR {held:.4g}" in hold.stdout.split("resumed at")[1]

    # the same run finished: its cosine ended at min_lr=0, so there is nothing to hold
    assert run_in_process(["train", *SHORT, f"run.dir={stopped}"], tmp_path).returncode == 0
    refused = run_in_process(["train", *SHORT, "train.epochs=3", "sched.extend=hold", f"run.dir={stopped}"],
                             tmp_path)  # fmt: skip
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert "sched.extend=hold" in refused.stderr and "sched.extend=restart" in refused.stderr
    assert "run.resume_force=true" in refused.stderr and "LR" in refused.stderr
    plain = run_in_process(["train", *SHORT, "train.epochs=3", f"run.dir={stopped}"], tmp_path)
    assert plain.returncode == 2 and "sched.extend=restart" in plain.stderr
    assert "sched.extend=hold" not in plain.stderr  # not offered: it would train at LR 0
    assert len(read_metrics(stopped)) == 2  # nothing half-written
