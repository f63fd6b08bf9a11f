"""Issue 26 item 3: "step" means one thing in every file of a run dir, the optimizer step, also under gradient
accumulation (`micro_step` beside it counts micro-batches); the report places steps and events at their true
epoch, also for run dirs written when steps.jsonl and events.jsonl counted micro-batches."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli_checks import run_in_process
from tests.conftest import TINY, read_metrics
from tests.drills import callback
from trainlab.report import interactive
from trainlab.report.read import load_run, load_runs

# 256 images / batch 32 = 8 micro-batches an epoch, grad_accum=2: 4 optimizer steps an epoch, 8 in the run.
ACCUM = [*TINY, "data.train_size=256", "data.val_size=64", "train.grad_accum=2", "watch.print_every=1",
         "train.epochs=2"]  # fmt: skip


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _check_places(run, epochs: int) -> None:
    """Every step record and event of `run` (as the report reads it) lies within the run's epochs."""
    for record in run.steps:
        x = run.step_to_epoch(record["step"])
        assert x is not None and record["epoch"] - 1 < x <= record["epoch"] + 1e-9, record
    for event in run.events:
        x = run.event_x(event)
        assert x is not None and 0 <= x <= epochs, (event, x)


def test_files_agree_on_optimizer_steps_under_accumulation_and_old_dirs_still_read(tmp_path):
    """A grad_accum=2 run stopped by a callback at step 6 (epoch 2, its 4th micro-batch) and resumed:
    metrics.csv, steps.jsonl, events.jsonl and the report count the same optimizer steps. Before the fix
    steps.jsonl ran to step 16 against metrics.csv's 8, the `preempted` event sat at step 12, drawn at epoch 3
    of a 2-epoch run."""
    a, b = tmp_path / "accum", tmp_path / "accum-b"
    stopped = run_in_process(["train", *ACCUM, f"run.dir={a}", callback("StopAfter", steps=6)], tmp_path)
    assert stopped.returncode == 143, stopped.stderr
    resumed = run_in_process(["train", *ACCUM, f"run.dir={a}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr

    rows = read_metrics(a)
    assert [int(r["step"]) for r in rows] == [4, 8]
    steps = _jsonl(a / "steps.jsonl")
    # one record per optimizer step (print_every=1), each once across the stop and resume
    assert [s["step"] for s in steps] == list(range(1, 9)), [s["step"] for s in steps]
    assert all(s["micro_step"] == 2 * s["step"] for s in steps)
    assert all(s["epoch"] == (1 if s["step"] <= 4 else 2) for s in steps)
    events = _jsonl(a / "events.jsonl")
    preempted = [e for e in events if e["kind"] == "preempted"]
    assert [(e["step"], e["epoch"], e["micro_step"]) for e in preempted] == [(6, 2, 12)], preempted
    assert all(e["step"] is None or e["step"] <= 8 for e in events), events
    run = load_run(a)
    _check_places(run, epochs=2)
    assert abs(run.event_x(preempted[0]) - 1.5) < 1e-9

    # Another run beside it: the two-run page's LR chart holds both runs' step curves within the epochs.
    other = run_in_process(["train", *ACCUM, f"run.dir={b}", "optim.lr=0.02"], tmp_path)
    assert other.returncode == 0, other.stderr
    both = load_runs([a, b])
    svg = interactive.chart("lr", "Learning rate", [("step:lr", "step lr", "")], both)
    assert svg is not None and svg.count('data-metric="step:lr"') == 2
    for r in both:
        xs = [x for x, _, _ in interactive._series(r, "step:lr")]
        assert len(xs) == 8 and 0 < min(xs) and max(xs) <= 2 + 1e-9, xs

    # A run dir as trainlab wrote it before: steps and events counted micro-batches, no micro_step.
    for name in ("steps.jsonl", "events.jsonl"):
        old = []
        for record in _jsonl(a / name):
            micro = record.pop("micro_step", None)
            if micro is not None:
                record["step"] = micro
            old.append(record)
        _write_jsonl(a / name, old)
    old_run = load_run(a)
    assert [s["step"] for s in old_run.steps] == list(range(1, 9))
    _check_places(old_run, epochs=2)
    old_preempted = [e for e in old_run.events if e["kind"] == "preempted"]
    assert abs(old_run.event_x(old_preempted[0]) - 1.5) < 1e-9
    report = run_in_process(["report", str(a)], tmp_path)
    assert report.returncode == 0 and (a / "report.html").is_file(), report.stderr


def test_max_steps_per_epoch_counts_optimizer_steps(tmp_path):
    """train.max_steps_per_epoch=3 with grad_accum=2: 3 optimizer steps (6 micro-batches) an epoch, as
    run.checkpoint_every_steps and metrics.csv count. It capped micro-batches: 2 steps (1.5 rounded up)."""
    run_dir = tmp_path / "cap"
    result = run_in_process(["train", *ACCUM, "train.epochs=1", "train.max_steps_per_epoch=3",
                             f"run.dir={run_dir}"], tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = read_metrics(run_dir)
    assert [int(r["step"]) for r in rows] == [3], rows
    assert [s["step"] for s in _jsonl(run_dir / "steps.jsonl")] == [1, 2, 3]
