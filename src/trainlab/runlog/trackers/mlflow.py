"""MLflow: the config as params, metrics.csv per epoch, step records per logged step, events as tags,
summary / metrics / report (and optionally the best checkpoint) as artifacts.

Talks to the store through `MlflowClient` with an explicit run id (no fluent "active run" global), so a
resume reattaches to the same run by its id. Step records are buffered and sent in batches (one
`log_batch` per epoch and at the end): a server round trip per step would slow training down.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Optional

from trainlab.runlog.trackers import default_mlflow_uri, flatten, upload_files

STATUS = {"finished": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}
_BATCH = 1000  # MLflow's limit of metrics per log_batch call


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


class MLflowTracker:
    name = "mlflow"
    uploads = True

    def __init__(self, run_dir: Path, log_cfg: Any, params: dict, resume_id: Optional[str]):
        self.run_dir = Path(run_dir)
        self.uri = log_cfg.mlflow_uri or default_mlflow_uri(self.run_dir)
        self.experiment = str(log_cfg.experiment)
        self.upload_checkpoints = bool(log_cfg.upload_checkpoints)
        self.params = {k: ("" if v is None else str(v)) for k, v in flatten(params).items()}
        self.run_id: Optional[str] = resume_id
        self._pending: list[Any] = []
        self._client: Any = None

    def start(self) -> None:
        from mlflow.tracking import MlflowClient

        for noisy in ("mlflow", "alembic"):  # schema-migration and store INFO lines are not the run's business
            logging.getLogger(noisy).setLevel(logging.WARNING)

        if self.uri.startswith("sqlite:///"):
            Path(self.uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        self._client = MlflowClient(tracking_uri=self.uri)
        if self.run_id is not None:  # a resume: the same run goes on
            self._client.update_run(self.run_id, status="RUNNING")
            self._log_params(resumed=True)
            return
        experiment = self._client.get_experiment_by_name(self.experiment)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            artifacts = None
            if self.uri.startswith("sqlite:///"):  # embedded store: artifacts beside it, not in the cwd
                artifacts = (Path(self.uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
            experiment_id = self._client.create_experiment(self.experiment, artifact_location=artifacts)
        run = self._client.create_run(experiment_id, run_name=self.run_dir.name,
                                      tags={"trainlab.run_dir": str(self.run_dir.resolve())})  # fmt: skip
        self.run_id = run.info.run_id
        self._log_params(resumed=False)

    def _log_params(self, resumed: bool) -> None:
        """Params cannot change in MLflow. On a resume, keys that changed (those a resume allows, e.g.
        train.epochs) are kept as tags `resumed.<key>` with the new value."""
        from mlflow.entities import Param, RunTag

        params, tags = dict(self.params), []
        if resumed:
            logged = self._client.get_run(self.run_id).data.params
            tags = [RunTag(f"resumed.{k}", v) for k, v in params.items() if k in logged and logged[k] != v]
            params = {k: v for k, v in params.items() if k not in logged}
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, max(len(items), 1), 100):  # MLflow takes at most 100 params per batch
            self._client.log_batch(self.run_id, params=items[i:i + 100], tags=tags if i == 0 else [])

    def log_epoch(self, row: dict) -> None:
        from mlflow.entities import Metric

        self.flush()  # the steps before this epoch's end first, in order
        epoch = int(row["epoch"])
        stamp = int((row.get("time") or 0) * 1000)
        metrics = [Metric(key, value, stamp, epoch) for key, value in row.items() if value is not None]
        self._client.log_batch(self.run_id, metrics=metrics)

    def log_step(self, record: dict) -> None:
        from mlflow.entities import Metric

        if "step" not in record:
            return
        stamp = int(record.get("time", 0) * 1000)
        for key, value in record.items():
            if key in ("step", "epoch", "time"):
                continue
            number = _number(value)
            if number is not None:
                self._pending.append(Metric(f"step/{key}", number, stamp, int(record["step"])))
        if len(self._pending) >= 20 * _BATCH:
            self.flush()

    def log_event(self, event: dict) -> None:
        kind = str(event.get("kind", "event"))
        step = event.get("step") or 0
        text = f"{event.get('severity', '')}: {event.get('message', '')} (epoch {event.get('epoch', '')})"
        self._client.set_tag(self.run_id, f"event.{int(step):08d}.{kind}", text[:5000])

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        for i in range(0, len(pending), _BATCH):
            self._client.log_batch(self.run_id, metrics=pending[i:i + _BATCH])

    def finish(self, status: str, summary: dict) -> None:
        self.flush()
        for path in upload_files(self.run_dir, self.upload_checkpoints and status == "finished"):
            folder = "checkpoints" if path.suffix == ".pt" else None
            self._client.log_artifact(self.run_id, str(path), artifact_path=folder)
        report_files = self.run_dir / "report_files"
        if report_files.is_dir():
            self._client.log_artifacts(self.run_id, str(report_files), artifact_path="report_files")
        self._client.set_terminated(self.run_id, STATUS.get(status, "FINISHED"))

    def abandon(self) -> None:
        self._pending = []
