"""The report's interactive curves: inline SVG and a few lines of inline script, nothing fetched.

Every point carries its own tooltip text (run, metric, epoch or step, the exact value as written to disk)
in a `data-tip` attribute, so the script only shows what the page already holds. Each run's curves,
points and event marks carry `data-run`; the run checkboxes hide or show them. The monitor's events are
dashed vertical marks on the loss chart at the step where they happened.
"""

from __future__ import annotations

import html
import math
from typing import Optional

from trainlab.report.plots import COLORS, SEVERITY_COLORS
from trainlab.report.read import Run
from trainlab.report.text import wants_log_scale

W, H = 900, 340
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 28, 40
MAX_STEP_POINTS = 1500  # per run and series: beyond that every n-th step is drawn (each one exact)

CHARTS = [  # name, title, [(column or "step:<key>", label, dash)]
    ("loss", "Loss (thin: logged steps)", [("step:loss", "step loss", ""), ("train_loss", "train loss", ""),
                                            ("val_loss", "val loss", "6 4")]),
    ("accuracy", "Accuracy (%)", [("train_acc1", "train top-1", "2 3"), ("val_acc1", "val top-1", ""),
                                  ("val_acc5", "val top-5", "6 4")]),
    ("lr", "Learning rate", [("step:lr", "step lr", ""), ("lr", "lr of the epoch's last step", "")]),
]  # fmt: skip

CSS = """
.ichart { border: 1px solid #eee; background: #fff; max-width: 100%; height: auto; }
.ichart .pt { cursor: crosshair; } .ichart .pt:hover { stroke: #000; stroke-width: 1.5; }
.ichart .event { cursor: help; } .ichart text { font-size: 11px; fill: #444; }
.off { display: none; }
#tip { position: fixed; pointer-events: none; background: #222; color: #fff; font-size: 12px; padding: 3px 7px;
       border-radius: 3px; white-space: nowrap; display: none; z-index: 10; }
.run-toggles label { margin-right: 14px; font-size: 13px; cursor: pointer; }
.run-toggles .swatch { display: inline-block; width: 12px; height: 12px; margin: 0 4px -1px 2px; }
"""

SCRIPT = """
(function () {
  function tip() { return document.getElementById('tip'); }
  document.addEventListener('mouseover', function (e) {
    var el = e.target.closest ? e.target.closest('[data-tip]') : null, t = tip();
    if (!el || !t) return;
    t.textContent = el.getAttribute('data-tip');
    t.style.display = 'block';
    t.style.left = (e.clientX + 12) + 'px';
    t.style.top = (e.clientY + 12) + 'px';
  });
  document.addEventListener('mouseout', function (e) {
    var el = e.target.closest ? e.target.closest('[data-tip]') : null, t = tip();
    if (el && t) t.style.display = 'none';
  });
  document.addEventListener('change', function (e) {
    var box = e.target;
    if (!box.classList || !box.classList.contains('run-toggle')) return;
    var marks = document.querySelectorAll('.ichart [data-run="' + box.getAttribute('data-run') + '"]');
    for (var i = 0; i < marks.length; i++) marks[i].classList.toggle('off', !box.checked);
  });
})();
"""


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _exact(value: float) -> str:
    """The value as the run wrote it (shortest round-trip text), not rounded for display."""
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def _series(run: Run, key: str) -> list[tuple[float, float, str]]:
    """(x on the epoch axis, value, where) for a column or a step-record key."""
    out = []
    if key.startswith("step:"):
        field = key[5:]
        steps = [s for s in run.steps if isinstance(s.get("step"), (int, float)) and _finite(s.get(field))]
        stride = max(1, math.ceil(len(steps) / MAX_STEP_POINTS))
        for s in steps[::stride]:
            x = run.step_to_epoch(s["step"])
            out.append((x if x is not None else float(s["step"]), float(s[field]), f"step {s['step']}"))
    else:
        for epoch, value in run.column(key):
            if _finite(value):
                out.append((float(epoch), float(value), f"epoch {epoch}"))
    return out


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def _fmt_tick(value: float) -> str:
    return f"{value:.4g}"


