"""Writers for the run directory: metrics.csv, steps.jsonl, events.jsonl, summary.json, TensorBoard.

The format is documented in docs/run-dir.md; report and sweep read only these files. A full disk while
writing any of them is a one-line DiskFullError naming the file (trainlab.paths.writing); none is written
through a symbolic link (trainlab.paths.open_no_follow: a link planted in the run dir is refused).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

from trainlab.paths import open_no_follow, writing

METRIC_COLUMNS = [
    "epoch", "step", "train_loss", "train_acc1", "val_loss", "val_acc1", "val_acc5", "lr", "lr_min", "lr_max",
    "data_time_s", "train_time_s", "other_time_s", "epoch_time_s", "val_time_s", "images_per_s",
    "peak_mem_mb", "rss_mb", "time", "ema_val_acc1",
]  # fmt: skip


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON so a reader never sees half a file: temp file, fsync, rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    text = json.dumps(payload, indent=2, default=_jsonable)
    try:
        with writing(path, len(text.encode())), open_no_follow(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # a full disk must not also leave the temp file behind
            tmp.unlink()
        raise


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _clean(value: Any) -> Any:
    """Floats that JSON cannot hold (NaN, Inf) become strings so the file stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class RunLogger:
    """Appends to the run's log files. Only rank 0 makes one; other ranks get `NullLogger`. The records it
    writes are returned (with their `time`), for the run's callbacks: the trackers among them."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / "metrics.csv"
        self.steps_path = self.run_dir / "steps.jsonl"
        self.events_path = self.run_dir / "events.jsonl"
        self.summary_path = self.run_dir / "summary.json"

    def tracker_failed(self, name: str, message: str) -> None:
        """A tracker's failure: one warning and an event in events.jsonl (not sent on to the trackers)."""
        print(f"WARNING: {message}", file=sys.stderr, flush=True)
        self._write_event({"kind": "tracker_failed", "severity": "warning", "step": None, "epoch": None,
                           "message": message, "data": {"tracker": name}})  # fmt: skip

    # -- rows ---------------------------------------------------------------
    def rewrite_metrics(self, rows: list[dict]) -> None:
        """On resume: the CSV holds exactly the rows of the epochs the checkpoint has seen, no more, no less."""
        tmp = self.metrics_path.with_name(".metrics.csv.tmp")
        try:
            with writing(self.metrics_path), open_no_follow(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
                writer.writeheader()
                for row in rows:
                    writer.writerow(csv_row(row))
            os.replace(tmp, self.metrics_path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    def append_metrics(self, row: dict) -> None:
        new = not self.metrics_path.exists()
        with writing(self.metrics_path), open_no_follow(self.metrics_path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(csv_row(row))

    def truncate_jsonl(self, max_micro_step: int) -> None:
        """After a resume, drop step lines written after the checkpoint so no step appears twice. Lines are
        compared by their `micro_step` (the micro-batches done, exact under accumulation); a line without one
        was written by an older trainlab, whose `step` counted micro-batches. The files are read as a person
        may have left them: a line that is not a JSON object with a numeric step (or none) is kept as it is,
        never a reason to fail the resume."""
        for path in (self.steps_path, self.events_path):
            if not path.exists():
                continue
            kept = []
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except (ValueError, RecursionError):
                    continue  # a line cut by a hard kill
                step = record.get("micro_step", record.get("step")) if isinstance(record, dict) else None
                late = isinstance(step, (int, float)) and not isinstance(step, bool) and step > max_micro_step
                if not late or record.get("kind") in ("preempted", "resumed"):
                    kept.append(line)
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            try:
                with writing(path), open_no_follow(tmp, "w") as f:
                    f.write("".join(k + "\n" for k in kept))
                os.replace(tmp, path)  # a kill meanwhile leaves the old file, not half of it
            except BaseException:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise

    def log_step(self, record: dict) -> dict:
        record = {**record, "time": record.get("time", time.time())}
        line = json.dumps(_clean(record), default=_jsonable) + "\n"
        with writing(self.steps_path, len(line)), open_no_follow(self.steps_path, "a") as f:
            f.write(line)
        return record

    def log_event(self, event: dict) -> dict:
        return self._write_event(event)

    def _write_event(self, event: dict) -> dict:
        event = {**event, "time": event.get("time", time.time())}
        line = json.dumps(_clean(event), default=_jsonable) + "\n"
        with writing(self.events_path, len(line)), open_no_follow(self.events_path, "a") as f:
            f.write(line)
        return event

    def write_summary(self, summary: dict) -> None:
        write_json_atomic(self.summary_path, _clean(summary))


class NullLogger:
    """What non-zero ranks log: nothing (the records go on to the callbacks as they are)."""

    def log_step(self, record: dict) -> dict:
        return record

    def log_event(self, event: dict) -> dict:
        return event

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def csv_row(row: dict) -> dict:
    """A metrics row as metrics.csv writes it (6 decimals; the trackers get these very numbers)."""
    out = {}
    for key in METRIC_COLUMNS:
        value: Optional[Any] = row.get(key)
        if value is None:
            out[key] = ""
        elif isinstance(value, float):
            out[key] = repr(round(value, 6)) if key != "time" else f"{value:.3f}"
        else:
            out[key] = value
    return out
