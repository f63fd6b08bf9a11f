"""Load run directories (docs/run-dir.md) from disk only, never from a live process.

Every reader is tolerant: a run that is still writing may have a half-written last line, a run that
crashed early may lack files. What cannot be parsed is skipped, never raised, so a report can always
be drawn from whatever is there.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import yaml

from trainlab.errors import UsageError

RUN_MARKERS = ("config.yaml", "summary.json", "metrics.csv", "error.txt")
SWEEP_FILE = "sweep.json"
ERROR_FILE = "error.txt"
TRIAL_FILE = "trial.json"  # a search trial's record (state, value, params, pruned_by), written by the sweep
STALE_AFTER_S = 600  # a "running" summary not updated for this long is shown as "running?"
INT_COLUMNS = ("epoch", "step")


@dataclass
class Run:
    """Everything one run directory holds, parsed. Missing files give empty values."""

    path: Path
    name: str
    config: dict = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch, last write wins
    steps: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    error: Optional[str] = None  # error.txt written by a sweep when the run's process failed
    values: dict[str, str] = field(default_factory=dict)  # the varied settings when part of a sweep
    trial: dict[str, Any] = field(default_factory=dict)  # trial.json when the run is a search trial

    @property
    def status(self) -> str:
        status = str(self.summary.get("status") or "")
        if self.error is not None and status not in ("finished", "stopped", "failed"):
            return "failed"  # the process died without updating summary.json
        return status or "started"

    def display_status(self, now: Optional[float] = None) -> str:
        """`status`, with "running?" for a run whose summary has not been touched for a while."""
        status = self.status
        if status != "running":
            return status
        updated = parse_time(self.summary.get("updated"))
        now = time.time() if now is None else now
        if updated is None or now - updated > STALE_AFTER_S:
            return "running?"
        return status

    def column(self, name: str) -> list[tuple[int, float]]:
        """(epoch, value) for every metrics row where `name` has a value."""
        return [(int(row["epoch"]), row[name]) for row in self.metrics if row.get(name) is not None]

    def values_of(self, name: str) -> list[float]:
        return [value for _, value in self.column(name)]

    @property
    def epochs_planned(self) -> Optional[int]:
        planned = self.summary.get("epochs")
        if planned is None:
            planned = self.config.get("train", {}).get("epochs") if isinstance(self.config.get("train"), dict) else None
        return int(planned) if isinstance(planned, (int, float)) else None

    @property
    def epochs_done(self) -> int:
        done = self.summary.get("epochs_done")
        if isinstance(done, (int, float)):
            return max(int(done), len(self.metrics))
        return len(self.metrics)

    @property
    def best_val_acc1(self) -> Optional[float]:
        best = self.summary.get("best_val_acc1")
        if isinstance(best, (int, float)):
            return float(best)
        accs = self.values_of("val_acc1")
        return max(accs) if accs else None

    def steps_per_epoch(self) -> Optional[float]:
        """Optimizer steps per epoch, from the last complete epoch (None before the first ends)."""
        for row in reversed(self.metrics):
            if row.get("step") and row.get("epoch"):
                return row["step"] / row["epoch"]
        return None

    def step_to_epoch(self, step: float) -> Optional[float]:
        """Fractional epoch position of a step, so step-level data lines up with per-epoch curves."""
        per_epoch = self.steps_per_epoch()
        return step / per_epoch if per_epoch else None

    def event_x(self, event: dict) -> Optional[float]:
        """Where an event goes on an epoch axis: its step if known, else the end of its epoch."""
        step = event.get("step")
        if isinstance(step, (int, float)):
            x = self.step_to_epoch(step)
            if x is not None:
                return x
        epoch = event.get("epoch")
        return float(epoch) if isinstance(epoch, (int, float)) else None

    def warning_counts(self) -> dict[str, int]:
        """The monitor's warnings (severity warning/critical) by kind; info events are left out."""
        if self.events:
            counts: dict[str, int] = {}
            for event in self.events:
                if event.get("severity", "warning") in ("warning", "critical"):
                    kind = str(event.get("kind", "?"))
                    counts[kind] = counts.get(kind, 0) + 1
            return counts
        by_kind = self.summary.get("events")
        if isinstance(by_kind, dict):  # no events.jsonl: fall back to the summary's counts
            informational = {"schedule", "resumed", "preempted"}
            return {str(k): int(v) for k, v in by_kind.items() if k not in informational and v}
        return {}


# ------------------------------------------------------------------ file readers


