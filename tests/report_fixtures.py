"""Hand-written run directories in the documented format (docs/run-dir.md), for the report tests.

These are the reader's fixtures: the engine's real output is tested by the sweep tests.
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

METRIC_COLUMNS = [
    "epoch", "step", "train_loss", "train_acc1", "val_loss", "val_acc1", "val_acc5", "lr", "data_time_s",
    "train_time_s", "other_time_s", "epoch_time_s", "val_time_s", "images_per_s", "peak_mem_mb", "rss_mb", "time",
]


def make_run(
    path: Path,
    epochs: int = 4,
    planned: int = 4,
    steps_per_epoch: int = 10,
    status: str = "finished",
    lr: float = 0.1,
    seed: int = 0,
    events: list[dict] | None = None,
    updated: float | None = None,
) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(
        f"data:\n  name: shapes\n  batch_size: 32\nmodel:\n  name: resnet8\noptim:\n  name: sgd\n  lr: {lr}\n"
        f"train:\n  epochs: {planned}\n  seed: {seed}\nrun:\n  dir: {path}\n"
    )
    t0 = time.time() - 3600
    rows, steps = [], []
    for epoch in range(1, epochs + 1):
        for k in range(steps_per_epoch):
            step = (epoch - 1) * steps_per_epoch + k + 1
            steps.append({"step": step, "epoch": epoch, "loss": 2.3 * math.exp(-step / 30) + 0.1 * seed,
                          "lr": lr * (1 - step / (planned * steps_per_epoch)), "step_time_s": 0.05,
                          "data_wait_frac": 0.2, "images_per_s": 600 + 10 * k, "rss_mb": 500 + step,
                          "cpu_pct": 90, "ram_pct": 20, "time": t0 + step})
        first = 1.5 if epoch == 1 else 0.0  # warm-up on the first epoch
        rows.append({
            "epoch": epoch, "step": epoch * steps_per_epoch, "train_loss": round(2.3 / epoch + 0.1 * seed, 4),
            "train_acc1": 20 + 15 * epoch, "val_loss": round(2.4 / epoch, 4), "val_acc1": 18.0 + 14 * epoch + seed,
            "val_acc5": 60 + 8 * epoch, "lr": lr / epoch, "data_time_s": 0.25, "train_time_s": 0.5 + first,
            "other_time_s": 0.05, "epoch_time_s": 0.8 + first, "val_time_s": 0.1, "images_per_s": 400.0 + epoch,
            "peak_mem_mb": 700 + 10 * epoch, "rss_mb": 650 + epoch, "time": t0 + 100 * epoch,
        })
    with open(path / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, METRIC_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (path / "steps.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps))
    events = events if events is not None else [
        {"kind": "data_bottleneck", "severity": "warning", "step": 12, "epoch": 2, "message": "waiting on data",
         "data": {"frac": 0.4}, "time": t0 + 12},
        {"kind": "schedule", "severity": "info", "step": 20, "epoch": 2, "message": "lr step", "data": {},
         "time": t0 + 20},
    ]
    (path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    counts: dict[str, int] = {}
    for e in events:
        counts[e["kind"]] = counts.get(e["kind"], 0) + 1
    now = updated if updated is not None else time.time()
    summary = {
        "status": status, "epochs": planned, "epochs_done": epochs,
        "best_val_acc1": max((r["val_acc1"] for r in rows), default=None),
        "best_epoch": epochs, "best_weights": "raw", "final": rows[-1] if rows else {}, "events": counts,
        "watch": {"data_wait_frac": 0.2}, "model": "resnet8", "params": 78000, "data": "shapes",
        "device": "cpu", "world_size": 1, "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t0)),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now)), "wall_time_s": 12.0,
        "run_dir": str(path),
    }
    (path / "summary.json").write_text(json.dumps(summary))
    return path
