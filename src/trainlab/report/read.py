"""Load run directories (docs/run-dir.md) from disk only, never from a live process.

Every reader is tolerant: a run that is still writing may have a half-written last line, a run that
crashed early may lack files, and a person may have edited any file. What cannot be parsed, or holds a
value of the wrong kind (an `inf` epoch, a text accuracy, a config that is not a mapping), is skipped,
never raised, and `Run.skipped` says which file and line; so a report can always be drawn from whatever
is there, and every value past the readers has the type the renderers expect.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import yaml

from trainlab.errors import UsageError
from trainlab.state.lock import is_held

RUN_MARKERS = ("config.yaml", "summary.json", "metrics.csv", "error.txt")
SWEEP_FILE = "sweep.json"
ERROR_FILE = "error.txt"
TRIAL_FILE = "trial.json"  # a search trial's record (state, value, params, pruned_by), written by the sweep
STALE_AFTER_S = 600  # a "running" summary not updated for this long is shown as "running?"
# Columns trainlab writes as numbers (runlog writer's METRIC_COLUMNS and later additions): a row where one
# holds text is skipped. Other columns (a user's own) stay text when they are not numbers.
FLOAT_COLUMNS = (
    "train_loss", "train_acc1", "val_loss", "val_acc1", "val_acc5", "lr", "lr_min", "lr_max", "data_time_s", "train_time_s",
    "other_time_s", "epoch_time_s", "val_time_s", "images_per_s", "peak_mem_mb", "rss_mb", "time",
    "ema_val_acc1", "ema_val_loss", "batches",
)  # fmt: skip
MAX_EPOCH = 10**7  # an epoch (or a step's epoch) beyond this is no run's: a typo or an edit
# summary.json keys the renderers read, and the types they need (a value of another type is left out)
SUMMARY_TYPES: dict[str, tuple[type, ...]] = {
    "status": (str,), "epochs": (int,), "epochs_done": (int,), "best_val_acc1": (int, float),
    "best_epoch": (int,), "best_weights": (str,), "final": (dict,), "events": (dict,), "watch": (dict,),
    "model": (str,), "params": (int,), "data": (str,), "device": (str,), "precision": (str,),
    "world_size": (int,), "global_batch": (int,), "started": (str, int, float), "updated": (str, int, float),
    "wall_time_s": (int, float), "error": (str,), "run_dir": (str,),
}  # fmt: skip
MAX_SKIP_NOTES = 20  # per run: a file of bad lines says so once, not a thousand times


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
    skipped: list[str] = field(default_factory=list)  # "FILE line N: why" for what the readers left out
    # Whether a process holds the run dir's lock (trainlab.state.lock) when it was read; None for a run dir
    # without a lock file (from before locks), whose status is told by its summary's age instead.
    lock_held: Optional[bool] = None

    @property
    def status(self) -> str:
        status = str(self.summary.get("status") or "")
        if self.error is not None and status not in ("finished", "stopped", "failed"):
            return "failed"  # the process died without updating summary.json
        if status == "running" and self.lock_held is False:
            return "interrupted"  # its process ended without a last word (SIGKILL, OOM kill, power loss)
        return status or "started"

    def display_status(self, now: Optional[float] = None) -> str:
        """`status`; a run whose lock is held is running however long its epoch; for a run dir without a
        lock file, "running?" when its summary has not been touched for a while."""
        status = self.status
        if status != "running" or self.lock_held:
            return status
        updated = parse_time(self.summary.get("updated"))
        now = time.time() if now is None else now
        if updated is None or now - updated > STALE_AFTER_S:
            return "running?"
        return status

    def column(self, name: str) -> list[tuple[int, float]]:
        """(epoch, value) for every metrics row where `name` has a value."""
        return [(row["epoch"], row[name]) for row in self.metrics if isinstance(row.get(name), (int, float))]

    def values_of(self, name: str) -> list[float]:
        return [value for _, value in self.column(name)]

    @property
    def epochs_planned(self) -> Optional[int]:
        planned = self.summary.get("epochs")
        if planned is None:
            planned = _whole(self.config.get("train", {}).get("epochs"), low=1)
        return planned if planned is not None and planned <= MAX_EPOCH else None

    @property
    def epochs_done(self) -> int:
        done = self.summary.get("epochs_done")
        if isinstance(done, int) and 0 <= done <= MAX_EPOCH:
            return max(done, len(self.metrics))
        return len(self.metrics)

    @property
    def best_val_acc1(self) -> Optional[float]:
        best = self.summary.get("best_val_acc1")
        if isinstance(best, (int, float)):
            return float(best)
        accs = [a for a in self.values_of("val_acc1") if math.isfinite(a)]
        return max(accs) if accs else None

    def steps_per_epoch(self) -> Optional[float]:
        """Optimizer steps per epoch, from the last complete epoch (None before the first ends)."""
        for row in reversed(self.metrics):
            if row.get("step") and row.get("epoch"):  # whole numbers: read_metrics checked them
                return row["step"] / row["epoch"]
        return None

    def step_to_epoch(self, step: float) -> Optional[float]:
        """Fractional epoch position of a step, so step-level data lines up with per-epoch curves."""
        per_epoch = self.steps_per_epoch()
        return step / per_epoch if per_epoch else None

    def event_x(self, event: dict) -> Optional[float]:
        """Where an event goes on an epoch axis: its step if known, else the end of its epoch."""
        step = event.get("step")
        if isinstance(step, (int, float)):  # whole numbers or absent: read_jsonl checked them
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
            return {str(k): v for k, v in by_kind.items() if k not in informational and v}  # ints: read_summary
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


class _Notes:
    """Where the readers say what they skipped: "FILE line N: why", at most MAX_SKIP_NOTES per run."""

    def __init__(self, into: Optional[list[str]] = None) -> None:
        self.into = into if into is not None else []
        self.dropped = 0

    def add(self, path: Path, why: str, line: Optional[int] = None) -> None:
        if len(self.into) >= MAX_SKIP_NOTES:
            self.dropped += 1
            return
        where = f"{path} line {line}" if line is not None else str(path)
        self.into.append(f"{where}: {why}")

    def close(self) -> None:
        if self.dropped:
            self.into.append(f"... and {self.dropped} more skipped")
            self.dropped = 0


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _whole(value: Any, low: int = 0) -> Optional[int]:
    """A whole number in [low, MAX_EPOCH * 10**6] from a cell or a JSON value, else None (inf, nan, 2.5, text)."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if not math.isfinite(number) or not number.is_integer() or not low <= number <= MAX_EPOCH * 10**6:
        return None
    return int(number)


