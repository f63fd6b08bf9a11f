"""Console output of the watch: one line per logged step, a block per epoch, warnings that stand out.

Plain text for any printer; rich markup (colour) only when the printer is a rich Console's print.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

from trainlab.watch.events import Event

ICONS = {"info": "ℹ", "warning": "⚠", "critical": "✖"}
STYLES = {"info": "cyan", "warning": "bold yellow", "critical": "bold red"}
TREND_ARROWS = {"decreasing": "↓", "stable": "→", "increasing": "↑", "nonfinite": "✖", "n/a": ""}


class Output:
    def __init__(self, printer: Optional[Callable[[str], None]] = None) -> None:
        self.rich = False
        try:
            from rich.console import Console

            if isinstance(printer, Console):
                printer = printer.print
            self.rich = isinstance(getattr(printer, "__self__", None), Console)
        except ImportError:  # rich is a dependency, but the watch must work without it
            pass
        self.printer: Callable[[str], None] = printer or print

    def line(self, text: str, style: Optional[str] = None) -> None:
        if self.rich:
            from rich.markup import escape

            text = escape(text)  # our text has [brackets] that rich would read as markup
            if style:
                text = f"[{style}]{text}[/]"
        self.printer(text)

    def event(self, e: Event) -> None:
        self.line(f"{ICONS.get(e.severity, '!')} {e.kind} (step {e.step}, epoch {e.epoch}): {e.message}",
                  STYLES.get(e.severity))


def step_line(r: dict[str, Any], show_gpu: bool) -> str:
    parts = [f"Step {r['step']:>6}", f"loss={_num(r.get('loss'))}", f"time={r['step_time_s']:.3f}s"]
    if r.get("data_wait_frac") is not None:
        parts.append(f"data={r['data_wait_frac']:.0%}")
    if r.get("images_per_s"):
        parts.append(f"{r['images_per_s']:,.0f} img/s")
    if r.get("lr") is not None:
        parts.append(f"lr={r['lr']:.4g}")
    if r.get("grad_norm") is not None:
        parts.append(f"grad={r['grad_norm']:.3g}")
    if r.get("cpu_pct") is not None:
        parts.append(f"CPU={r['cpu_pct']:.0f}%")
    parts.append(f"RSS={r['rss_mb']:,.0f}MB")
    if r.get("ram_pct") is not None:
        parts.append(f"RAM={r['ram_pct']:.1f}%")
    if show_gpu and r.get("gpu_alloc_mb") is not None:
        gpu = f"VRAM={r['gpu_alloc_mb']:,.0f}MB peak={r['gpu_peak_mb']:,.0f}MB"
        if r.get("gpu_util_pct") is not None:
            gpu += f" util={r['gpu_util_pct']:.0f}%"
        parts.append(gpu)
    return " | ".join(parts)


def epoch_block(r: dict[str, Any], show_gpu: bool) -> list[str]:
    t = max(r["epoch_time_s"], 1e-9)
    trend = r["loss_trend_label"]
    lines = [
        "=" * 64,
        f"Epoch {r['epoch']} summary: {r['steps']} steps, {r['images']:,} images in {r['epoch_time_s']:.1f}s "
        f"({r['images_per_s']:,.0f} img/s)",
        f"   Loss (avg): {_num(r['loss_mean'])} {TREND_ARROWS.get(trend, '')} {trend}"
        + (f" ({r['nonfinite_steps']} non-finite steps)" if r.get("nonfinite_steps") else ""),
        f"   Time: data {r['data_time_s']:.1f}s ({r['data_time_s'] / t:.0%}) | compute {r['compute_time_s']:.1f}s "
        f"({r['compute_time_s'] / t:.0%}) | other {r['other_time_s']:.1f}s ({r['other_time_s'] / t:.0%})",
        f"   Host: RSS {r['rss_mb']:,.0f}MB (delta {r['rss_delta_mb']:+,.1f}MB, peak {r['peak_rss_mb']:,.0f}MB)",
    ]
    if show_gpu and r.get("gpu_alloc_delta_mb") is not None:
        lines.append(f"   VRAM: delta {r['gpu_alloc_delta_mb']:+,.1f}MB | peak {r['gpu_peak_mb']:,.0f}MB")
    val = []
    if r.get("val_loss") is not None:
        val.append(f"loss {_num(r['val_loss'])}")
    if r.get("val_acc") is not None:
        acc = r["val_acc"]
        val.append(f"acc {acc:.2f}%" if acc > 1.0 else f"acc {acc:.2%}")
    if val:
        lines.append("   Val: " + " | ".join(val))
    if r.get("events"):
        lines.append(f"   Events this epoch: {r['events']}")
    lines.append("=" * 64)
    return lines


def _num(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:.4f}"
