"""Experiment trackers: TensorBoard, MLflow, Weights & Biases, fed by the run's logger (runlog.writer.RunLogger).

One module per tracker; each is a small class with the same methods (`start`, `log_epoch`, `log_steps`,
`log_event`, `finish`). `open_trackers` picks them from the config (`log.trackers`), and `TrackerSet`
fans each call out so that a tracker that fails mid-run (server gone, disk full) prints one warning and is
dropped, while training and the run dir's own files carry on. Only rank 0 makes a RunLogger, so only rank 0
logs. The libraries are imported only when their tracker is chosen.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from trainlab.config import TRACKERS
from trainlab.errors import ConfigError

KNOWN = TRACKERS
# The package each tracker needs and the extra that installs it.
PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "trainlab[mlflow]"),
            "wandb": ("wandb", "trainlab[wandb]")}  # fmt: skip


def chosen(cfg: Any) -> list[str]:
    """The trackers a run uses. `log.trackers` lists them; the older switch `run.tensorboard=false` still
    turns TensorBoard off (it is on only when listed AND run.tensorboard is true), so configs written before
    `log.trackers` existed keep doing what they did."""
    names = [str(n).strip().lower() for n in (cfg.log.trackers or [])]
    if not cfg.run.tensorboard:
        names = [n for n in names if n != "tensorboard"]
    return list(dict.fromkeys(names))  # in order, once each


def _require(name: str) -> None:
    package, extra = PACKAGES[name]
    if importlib.util.find_spec(package) is None:
        raise ConfigError(f"log.trackers={name} needs the {package} package; pip install '{extra}' or drop it")


def default_mlflow_uri(run_dir: Path) -> str:
    """An embedded store beside the runs (no server): runs/<name> logs to runs/mlflow.db, so every run under
    runs/ lands in one MLflow experiment. MLflow 3 keeps its plain-folder store only behind an opt-out flag,
    so the embedded default is its SQLite store; artifacts go to runs/mlartifacts/."""
    return "sqlite:///" + str(Path(run_dir).resolve().parent / "mlflow.db")


class TrackerSet:
    """The run's trackers behind one call each. A tracker that raises is reported once (console and
    events.jsonl, through `on_failure`) and dropped; the others and the run go on.

    It is one of the run's callbacks (train/callbacks.py): rank 0's run installs it first, so every epoch row,
    logged step and event reaches the trackers right after the run dir has it, through the same hooks a
    user's callback gets; the run's end (on_train_end) finishes their runs."""

    def __init__(self, trackers: list[Any], on_failure: Optional[Callable[[str, str], None]] = None):
        self.trackers = list(trackers)
        self.opened = list(trackers)  # a failed tracker keeps its run id: a resume may reach it again
        self.on_failure = on_failure

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def _each(self, method: str, *args: Any) -> None:
        for tracker in list(self.trackers):
            try:
                getattr(tracker, method)(*args)
            except Exception as exc:  # noqa: BLE001 — any tracker fault must not stop training
                self.trackers.remove(tracker)
                first_line = _root_cause(exc)
                message = (f"tracker {tracker.name} failed in {method} ({type(exc).__name__}: {first_line}); "
                           "training goes on without it, the run dir keeps everything")  # fmt: skip
                if self.on_failure is not None:
                    self.on_failure(tracker.name, message)
                else:
                    print(f"WARNING: {message}", file=sys.stderr, flush=True)
                try:
                    tracker.abandon()
                except Exception:  # noqa: BLE001 — it already failed; releasing is best effort
                    pass

    def start(self) -> None:
        self._each("start")

    def log_epoch(self, row: dict) -> None:
        self._each("log_epoch", row)

    def log_step(self, record: dict) -> None:
        self._each("log_step", record)

    def log_event(self, event: dict) -> None:
        self._each("log_event", event)

    def flush(self) -> None:
        self._each("flush")

    def finish(self, status: str, summary: dict) -> None:
        """Ends each tracker's run (status finished / stopped / failed) after uploading the files."""
        # The report is drawn when the run ends for good (a stop is followed by a resume that draws it).
        uploading = any(t.uploads for t in self.trackers) and status != "stopped"
        if uploading and Path(summary.get("run_dir", "")).is_dir():
            try:  # the report is one of the uploaded files; without it the others still go
                write_report(Path(summary["run_dir"]))
            except Exception as exc:  # noqa: BLE001
                print(f"WARNING: report for the trackers not written ({type(exc).__name__}: {exc})",
                      file=sys.stderr, flush=True)  # fmt: skip
        self._each("finish", status, summary)
        self.trackers = []

    # -- the run's hooks ------------------------------------------------------------
    def on_log(self, run: Any, record: dict) -> None:
        self.log_step(record)

    def on_epoch_end(self, run: Any, row: dict) -> None:
        from trainlab.runlog.writer import csv_row

        self.log_epoch({k: float(v) for k, v in csv_row(row).items() if v != ""})  # as metrics.csv holds them

    def on_event(self, run: Any, event: dict) -> None:
        if event.get("kind") != "tracker_failed":  # the failure of a tracker is said by the run dir, not to it
            self.log_event(event)

    def on_train_end(self, run: Any, summary: dict) -> None:
        self.flush()
        if summary.get("status") in ("finished", "stopped", "failed"):
            self.finish(summary["status"], summary)

    def ids(self) -> dict:
        """What a checkpoint keeps so that a resume continues the same tracker runs: {name: run id}."""
        return {t.name: t.run_id for t in self.opened if getattr(t, "run_id", None)}


