"""TensorBoard event files in RUN_DIR/tb: epoch metrics, step records and events (as text)."""

from __future__ import annotations

import math
from pathlib import Path

from trainlab.runlog.writer import METRIC_COLUMNS


def _finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class TensorBoardTracker:
    name = "tensorboard"
    run_id = None  # the event files live in the run dir: nothing to find again on resume
    uploads = False

    def __init__(self, run_dir: Path):
        self.log_dir = Path(run_dir) / "tb"
        self._writer = None

    def start(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(self.log_dir))

    def log_epoch(self, row: dict) -> None:
        epoch = int(row["epoch"])
        for key in (k for k in METRIC_COLUMNS[2:] if k != "time"):
            if _finite_number(row.get(key)):
                self._writer.add_scalar(f"epoch/{key}", row[key], epoch)
        self._writer.flush()

    def log_step(self, record: dict) -> None:
        if "step" not in record:
            return
        for key, value in record.items():
            if key not in ("step", "epoch", "time") and _finite_number(value):
                self._writer.add_scalar(f"step/{key}", value, record["step"])

    def log_event(self, event: dict) -> None:
        self._writer.add_text(f"events/{event.get('kind', 'event')}", str(event.get("message", "")),
                              event.get("step") or 0)  # fmt: skip

    def flush(self) -> None:
        self._writer.flush()

    def finish(self, status: str, summary: dict) -> None:
        self.abandon()

    def abandon(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
