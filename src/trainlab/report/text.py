"""Terminal output: aligned tables and text charts of the curves (for a shell without a browser)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Optional

from trainlab.report import compare
from trainlab.report.read import Run, flatten_config

GLYPHS = "*o+x#@%&"
# Control characters (C0, DEL, C1) and line/paragraph separators: text from a run dir's files (a status, a run
# name, an event) printed as is could move the cursor, retitle the terminal or hide lines.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(text: object, keep_newlines: bool = False) -> str:
    """`text` with every control character shown as '?' (newlines kept when asked)."""
    if keep_newlines:
        return "\n".join(_CONTROL.sub("?", line) for line in str(text).split("\n"))
    return _CONTROL.sub("?", str(text))


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell; numbers right-aligned, text left-aligned."""
    headers = [printable(h) for h in headers]
    rows = [[printable(c) for c in row] for row in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]

    def numeric(cell: str) -> bool:
        return cell.replace(".", "", 1).replace("-", "", 1).replace("/", "", 1).isdigit()

    def line(cells: list[str]) -> str:
        return "  ".join(
            (c.rjust(w) if numeric(c) else c.ljust(w)) for c, w in zip(cells, widths)
        ).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), sep, *(line(r) for r in rows)]) + "\n"


def _nice(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}".rstrip("0").rstrip(".")
    return f"{value:.3g}"


WIDE_RANGE = 30  # largest / smallest value beyond which a chart's y axis is logarithmic


def wants_log_scale(values: list[float]) -> bool:
    """One exploded value (a diverging loss) flattens every other point on a linear axis: a log axis when the
    finite values are all positive and span more than WIDE_RANGE times."""
    finite = [v for v in values if math.isfinite(v)]
    return bool(finite) and min(finite) > 0 and max(finite) / min(finite) > WIDE_RANGE