def _root_cause(exc: BaseException) -> str:
    """The innermost error's first line: a store's wrapper exceptions (SQLAlchemy notes, HTTP retries) say
    less than what they wrap (e.g. 'database or disk is full')."""
    seen = [exc]
    while (inner := seen[-1].__cause__ or seen[-1].__context__) is not None and inner not in seen:
        seen.append(inner)
    for error in reversed(seen):
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        if lines:
            return lines[0][:300]
    return type(exc).__name__


def open_trackers(cfg: Any, run_dir: Path, resume_ids: Optional[dict] = None,
                  on_failure: Optional[Callable[[str, str], None]] = None) -> TrackerSet:  # fmt: skip
    """The trackers `cfg` chooses for `run_dir`, not started yet (the run starts them); `resume_ids` (from
    the checkpoint) continues their runs. A missing package is a config error, raised here before the run dir
    is written; a tracker that cannot start (server unreachable) is a warning, like a failure mid-run."""
    names = chosen(cfg)
    for name in names:
        _require(name)
    from omegaconf import OmegaConf

    params = OmegaConf.to_container(cfg, resolve=True)
    resume_ids = dict(resume_ids or {})
    trackers = []
    for name in names:
        if name == "tensorboard":
            from trainlab.runlog.trackers.tensorboard import TensorBoardTracker

            trackers.append(TensorBoardTracker(run_dir))
        elif name == "mlflow":
            from trainlab.runlog.trackers.mlflow import MLflowTracker

            trackers.append(MLflowTracker(run_dir, cfg.log, params, resume_ids.get("mlflow")))
        elif name == "wandb":
            from trainlab.runlog.trackers.wandb import WandbTracker

            trackers.append(WandbTracker(run_dir, cfg.log, params, resume_ids.get("wandb")))
    return TrackerSet(trackers, on_failure)


def flatten(values: dict, prefix: str = "") -> dict[str, Any]:
    """{'optim': {'lr': 0.1}} -> {'optim.lr': 0.1}: the config as tracker params."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def upload_files(run_dir: Path, upload_checkpoints: bool) -> list[Path]:
    """The files a tracker keeps as artifacts: summary.json, metrics.csv, the report, and (when
    log.upload_checkpoints is on and the caller says so: only once the run finished, so a stop and resume
    does not leave an earlier best beside the final one) the best checkpoint(s)."""
    run_dir = Path(run_dir)
    files = [run_dir / name for name in ("summary.json", "metrics.csv", "events.jsonl", "report.html")]
    if upload_checkpoints:
        files += sorted((run_dir / "checkpoints").glob("epoch=*.pt"))
    return [f for f in files if f.is_file()]


def write_report(run_dir: Path) -> None:
    """The run's HTML report, so trackers can keep it as an artifact (same as `trainlab report RUN_DIR`)."""
    from trainlab.report import write_report as write

    write([run_dir])