def _cell(cell: Optional[str]) -> Any:
    """A CSV cell: None when empty, a float when it is a number (inf and nan included: a diverged run writes
    them), else the text."""
    if cell is None or cell.strip() == "":
        return None
    try:
        return float(cell)
    except ValueError:
        return cell.strip()


def read_metrics(path: Path, skipped: Optional[list[str]] = None) -> list[dict[str, Any]]:
    notes = _Notes(skipped)
    text = _complete_text(path)
    if not text:
        return []
    reader = csv.DictReader(io.StringIO(text))
    by_epoch: dict[int, dict[str, Any]] = {}
    try:
        for raw in reader:
            line = reader.line_num
            if None in raw or any(v is None for v in raw.values()):
                notes.add(path, "wrong number of cells", line)  # a torn write, or an edit
                continue
            row = {key: _cell(value) for key, value in raw.items()}
            epoch, step = _whole(row.get("epoch"), low=1), row.get("step")
            if epoch is None or epoch > MAX_EPOCH:
                notes.add(path, f"epoch {_short(raw.get('epoch'))} is not a whole number from 1 to {MAX_EPOCH}", line)
                continue
            if step is not None and _whole(step) is None:
                notes.add(path, f"step {_short(raw.get('step'))} is not a whole number", line)
                continue
            text_cells = [k for k in FLOAT_COLUMNS if isinstance(row.get(k), str)]
            if text_cells:
                notes.add(path, f"{text_cells[0]} {_short(row[text_cells[0]])} is not a number", line)
                continue
            row["epoch"] = epoch
            row["step"] = _whole(step) if step is not None else None
            by_epoch[epoch] = row  # a resumed run may rewrite an epoch: the last row wins
    except csv.Error as exc:  # a NUL byte, an unterminated quote...
        notes.add(path, f"unreadable from here on ({exc})", reader.line_num)
    notes.close()
    return [by_epoch[e] for e in sorted(by_epoch)]