def _complete_text(path: Path) -> str:
    """The file's text without a trailing partial line (a writer may be mid-line)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    return text


def _number(cell: Optional[str], integer: bool = False) -> Any:
    if cell is None:
        return None
    cell = cell.strip()
    if cell == "":
        return None
    try:
        return int(float(cell)) if integer else float(cell)
    except ValueError:
        return cell  # a non-numeric column stays text


def read_metrics(path: Path) -> list[dict[str, Any]]:
    text = _complete_text(path)
    if not text:
        return []
    reader = csv.DictReader(io.StringIO(text))
    by_epoch: dict[int, dict[str, Any]] = {}
    for raw in reader:
        if None in raw or any(v is None for v in raw.values()):
            continue  # a row with too many or too few cells: torn write
        row = {key: _number(value, key in INT_COLUMNS) for key, value in raw.items()}
        if not isinstance(row.get("epoch"), int):
            continue
        by_epoch[row["epoch"]] = row  # a resumed run may rewrite an epoch: the last row wins
    return [by_epoch[e] for e in sorted(by_epoch)]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    for line in _complete_text(path).splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # ValueError: bad JSON, or bytes that are not UTF-8
        return {}
    return data if isinstance(data, dict) else {}


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):  # ValueError: bytes that are not UTF-8
        return {}
    return data if isinstance(data, dict) else {}


def parse_time(value: Any) -> Optional[float]:
    """Unix seconds from an ISO string or a number; None when absent or unreadable."""
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


# ------------------------------------------------------------------ runs and sweeps


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and any((path / marker).is_file() for marker in RUN_MARKERS)


def is_sweep_dir(path: Path) -> bool:
    return (path / SWEEP_FILE).is_file()


def load_run(path: str | Path, name: Optional[str] = None, values: Optional[dict] = None) -> Run:
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"run directory not found: {path}")
    error_path = path / ERROR_FILE
    error = None
    if error_path.is_file():
        error = error_path.read_text(encoding="utf-8", errors="replace").strip()
    return Run(
        path=path,
        name=name or path.name,
        config=read_yaml(path / "config.yaml"),
        metrics=read_metrics(path / "metrics.csv"),
        steps=read_jsonl(path / "steps.jsonl"),
        events=read_jsonl(path / "events.jsonl"),
        summary=read_json(path / "summary.json"),
        error=error,
        values=dict(values or {}),
        trial=read_json(path / TRIAL_FILE),
    )


def read_sweep(path: Path) -> dict[str, Any]:
    return read_json(path / SWEEP_FILE)


def load_sweep(path: str | Path) -> list[Run]:
    """The runs of a sweep in grid order, each with its varied values (runs not started yet are left out)."""
    path = Path(path)
    spec = read_sweep(path)
    runs = []
    for entry in spec.get("runs", []):
        run_dir = path / entry["name"]
        if run_dir.is_dir():
            runs.append(load_run(run_dir, name=entry["name"], values=entry.get("values", {})))
    return runs


def load_runs(paths: list[str | Path]) -> list[Run]:
    """Runs named on a command line: run directories, or sweep directories expanded to their runs."""
    runs: list[Run] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise UsageError(f"no such directory: {path}")
        if is_sweep_dir(path):
            sweep_runs = load_sweep(path)
            if not sweep_runs:
                raise UsageError(f"sweep {path} has no runs yet; start it with `trainlab sweep --dir {path} ...`")
            runs.extend(sweep_runs)
        elif is_run_dir(path):
            run = load_run(path)
            if not (run.config or run.metrics or run.summary or run.error):
                raise UsageError(
                    f"{path} has run files but none is readable (config.yaml, summary.json, metrics.csv); "
                    "point at a trainlab run directory"
                )
            runs.append(run)
        else:
            raise UsageError(
                f"{path} is not a run directory (no config.yaml or summary.json) nor a sweep (no sweep.json); "
                f"list the runs under it with `trainlab runs {path}`"
            )
    if len(runs) > 1 and not any(run.values for run in runs):
        differing = differing_config(runs)
        for run in runs:
            run.values = {key: _flat(run.config).get(key, "") for key in differing}
    return runs


def find_runs(root: str | Path) -> list[Path]:
    """Every run directory under `root` (recursively), sorted by path."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"no such directory: {root}")
    found = []
    for marker in ("config.yaml", "summary.json", ERROR_FILE):
        found.extend(p.parent for p in root.rglob(marker) if "checkpoints" not in p.parts)
    return sorted(set(found))


# ------------------------------------------------------------------ config comparison

IGNORED_KEYS = ("run.dir", "run.name")


def _flat(node: Any, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(node, dict):
        for key, value in node.items():
            out.update(_flat(value, f"{prefix}{key}."))
    else:
        out[prefix[:-1]] = str(node)
    return out


def flatten_config(config: dict) -> dict[str, str]:
    """`section.key` -> value as text."""
    return _flat(config)


def differing_config(runs: list[Run], limit: int = 6) -> list[str]:
    """Config keys whose values differ between the runs (what the comparison is about)."""
    flats = [_flat(run.config) for run in runs if run.config]
    if len(flats) < 2:
        return []
    keys = sorted(set().union(*flats))
    differing = [k for k in keys if k not in IGNORED_KEYS and len({f.get(k, "") for f in flats}) > 1]
    return differing[:limit]
