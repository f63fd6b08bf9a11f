"""Weights & Biases: the same content as MLflow. The run's files go to RUN_DIR/wandb/; with
WANDB_MODE=offline nothing leaves the machine (`wandb sync RUN_DIR/wandb/offline-run-*` uploads later).

Epoch metrics are logged against the `epoch` axis and step records against the `step` axis (wandb's
`define_metric`), so its own internal counter, which restarts in a resumed process, decides nothing.
Events go to the history as `event/*` rows and their kinds to the run's tags.
"""

from __future__ import annotations

import math
import shutil
import uuid
from pathlib import Path
from typing import Any, Optional

from trainlab.runlog.trackers import upload_files

EXIT_CODE = {"finished": 0, "stopped": 143, "failed": 1}


class WandbTracker:
    name = "wandb"
    uploads = True

    def __init__(self, run_dir: Path, log_cfg: Any, params: dict, resume_id: Optional[str]):
        self.run_dir = Path(run_dir)
        self.project = str(log_cfg.experiment)
        self.upload_checkpoints = bool(log_cfg.upload_checkpoints)
        self.params = params
        self.run_id: Optional[str] = resume_id
        self._run: Any = None

    def start(self) -> None:
        import wandb

        self.run_dir.mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings(console="off", silent=True, disable_git=True, save_code=False,
                                  x_disable_stats=True)  # fmt: skip  — trainlab's watch already samples the system
        self._run = wandb.init(
            project=self.project, name=self.run_dir.name, dir=str(self.run_dir), config=self.params,
            id=self.run_id or uuid.uuid4().hex[:12], resume="allow", settings=settings,
        )  # fmt: skip
        self.run_id = self._run.id
        self._run.config.update(self.params, allow_val_change=True)  # a resume may change e.g. train.epochs
        self._run.define_metric("epoch")
        self._run.define_metric("epoch/*", step_metric="epoch")
        self._run.define_metric("step")
        self._run.define_metric("step/*", step_metric="step")
        self._run.define_metric("event/step")
        self._run.define_metric("event/*", step_metric="event/step")

    def log_epoch(self, row: dict) -> None:
        values = {f"epoch/{k}": v for k, v in row.items() if v is not None and k != "epoch"}
        self._run.log({"epoch": int(row["epoch"]), **values})

    def log_step(self, record: dict) -> None:
        if "step" not in record:
            return
        values = {f"step/{k}": v for k, v in record.items()
                  if k not in ("step", "epoch", "time") and isinstance(v, (int, float))
                  and not isinstance(v, bool) and math.isfinite(v)}  # fmt: skip
        self._run.log({"step": int(record["step"]), **values})

    def log_event(self, event: dict) -> None:
        kind = str(event.get("kind", "event"))
        self._run.log({"event/step": int(event.get("step") or 0), "event/kind": kind,
                       "event/severity": str(event.get("severity", "")),
                       "event/message": str(event.get("message", ""))})  # fmt: skip
        if kind not in self._run.tags:
            self._run.tags = (*self._run.tags, kind)

    def flush(self) -> None:
        pass  # wandb sends from its own process

    def finish(self, status: str, summary: dict) -> None:
        for key in ("status", "best_val_acc1", "best_epoch", "best_weights", "epochs_done", "wall_time_s"):
            if summary.get(key) is not None:
                self._run.summary[key] = summary[key]
        # Files in the wandb run's own folder are its files (uploaded at the end, or by `wandb sync`):
        # copies, so they are the run's state at this moment whatever happens to the run dir later.
        files_dir = Path(self._run.dir)
        report_files = self.run_dir / "report_files"
        extra = sorted(report_files.glob("*.png")) if report_files.is_dir() else []
        for path in [*upload_files(self.run_dir, self.upload_checkpoints and status == "finished"), *extra]:
            target = files_dir / path.relative_to(self.run_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        self._run.finish(exit_code=EXIT_CODE.get(status, 0))
        self._run = None

    def abandon(self) -> None:
        if self._run is not None:
            try:
                self._run.finish(exit_code=1)
            finally:
                self._run = None