def read_jsonl(path: Path, skipped: Optional[list[str]] = None) -> list[dict[str, Any]]:
    """JSON objects, one a line. A record whose `step` or `epoch` is not a whole number is skipped; an event's
    `kind`, `severity` and `message` are made text."""
    notes = _Notes(skipped)
    records = []
    for number, line in enumerate(_complete_text(path).splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            notes.add(path, "not JSON", number)
            continue
        if not isinstance(record, dict):
            notes.add(path, f"not a JSON object ({type(record).__name__})", number)
            continue
        bad = next((k for k in ("step", "epoch") if record.get(k) is not None and _whole(record[k]) is None), None)
        if bad:
            notes.add(path, f"{bad} {_short(record[bad])} is not a whole number", number)
            continue
        for key in ("kind", "severity", "message"):
            if key in record and record[key] is not None and not isinstance(record[key], str):
                record[key] = json.dumps(record[key])
        records.append(record)
    notes.close()
    return records


def in_optimizer_steps(records: list[dict[str, Any]], grad_accum: int) -> list[dict[str, Any]]:
    """Every record's `step` in optimizer steps, as metrics.csv counts. A record without `micro_step` was
    written before trainlab counted one kind of step: its `step` counted micro-batches, so under
    accumulation it becomes micro_step and the step is the optimizer step that micro-batch belonged to
    (exact when an epoch's batches are a multiple of grad_accum, else within a step per epoch)."""
    if grad_accum <= 1:
        return records
    for record in records:
        step = _whole(record.get("step"))
        if "micro_step" not in record and step is not None:
            record["micro_step"], record["step"] = step, -(-step // grad_accum)
    return records


def read_json(path: Path, skipped: Optional[list[str]] = None) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON, or bytes that are not UTF-8
        _Notes(skipped).add(path, f"unreadable ({type(exc).__name__})")
        return {}
    if not isinstance(data, dict):
        _Notes(skipped).add(path, f"not a JSON object ({type(data).__name__})")
        return {}
    return data


def read_summary(path: Path, skipped: Optional[list[str]] = None) -> dict[str, Any]:
    """summary.json with every key the renderers read of the type they read it as; others left out."""
    notes = _Notes(skipped)
    data = read_json(path, notes.into)
    for key, types in SUMMARY_TYPES.items():
        value = data.get(key)
        if value is None:
            continue
        ok = isinstance(value, types) and not isinstance(value, bool)
        if ok and isinstance(value, float):
            ok = math.isfinite(value)
        if ok and key == "events":
            ok = all(isinstance(v, int) and not isinstance(v, bool) for v in value.values())
        if not ok:
            notes.add(path, f"{key} {_short(value)} left out (expected {' or '.join(t.__name__ for t in types)})")
            del data[key]
    notes.close()
    return data


def read_yaml(path: Path, skipped: Optional[list[str]] = None) -> dict[str, Any]:
    """A config: a mapping of sections, each a mapping. A file that is not one is left out, a section that is
    not one too (a hand edit that replaced `model:` by a number)."""
    notes = _Notes(skipped)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError, yaml.YAMLError) as exc:  # ValueError: bytes that are not UTF-8
        notes.add(path, f"unreadable ({type(exc).__name__})")
        return {}
    if data is None:
        return {}
    if not isinstance(data, dict):
        notes.add(path, f"not a mapping of sections ({type(data).__name__})")
        return {}
    config = {}
    for section, values in data.items():
        if isinstance(values, dict):
            config[str(section)] = {str(k): v for k, v in values.items()}
        else:
            notes.add(path, f"section {_short(section)} is not a mapping ({type(values).__name__}); left out")
    notes.close()
    return config


def parse_time(value: Any) -> Optional[float]:
    """Unix seconds from an ISO string or a number; None when absent or unreadable."""
    seconds: Optional[float] = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and value:
        try:
            seconds = datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except (ValueError, OverflowError, OSError):
            return None
    # a time the clock functions can print: from 1970 to the year 5000 (an edited 1e300 is none)
    return seconds if seconds is not None and math.isfinite(seconds) and 0 <= seconds < 9.5e10 else None


# ------------------------------------------------------------------ runs and sweeps


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and any((path / marker).is_file() for marker in RUN_MARKERS)


def is_sweep_dir(path: Path) -> bool:
    return (path / SWEEP_FILE).is_file()


def load_run(path: str | Path, name: Optional[str] = None, values: Optional[dict] = None) -> Run:
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"run directory not found: {path}")
    skipped: list[str] = []
    error_path = path / ERROR_FILE
    error = None
    if error_path.is_file():
        try:
            error = error_path.read_text(encoding="utf-8", errors="replace").strip()
        except OSError as exc:
            skipped.append(f"{error_path}: unreadable ({exc.strerror or exc})")
    config = read_yaml(path / "config.yaml", skipped)
    accum = _whole(config.get("train", {}).get("grad_accum"), low=1) or 1
    return Run(
        path=path,
        name=name or path.name,
        config=config,
        metrics=read_metrics(path / "metrics.csv", skipped),
        steps=in_optimizer_steps(read_jsonl(path / "steps.jsonl", skipped), accum),
        events=in_optimizer_steps(read_jsonl(path / "events.jsonl", skipped), accum),
        summary=read_summary(path / "summary.json", skipped),
        error=error,
        values={str(k): str(v) for k, v in (values or {}).items()},
        trial=read_json(path / TRIAL_FILE, skipped),
        skipped=skipped,
        lock_held=is_held(path),
    )


def read_sweep(path: Path) -> dict[str, Any]:
    return read_json(path / SWEEP_FILE)


def load_sweep(path: str | Path) -> list[Run]:
    """The runs of a sweep in grid order, each with its varied values (runs not started yet are left out).

    sweep.json is a file a person may edit: an entry that is not {"name": a folder inside the sweep, "values":
    a mapping} is left out."""
    path = Path(path)
    spec = read_sweep(path)
    entries = spec.get("runs")
    runs = []
    for entry in entries if isinstance(entries, list) else []:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
            continue  # not one folder of this sweep: never read from elsewhere
        values = entry.get("values")
        run_dir = path / name
        if run_dir.is_dir():
            runs.append(load_run(run_dir, name=name, values=values if isinstance(values, dict) else {}))
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
