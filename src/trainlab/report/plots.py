"""The report's plots as PNG bytes (matplotlib's Agg canvas directly: no pyplot, no display, no global state).

Every plot has the same pixel size (WIDTH x HEIGHT) so pages line up and tests can check it.
Step-level data (steps.jsonl) is placed on the epoch axis by the run's steps per epoch, so it overlays
the per-epoch curves; the monitor's events are drawn as vertical lines labelled with their kind.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

from matplotlib import rc_context
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from trainlab.report.read import Run
from trainlab.report.text import WIDE_RANGE, printable  # printable: no control characters in a label

DPI = 100
WIDTH, HEIGHT = 900, 360  # pixels
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f"]
SEVERITY_COLORS = {"info": "#888888", "warning": "#e67e22", "critical": "#c0392b"}
MAX_EVENT_LABELS = 12
SPLIT_COLORS = {"data": "#e67e22", "compute": "#2e86c1", "other": "#aab7b8"}


@dataclass
class Plot:
    name: str  # file stem: loss, accuracy, ...
    title: str
    png: bytes


def _new_figure() -> tuple[Figure, Axes]:
    fig = Figure(figsize=(WIDTH / DPI, HEIGHT / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    return fig, ax


def _png(fig: Figure) -> bytes:
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=DPI)  # no bbox_inches: keep the exact pixel size
    return out.getvalue()


def _label(run: Run, many: bool, what: str) -> str:
    return what  # with several runs the legend is split into colours (runs) and styles (series): _finish


def _step_x(run: Run, step: float) -> float:
    x = run.step_to_epoch(step)
    return x if x is not None else step


def _mark_events(ax: Axes, runs: list[Run], label: bool = True) -> None:
    labelled = 0
    seen: set[tuple[str, int]] = set()
    for run in runs:
        for event in run.events:
            x = run.event_x(event)
            if x is None:
                continue
            severity = str(event.get("severity", "warning"))
            color = SEVERITY_COLORS.get(severity, "#e67e22")
            ax.axvline(x, color=color, linestyle="--", linewidth=0.9, alpha=0.8)
            kind = printable(event.get("kind", "?"))
            key = (kind, round(x * 4))  # one label per kind per quarter epoch: no pile of text
            if label and labelled < MAX_EVENT_LABELS and key not in seen:
                seen.add(key)
                labelled += 1
                ax.annotate(
                    kind, xy=(x, 1.0), xycoords=("data", "axes fraction"), xytext=(2, -2),
                    textcoords="offset points", rotation=90, va="top", ha="left", fontsize=7, color=color,
                )


def _finish(ax: Axes, title: str, xlabel: str, ylabel: str, runs: Optional[list[Run]] = None) -> None:
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if runs and len(runs) > 1 and handles:
        # one entry per run (its colour) and one per series (its line style), not runs x series
        styles: dict[str, Line2D] = {}
        for handle, label in zip(handles, labels):
            if label not in styles and isinstance(handle, Line2D):
                styles[label] = Line2D([], [], color="#333333", linestyle=handle.get_linestyle(),
                                       marker=handle.get_marker(), markersize=3, alpha=handle.get_alpha())
        proxies = [Line2D([], [], color=COLORS[i % len(COLORS)], linewidth=3) for i in range(len(runs))]
        handles = proxies + list(styles.values())
        labels = [printable(run.name) for run in runs] + list(styles)
    if handles:
        ax.legend(handles, labels, fontsize=7.5, loc="best", ncol=2 if len(handles) > 4 else 1, framealpha=0.8)


def _log_scale_if_wide(ax: Axes, values: list[float]) -> None:
    """A diverging run's loss would flatten every other curve: use a log axis when the range is wide."""
    positive = [v for v in values if v > 0]
    if positive and max(positive) / min(positive) > WIDE_RANGE:
        ax.set_yscale("log")


def _epoch_axis_label(runs: list[Run]) -> str:
    return "epoch" if all(run.steps_per_epoch() for run in runs if run.steps) else "epoch (step before the first ends)"


def loss_plot(runs: list[Run]) -> bytes:
    fig, ax = _new_figure()
    many = len(runs) > 1
    for i, run in enumerate(runs):
        color = COLORS[i % len(COLORS)]
        step_pts = [(_step_x(run, s["step"]), s["loss"]) for s in run.steps if _has(s, "step", "loss")]
        if step_pts:
            ax.plot(*zip(*step_pts), color=color, alpha=0.3, linewidth=0.8)
        for column, style, what in (("train_loss", "-", "train"), ("val_loss", "--", "val")):
            pts = run.column(column)
            if pts:
                ax.plot(*zip(*pts), style, marker="o", markersize=3, color=color, label=_label(run, many, what))
    _log_scale_if_wide(ax, [v for run in runs for c in ("train_loss", "val_loss") for v in run.values_of(c)])
    _mark_events(ax, runs)
    title = "Loss (thin: logged steps)" if any(run.steps for run in runs) else "Loss"
    _finish(ax, title, _epoch_axis_label(runs), "loss", runs)
    return _png(fig)


def accuracy_plot(runs: list[Run]) -> bytes:
    fig, ax = _new_figure()
    many = len(runs) > 1
    for i, run in enumerate(runs):
        color = COLORS[i % len(COLORS)]
        for column, style, what in (("train_acc1", ":", "train top-1"), ("val_acc1", "-", "val top-1"),
                                    ("val_acc5", "--", "val top-5")):
            pts = run.column(column)
            if pts:
                ax.plot(*zip(*pts), style, marker="o", markersize=3, color=color, label=_label(run, many, what))
    _mark_events(ax, runs)
    _finish(ax, "Accuracy", "epoch", "accuracy (%)", runs)
    return _png(fig)


