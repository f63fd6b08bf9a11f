"""What a run prints: a progress bar on a terminal, plain lines otherwise, nothing on non-zero ranks."""

from __future__ import annotations

import sys
from typing import Optional

from rich.console import Console as RichConsole
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class Console:
    def __init__(self, enabled: bool = True, progress: str = "auto"):
        self.enabled = enabled
        self.is_tty = sys.stdout.isatty()
        self.show_bar = enabled and (progress == "bar" or (progress == "auto" and self.is_tty))
        self.quiet = progress == "none"
        # highlight=False: numbers in plain log lines should not be recoloured.
        self._rich = RichConsole(highlight=False, soft_wrap=True) if self.is_tty else None
        self._progress: Optional[Progress] = None
        self._task = None
        self.bar_info = ""  # the bar's text after its counts: the running loss, from the watch's last read

    def print(self, text: str) -> None:
        if not self.enabled:
            return
        if self._rich is not None:
            self._rich.print(text, markup=False)
        else:
            print(text, flush=True)

    def info(self, text: str) -> None:
        self.print(text)

    def warn(self, text: str) -> None:
        if not self.enabled:
            return
        if self._rich is not None:
            self._rich.print(f"[bold yellow]⚠ {text}[/]", highlight=False)
        else:
            print(f"WARNING: {text}", file=sys.stderr, flush=True)

    def start_epoch(self, epoch: int, epochs: int, total: int, done: int = 0) -> None:
        if not self.show_bar:
            return
        self._progress = Progress(
            TextColumn(f"epoch {epoch}/{epochs}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
            console=self._rich, transient=True,
        )  # fmt: skip
        self._progress.start()
        self._task = self._progress.add_task("train", total=total, completed=done, info=self.bar_info)

    def advance(self) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=1, info=self.bar_info)

    def show_loss(self, loss: Optional[float]) -> None:
        """The running loss on the bar: the watch's mean over its last logged steps (read there, no sync here)."""
        if not self.show_bar or not isinstance(loss, (int, float)):
            return
        self.bar_info = f"loss {loss:.4f}"
        if self._progress is not None:
            self._progress.update(self._task, info=self.bar_info)

    def end_epoch(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def close(self) -> None:
        self.end_epoch()


def _fmt(value, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "-"


def epoch_block(row: dict, report: dict, epochs: int) -> str:
    """The end-of-epoch summary in seed 002's layout, plus one health line from the watch."""
    batches = row.get("batches") or 1
    ema = f" | EMA Top-1: {row['ema_val_acc1']:.2f}%" if row.get("ema_val_acc1") is not None else ""
    lines = [
        f"Epoch {row['epoch']}/{epochs}",
        f"- Loss: {_fmt(row['train_loss'], '.4f')}",
        f"- Accuracy (Top-1): {_fmt(row['train_acc1'], '.2f')}%",
        f"- Total Data Loading Time: {_fmt(row['data_time_s'], '.4f')}s",
        f"- Total Training Time: {_fmt(row['train_time_s'], '.4f')}s",
        f"- Average Training Time per Batch: {_fmt((row['train_time_s'] or 0) / batches, '.4f')}s",
        f"- Total Epoch Time: {_fmt(row['epoch_time_s'], '.4f')}s",
        f"- Val Loss: {_fmt(row['val_loss'], '.4f')} | Val Top-1: {_fmt(row['val_acc1'], '.2f')}% | "
        f"Val Top-5: {_fmt(row['val_acc5'], '.2f')}%" + ema,
        f"- Images/s: {_fmt(row['images_per_s'], '.1f')} | LR: {lr_text(row)}",
        health_line(report),
    ]
    return "\n".join(lines)


def lr_text(row: dict) -> str:
    """The LR the epoch trained at: one number, or first→last when it moved (and its extremes when the epoch
    went beyond those, e.g. a warmup then a decay)."""
    last, first = row.get("lr"), row.get("lr_first")
    low, high = row.get("lr_min"), row.get("lr_max")
    if not all(isinstance(v, (int, float)) for v in (last, first, low, high)):  # a row from an older run
        return _fmt(last, ".5g")
    if low == high:
        return _fmt(last, ".5g")
    text = f"{first:.5g}→{last:.5g}"
    if low < min(first, last) or high > max(first, last):
        text += f" (min {low:.5g}, max {high:.5g})"
    return text


def health_line(report: dict) -> str:
    def mb(key: str) -> str:
        value = report.get(key)
        return f"{value:+.1f}MB" if isinstance(value, (int, float)) else "-"

    arrow = {"decreasing": "↓", "increasing": "↑", "stable": "→"}.get(report.get("loss_trend_label", ""), "")
    parts = [f"loss trend {arrow} {report.get('loss_trend_label', 'n/a')}",
             f"RSS {report.get('rss_mb', 0):.0f}MB ({mb('rss_delta_mb')}, peak {report.get('peak_rss_mb', 0):.0f}MB)"]
    if report.get("gpu_peak_mb") is not None:
        parts.append(f"VRAM {report.get('gpu_alloc_mb', 0):.0f}MB ({mb('gpu_alloc_delta_mb')}, "
                     f"peak {report['gpu_peak_mb']:.0f}MB)")
    events = report.get("events") or {}
    parts.append("warnings: " + (", ".join(f"{k} x{v}" for k, v in events.items()) if events else "none"))
    return "- Health: " + " | ".join(parts)


def farewell_lines(final: dict, run_dir) -> list[str]:
    best = final["best_val_acc1"]
    best_text = f"{best:.2f}% at epoch {final['best_epoch']} ({final['best_weights']} weights)" if best else "-"
    return [f"done in {final['wall_time_s']:.1f}s; best val top-1 {best_text}", f"run dir: {run_dir}"]