def text_chart(
    title: str,
    series: dict[str, list[tuple[float, float]]],
    marks: Optional[list[tuple[float, str]]] = None,
    width: int = 64,
    height: int = 12,
    x_label: str = "epoch",
) -> str:
    """A scatter/line chart in plain text: one glyph per series, event marks (^) under the x axis. The y axis
    is logarithmic when the values span a wide range (wants_log_scale); the title then says so."""
    points = [(x, y) for pts in series.values() for x, y in pts if math.isfinite(y)]
    if not points:
        return f"{title}\n  (no data yet)\n"
    log = wants_log_scale([y for _, y in points])
    scale: Callable[[float], float] = math.log10 if log else (lambda y: y)
    unscale: Callable[[float], float] = (lambda v: 10.0**v) if log else (lambda v: v)
    series = {label: [(x, scale(y)) for x, y in pts if math.isfinite(y)] for label, pts in series.items()}
    if log:
        title += " (log scale)"
    xs, ys = [p[0] for p in points], [scale(p[1]) for p in points]
    x_lo, x_hi = min(xs), max(xs)
    y_lo, y_hi = min(ys), max(ys)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    if y_hi == y_lo:
        y_lo, y_hi = y_lo - abs(y_lo) * 0.1 - 1e-9, y_hi + abs(y_hi) * 0.1 + 1e-9

    def col(x: float) -> int:
        return round((x - x_lo) / (x_hi - x_lo) * (width - 1))

    def row(y: float) -> int:
        return round((y_hi - y) / (y_hi - y_lo) * (height - 1))

    grid = [[" "] * width for _ in range(height)]
    legend = []
    for glyph, (label, pts) in zip(GLYPHS, series.items()):
        legend.append(f"{glyph} {label}")
        finite = sorted((x, y) for x, y in pts if math.isfinite(y))
        # join consecutive points so a few epochs still read as a curve
        for (x0, y0), (x1, y1) in zip(finite, finite[1:]):
            steps = max(abs(col(x1) - col(x0)), 1)
            for i in range(1, steps):
                t = i / steps
                r, c = row(y0 + (y1 - y0) * t), col(x0 + (x1 - x0) * t)
                if grid[r][c] == " ":
                    grid[r][c] = "."
        for x, y in finite:
            grid[row(y)][col(x)] = glyph
        if finite:
            legend[-1] += f" (last {_nice(unscale(finite[-1][1]))})"

    labels = {0: _nice(unscale(y_hi)), height - 1: _nice(unscale(y_lo)),
              (height - 1) // 2: _nice(unscale((y_hi + y_lo) / 2))}  # fmt: skip
    label_w = max(len(v) for v in labels.values())
    lines = [title]
    legend = [printable(entry) for entry in legend]
    for r in range(height):
        lines.append(f"{labels.get(r, '').rjust(label_w)} |{''.join(grid[r])}|")
    lines.append(" " * label_w + " +" + "-" * width + ">")
    ticks = [" "] * (width + 8)
    for value in (x_lo, (x_lo + x_hi) / 2, x_hi):
        text = _nice(value)
        start = min(col(value), width + 8 - len(text))
        ticks[start : start + len(text)] = list(text)
    lines.append(" " * (label_w + 2) + "".join(ticks).rstrip() + f"  ({x_label})")
    if marks:
        under = [" "] * width
        kinds = []
        for x, kind in marks:
            if x_lo <= x <= x_hi:
                under[col(x)] = "^"
                if kind not in kinds:
                    kinds.append(kind)
        if kinds:
            lines.append(" " * (label_w + 2) + "".join(under).rstrip() + "  events: " + printable(", ".join(kinds)))
    lines.append(" " * (label_w + 2) + "   ".join(legend))
    return "\n".join(lines) + "\n"


def _series(runs: list[Run], column: str, suffix: str = "") -> dict[str, list[tuple[float, float]]]:
    many = len(runs) > 1
    out = {}
    for run in runs:
        pts = [(float(e), v) for e, v in run.column(column)]
        if pts:
            out[(f"{run.name} " if many else "") + suffix] = pts
    return out


def _marks(runs: list[Run]) -> list[tuple[float, str]]:
    marks = []
    for run in runs:
        for event in run.events:
            x = run.event_x(event)
            if x is not None and event.get("severity") != "info":
                marks.append((x, str(event.get("kind", "?"))))
    return marks


def render(runs: list[Run], width: int = 64) -> str:
    """The `--text` report: comparison/summary table, key settings, then charts of the curves."""
    headers, rows = compare.table(runs)
    parts = []
    if len(runs) == 1:
        run = runs[0]
        flat = flatten_config(run.config)
        keys = ("model.name", "data.name", "optim.name", "optim.lr", "data.batch_size", "train.epochs", "train.device")
        settings = "  ".join(f"{k}={flat[k]}" for k in keys if k in flat)
        parts.append(printable(f"run {run.path}  [{run.display_status()}]") + f"\n{printable(settings)}\n")
        parts.append(format_table(["figure", "value"], [[h, c] for h, c in zip(headers[1:], rows[0][1:]) if c]))
        if run.error:
            parts.append("error:\n" + "\n".join("  " + printable(ln) for ln in run.error.splitlines()[-5:]) + "\n")
    else:
        parts.append(format_table(headers, rows))
    marks = _marks(runs)
    charts = [
        ("Loss", {**_series(runs, "train_loss", "train"), **_series(runs, "val_loss", "val")}),
        ("Top-1 accuracy (%)", {**_series(runs, "train_acc1", "train"), **_series(runs, "val_acc1", "val")}),
        ("Top-5 accuracy (%)", _series(runs, "val_acc5", "val")),
        ("Learning rate", _series(runs, "lr", "lr")),
        ("Epoch time (s)", _series(runs, "epoch_time_s", "epoch")),
    ]
    for title, series in charts:
        if len(series) > len(GLYPHS):  # too many to tell apart: keep the first ones
            series = dict(list(series.items())[: len(GLYPHS)])
        if series:
            parts.append(text_chart(title, series, marks if title != "Learning rate" else None, width=width))
    return "\n".join(parts)