def lr_plot(runs: list[Run]) -> bytes:
    fig, ax = _new_figure()
    many = len(runs) > 1
    for i, run in enumerate(runs):
        color = COLORS[i % len(COLORS)]
        step_pts = [(_step_x(run, s["step"]), s["lr"]) for s in run.steps if _has(s, "step", "lr")]
        pts = step_pts or [(float(e), v) for e, v in run.column("lr")]
        if pts:
            ax.plot(*zip(*pts), color=color, label=_label(run, many, "lr"))
    _mark_events(ax, runs, label=False)
    _finish(ax, "Learning rate", _epoch_axis_label(runs), "lr", runs)
    return _png(fig)


def time_split_plot(runs: list[Run]) -> bytes:
    """Stacked bars data / compute / other: per epoch for one run, per run (mean epoch) for several."""
    fig, ax = _new_figure()
    if len(runs) == 1:
        run = runs[0]
        rows = [r for r in run.metrics if r.get("epoch_time_s") is not None]
        labels = [str(r["epoch"]) for r in rows]
        parts = {
            "data": [r.get("data_time_s") or 0.0 for r in rows],
            "compute": [r.get("train_time_s") or 0.0 for r in rows],
            "other": [r.get("other_time_s") or 0.0 for r in rows],
        }
        xlabel = "epoch"
    else:
        labels, parts = [], {"data": [], "compute": [], "other": []}
        for run in runs:
            rows = [r for r in run.metrics if r.get("epoch_time_s") is not None]
            labels.append(printable(run.name))
            for part, column in (("data", "data_time_s"), ("compute", "train_time_s"), ("other", "other_time_s")):
                values = [r.get(column) or 0.0 for r in rows]
                parts[part].append(sum(values) / len(values) if values else 0.0)
        xlabel = "run (mean per epoch)"
    positions = list(range(len(labels)))
    bottom = [0.0] * len(labels)
    for part, values in parts.items():
        ax.bar(positions, values, bottom=bottom, color=SPLIT_COLORS[part], label=part, width=0.7)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_xticks(positions)
    ax.set_xticklabels(labels, rotation=20 if len(runs) > 1 else 0, ha="right" if len(runs) > 1 else "center",
                       fontsize=8)
    _finish(ax, "Training time per epoch: data / compute / other", xlabel, "seconds")
    return _png(fig)


def throughput_plot(runs: list[Run]) -> bytes:
    fig, ax = _new_figure()
    many = len(runs) > 1
    for i, run in enumerate(runs):
        color = COLORS[i % len(COLORS)]
        step_pts = [(_step_x(run, s["step"]), s["images_per_s"]) for s in run.steps if _has(s, "step", "images_per_s")]
        if step_pts:
            ax.plot(*zip(*step_pts), color=color, alpha=0.5, linewidth=0.9, label=_label(run, many, "logged steps"))
        pts = run.column("images_per_s")
        if pts:
            ax.plot(*zip(*pts), "o-", color=color, markersize=4, label=_label(run, many, "epoch"))
    _mark_events(ax, runs)
    _finish(ax, "Throughput (training images/s)", _epoch_axis_label(runs), "images/s", runs)
    return _png(fig)


def memory_plot(runs: list[Run]) -> bytes:
    """Memory over wall time: host RSS, and device allocated/reserved on a GPU."""
    fig, ax = _new_figure()
    many = len(runs) > 1
    for i, run in enumerate(runs):
        color = COLORS[i % len(COLORS)]
        timed = [s for s in run.steps if isinstance(s.get("time"), (int, float))]
        t0 = timed[0]["time"] if timed else None
        for field, style, what in (("rss_mb", "-", "RSS"), ("gpu_alloc_mb", "--", "GPU allocated"),
                                   ("gpu_reserved_mb", ":", "GPU reserved")):
            pts = [((s["time"] - t0) / 60, s[field]) for s in timed if isinstance(s.get(field), (int, float))]
            if pts:
                ax.plot(*zip(*pts), style, color=color, label=_label(run, many, what))
        if t0 is None:  # no step log: fall back to the per-epoch figures
            pts = run.column("peak_mem_mb")
            if pts:
                ax.plot(*zip(*pts), "o-", color=color, label=_label(run, many, "peak (per epoch)"))
        else:
            for event in run.events:
                if event.get("kind") == "memory_leak" and isinstance(event.get("time"), (int, float)):
                    ax.axvline((event["time"] - t0) / 60, color=SEVERITY_COLORS["warning"], linestyle="--")
    has_steps = any(run.steps for run in runs)
    _finish(ax, "Memory", "minutes since first logged step" if has_steps else "epoch", "MB", runs)
    return _png(fig)


def _has(record: dict, *keys: str) -> bool:
    return all(isinstance(record.get(k), (int, float)) for k in keys)


PLOTS: list[tuple[str, str, Callable[[list[Run]], bytes]]] = [
    ("loss", "Loss", loss_plot),
    ("accuracy", "Accuracy", accuracy_plot),
    ("lr", "Learning rate", lr_plot),
    ("time", "Time per epoch", time_split_plot),
    ("throughput", "Throughput", throughput_plot),
    ("memory", "Memory", memory_plot),
]


def make_plots(runs: list[Run]) -> list[Plot]:
    # Run names and event kinds come from files people edit; with math parsing on, matplotlib reads "$...$" in
    # a label as TeX and raises on what is not (a run named "lr$5" or "$\\frac$" broke the report).
    with rc_context({"text.parse_math": False}):
        return [Plot(name, title, draw(runs)) for name, title, draw in PLOTS]