def chart(name: str, title: str, spec: list[tuple[str, str, str]], runs: list[Run]) -> Optional[str]:
    data = [(i, run, key, label, dash, _series(run, key)) for i, run in enumerate(runs) for key, label, dash in spec]
    data = [d for d in data if d[5]]
    if not data:
        return None
    xs = [x for *_, pts in data for x, _, _ in pts]
    # a log axis when one exploded value would flatten the rest (the same rule as the PNGs and --text)
    log = wants_log_scale([y for *_, pts in data for _, y, _ in pts])
    scale = math.log10 if log else (lambda y: y)
    if log:
        title += " (log scale)"
    ys = [scale(y) for *_, pts in data for _, y, _ in pts]
    x_lo, x_hi = min(0.0, min(xs)), max(xs) or 1.0
    y_lo, y_hi = min(ys), max(ys)
    if y_hi == y_lo:
        y_lo, y_hi = y_lo - 1, y_hi + 1
    pad = (y_hi - y_lo) * 0.05
    y_lo, y_hi = y_lo - pad, y_hi + pad

    def sx(x: float) -> float:
        return LEFT + (x - x_lo) / (x_hi - x_lo or 1) * (W - LEFT - RIGHT)

    def sy(y: float, scaled: bool = False) -> float:  # a value, or with `scaled` a position on the axis
        return TOP + (y_hi - (y if scaled else scale(y))) / (y_hi - y_lo) * (H - TOP - BOTTOM)

    parts = [f'<svg class="ichart" id="chart-{name}" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
             f'role="img" aria-label="{_esc(title)}">',
             f'<text x="{W / 2}" y="16" text-anchor="middle" font-weight="600">{_esc(title)}</text>']  # fmt: skip
    for y in _ticks(y_lo, y_hi):
        label = _fmt_tick(10.0**y if log else y)
        parts.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{sy(y, True):.1f}" y2="{sy(y, True):.1f}" stroke="#eee"/>'
                     f'<text x="{LEFT - 6}" y="{sy(y, True) + 4:.1f}" text-anchor="end">{label}</text>')  # fmt: skip
    for x in _ticks(x_lo, x_hi, 8):
        parts.append(f'<line x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{TOP}" y2="{H - BOTTOM}" stroke="#f3f3f3"/>'
                     f'<text x="{sx(x):.1f}" y="{H - BOTTOM + 16}" text-anchor="middle">{_fmt_tick(x)}</text>')  # fmt: skip
    parts.append(f'<text x="{(LEFT + W - RIGHT) / 2}" y="{H - 6}" text-anchor="middle">epoch</text>')
    parts.append(f'<rect x="{LEFT}" y="{TOP}" width="{W - LEFT - RIGHT}" height="{H - TOP - BOTTOM}" '
                 'fill="none" stroke="#ccc"/>')  # fmt: skip
    if name == "loss":  # events where they happened, under the curves so points stay on top
        for i, run in enumerate(runs):
            for event in run.events:
                x = run.event_x(event)
                if x is None or not x_lo <= x <= x_hi:
                    continue
                color = SEVERITY_COLORS.get(str(event.get("severity")), "#e67e22")
                where = f"step {event['step']}" if event.get("step") is not None else f"epoch {event.get('epoch')}"
                tip = f"{run.name} · event {event.get('kind', '?')} · {where}: {event.get('message', '')}"
                parts.append(f'<line class="event" data-run="{i}" data-kind="{_esc(event.get("kind", ""))}" '
                             f'x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{TOP}" y2="{H - BOTTOM}" stroke="{color}" '
                             f'stroke-width="3" stroke-opacity="0.7" stroke-dasharray="5 3" data-tip="{_esc(tip)}"/>')  # fmt: skip
    for i, run, key, _label, dash, pts in data:
        color = COLORS[i % len(COLORS)]
        step_series = key.startswith("step:")
        line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y, _ in pts)
        width, opacity, radius = ("1", "0.35", 2.0) if step_series else ("2", "1", 3.5)
        parts.append(f'<g class="series" data-run="{i}" data-metric="{_esc(key)}">'
                     f'<polyline points="{line}" fill="none" stroke="{color}" stroke-width="{width}" '
                     f'stroke-opacity="{opacity}" stroke-dasharray="{dash}"/>')  # fmt: skip
        metric = key[5:] if step_series else key
        for x, y, where in pts:
            tip = f"{run.name} · {metric} · {where}: {_exact(y)}"
            parts.append(f'<circle class="pt" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="{radius}" fill="{color}" '
                         f'fill-opacity="{opacity}" data-tip="{_esc(tip)}"/>')  # fmt: skip
        parts.append("</g>")
    legend = "  ".join(f"{label} ({'dashed' if dash else 'solid'})" for _, label, dash in spec)
    parts.append(f'<text x="{LEFT}" y="{H - 6}" font-size="10">{_esc(legend)}</text></svg>')
    return "".join(parts)


def section(runs: list[Run]) -> str:
    """The toggles and the charts, ready to drop into the page."""
    toggles = "".join(
        f'<label><input type="checkbox" class="run-toggle" data-run="{i}" checked>'
        f'<span class="swatch" style="background:{COLORS[i % len(COLORS)]}"></span>{_esc(run.name)}</label>'
        for i, run in enumerate(runs)
    )
    charts = [c for name, title, spec in CHARTS if (c := chart(name, title, spec, runs))]
    return (f"<h2>Interactive curves</h2><div class='sub'>hover a point for its exact value; "
            f"untick a run to hide it</div><div class='run-toggles'>{toggles}</div>"
            f"<div class='plots'>{''.join(charts)}</div><div id='tip'></div>")  # fmt: skip
