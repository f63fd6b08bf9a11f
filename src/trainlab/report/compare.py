"""The comparison table: one row of figures per run, shared by `sweep` (sweep.md/.csv), `report` and `--text`."""

from __future__ import annotations

import csv
import io
from statistics import mean
from typing import Any, Optional

from trainlab.report.read import Run

# (key, header, format) for every figure; the varied settings come first, before these.
COLUMNS: list[tuple[str, str, str]] = [
    ("status", "status", "s"),
    ("epochs", "epochs", "s"),
    ("final_val_acc1", "val top-1 %", ".2f"),
    ("best_val_acc1", "best top-1 %", ".2f"),
    ("final_val_acc5", "val top-5 %", ".2f"),
    ("final_train_loss", "train loss", ".4f"),
    ("final_val_loss", "val loss", ".4f"),
    ("data_s", "data s/ep", ".2f"),
    ("compute_s", "compute s/ep", ".2f"),
    ("epoch_s", "epoch s", ".2f"),
    ("first_epoch_s", "1st epoch s", ".2f"),
    ("later_epoch_s", "later ep s", ".2f"),
    ("images_per_s", "img/s", ".0f"),
    ("peak_mem_mb", "peak MB", ".0f"),
    ("warnings", "warnings", "s"),
]


def _last(values: list[float]) -> Optional[float]:
    return values[-1] if values else None


def _mean(values: list[float]) -> Optional[float]:
    return mean(values) if values else None


def run_figures(run: Run) -> dict[str, Any]:
    """The figures of one run. Times are per training epoch, means over the epochs done.

    `first_epoch_s` against `later_epoch_s` (mean of epochs 2..n) shows compile and cache warm-up;
    `images_per_s` is the mean over the later epochs when there are any, for the same reason.
    """
    epoch_times = run.values_of("epoch_time_s")
    throughput = run.values_of("images_per_s")
    peak = run.values_of("peak_mem_mb")
    warnings = run.warning_counts()
    planned = run.epochs_planned
    return {
        "status": run.status,
        "epochs": f"{run.epochs_done}/{planned}" if planned else str(run.epochs_done),
        "final_val_acc1": _last(run.values_of("val_acc1")),
        "best_val_acc1": run.best_val_acc1,
        "final_val_acc5": _last(run.values_of("val_acc5")),
        "final_train_loss": _last(run.values_of("train_loss")),
        "final_val_loss": _last(run.values_of("val_loss")),
        "data_s": _mean(run.values_of("data_time_s")),
        "compute_s": _mean(run.values_of("train_time_s")),
        "epoch_s": _mean(epoch_times),
        "first_epoch_s": epoch_times[0] if epoch_times else None,
        "later_epoch_s": _mean(epoch_times[1:]),
        "images_per_s": _mean(throughput[1:] or throughput),
        "peak_mem_mb": max(peak) if peak else None,
        "warnings": ", ".join(f"{kind} x{n}" for kind, n in sorted(warnings.items())),
    }


def format_cell(value: Any, fmt: str) -> str:
    if value is None or value == "":
        return "-" if fmt != "s" else ""
    if fmt == "s":
        return str(value)
    return format(value, fmt)


def varied_keys(runs: list[Run]) -> list[str]:
    keys: list[str] = []
    for run in runs:
        keys.extend(k for k in run.values if k not in keys)
    return keys


def table(runs: list[Run]) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted rows: run name, the varied settings, then COLUMNS."""
    keys = varied_keys(runs)
    headers = ["run", *keys, *(header for _, header, _ in COLUMNS)]
    rows = []
    for run in runs:
        figures = run_figures(run)
        rows.append(
            [run.name, *(str(run.values.get(k, "")) for k in keys)]
            + [format_cell(figures[key], fmt) for key, _, fmt in COLUMNS]
        )
    return headers, rows


def to_csv(runs: list[Run]) -> str:
    """Machine-readable: raw numbers (full precision), one column per figure, keys as headers."""
    keys = varied_keys(runs)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["run", *keys, *(key for key, _, _ in COLUMNS)])
    for run in runs:
        figures = run_figures(run)
        writer.writerow(
            [run.name, *(run.values.get(k, "") for k in keys)]
            + [_raw(figures[key]) for key, _, _ in COLUMNS]
        )
    return out.getvalue()


def _raw(value: Any) -> Any:
    if value is None:
        return ""
    return round(value, 6) if isinstance(value, float) else value  # means carry float noise (0.451000000003)


def to_markdown(headers: list[str], rows: list[list[str]]) -> str:
    def escape(cell: str) -> str:
        # '|' would split the cell; '<', '>', '&' would be markup where the page is rendered (inline HTML passes
        # through most Markdown renderers): a status or a run name from a run dir's files stays text.
        text = cell.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(escape(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(escape(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
