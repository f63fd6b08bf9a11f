"""One self-contained HTML page: inline CSS, interactive inline-SVG curves (interactive.py), plots embedded as
base64 PNG data URIs, nothing fetched.

A few lines of inline script set `document.title` to "ok:<loaded>/<total>" once the images decoded at
their declared pixel size (or "error:<message>" on a script error); the browser test reads it from the DOM.
"""

from __future__ import annotations

import base64
import html
import time
from collections.abc import Sequence
from typing import Optional

import yaml

from trainlab.report import compare, interactive
from trainlab.report import search as rank
from trainlab.report.plots import HEIGHT, WIDTH, Plot
from trainlab.report.read import Run

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 20px auto; max-width: 1860px;
       color: #222; background: #fff; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; }
.sub { color: #666; font-size: 13px; }
table { border-collapse: collapse; font-size: 12.5px; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: right; white-space: nowrap; }
th { background: #f4f6f8; } td.t, th.t { text-align: left; }
tr:nth-child(even) td { background: #fafbfc; }
.status-finished { color: #1e8449; font-weight: 600; } .status-failed { color: #c0392b; font-weight: 600; }
.status-running { color: #2e86c1; font-weight: 600; } .status-stopped { color: #b9770e; font-weight: 600; }
.status-interrupted { color: #c0392b; font-weight: 600; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(600px, 1fr)); gap: 10px; }
.plots img { display: block; border: 1px solid #eee; width: 100%; max-width: 900px; height: auto; }
pre { background: #f7f7f7; padding: 8px; font-size: 12px; overflow-x: auto; max-height: 420px; }
details { margin: 6px 0; } summary { cursor: pointer; font-weight: 600; }
.events td { text-align: left; } .scroll { overflow-x: auto; max-width: 100%; }
"""

SCRIPT = """
window.addEventListener('error', function (e) { document.title = 'error:' + e.message; });
window.addEventListener('load', function () {
  if (document.title.indexOf('error:') === 0) return;
  var imgs = document.querySelectorAll('img');
  var ok = 0;
  for (var i = 0; i < imgs.length; i++) {
    var img = imgs[i], w = img.getAttribute('width'), h = img.getAttribute('height');
    // decoded, and at the pixel size the page declares for it
    if (img.complete && img.naturalWidth > 0 && (!w || img.naturalWidth == w) && (!h || img.naturalHeight == h)) ok++;
  }
  document.title = 'ok:' + ok + '/' + imgs.length;
});
"""


# The statuses with a colour in CSS. A status is text from summary.json, a file anyone can edit: it never
# reaches the page's markup, only its text (a crafted status in the class attribute ran script).
STATUS_CLASSES = ("finished", "failed", "running", "stopped", "interrupted")


def _esc(value: object) -> str:
    """Text for an element's content or a quoted attribute value: & < > " ' escaped."""
    return html.escape(str(value), quote=True)


def _table(headers: list[str], rows: list[list[str]], text_columns: int = 1) -> str:
    head = "".join(f'<th class="{"t" if i < text_columns else ""}">{_esc(h)}</th>' for i, h in enumerate(headers))
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            cls = "t" if i < text_columns else ""
            if headers[i] == "status":  # the colour of a status trainlab writes; any other text gets none
                known = cell.rstrip("?")
                cls = f"t status-{known}" if known in STATUS_CLASSES else "t"
            cells.append(f'<td class="{_esc(cls)}">{_esc(cell)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<div class='scroll'><table><tr>{head}</tr>{''.join(body)}</table></div>"


def _run_section(run: Run, headers: list[str], row: list[str]) -> str:
    parts = [f"<h2>Run {_esc(run.name)} <span class='sub'>{_esc(run.path)}</span></h2>"]
    summary = run.summary
    facts = [
        ("status", run.display_status()),
        ("model", summary.get("model") or run.config.get("model", {}).get("name", "")),
        ("params", summary.get("params", "")),
        ("data", summary.get("data") or run.config.get("data", {}).get("name", "")),
        ("device", summary.get("device", "")),
        ("world size", summary.get("world_size", "")),
        ("started", summary.get("started", "")),
        ("updated", summary.get("updated", "")),
        ("wall time s", summary.get("wall_time_s", "")),
        ("best epoch", summary.get("best_epoch", "")),
        ("best weights", summary.get("best_weights", "")),
    ]
    facts = [(k, v if not isinstance(v, float) else f"{v:.1f}") for k, v in facts if v not in ("", None)]
    named = {k for k, _ in facts}  # a figure the facts already give (status) is listed once
    figures = [(h, c) for h, c in zip(headers, row) if c not in ("", "-") and h != "run" and h not in named]
    parts.append(_table(["fact", "value"], [[k, str(v)] for k, v in facts] + [[h, c] for h, c in figures], 2))
    if run.skipped:
        parts.append(f"<details><summary>skipped while reading ({len(run.skipped)})</summary><pre>"
                     + _esc("\n".join(run.skipped)) + "</pre></details>")
    if run.error or summary.get("error"):
        parts.append(f"<details open><summary>error</summary><pre>{_esc(run.error or summary.get('error'))}</pre></details>")
    if run.events:
        rows = [
            [str(e.get("epoch", "")), str(e.get("step", "")), str(e.get("severity", "")), str(e.get("kind", "")),
             str(e.get("message", ""))]
            for e in run.events[:200]
        ]
        parts.append(
            f"<details><summary>monitor events ({len(run.events)})</summary><div class='events'>"
            + _table(["epoch", "step", "severity", "kind", "message"], rows, 5)
            + "</div></details>"
        )
    if summary.get("watch"):
        parts.append(
            "<details><summary>monitor health figures</summary><pre>"
            + _esc(yaml.safe_dump(summary["watch"], sort_keys=False, default_flow_style=False))
            + "</pre></details>"
        )
    if run.config:
        parts.append(
            "<details><summary>config</summary><pre>"
            + _esc(yaml.safe_dump(run.config, sort_keys=False, default_flow_style=False))
            + "</pre></details>"
        )
    return "\n".join(parts)


def _search_section(runs: list[Run], search: dict, plots: list[Plot]) -> str:
    """A search sweep: its trials ranked (pruned ones with their reason and the step they stopped at) and the
    objective against each searched key."""
    headers, rows = rank.ranking(runs, search)
    parts = [f"<h2 id='search'>Search: trials ranked</h2><div class='sub'>{_esc(rank.summary_line(runs, search))}</div>",
             _table(headers, rows, len(headers))]
    parts.append("<div class='plots'>" + "".join(_img(plot) for plot in plots) + "</div>")
    return "\n".join(parts)


def _img(plot: Plot) -> str:
    data = base64.b64encode(plot.png).decode("ascii")
    return (f'<img id="plot-{plot.name}" alt="{_esc(plot.title)}" width="{WIDTH}" height="{HEIGHT}" '
            f'src="data:image/png;base64,{data}">')


def render(runs: list[Run], plots: list[Plot], title: str = "trainlab report", search: Optional[dict] = None,
           search_plots: Sequence[Plot] = ()) -> str:
    headers, rows = compare.table(runs)
    body = [f"<h1>{_esc(title)}</h1>",
            f"<div class='sub'>{len(runs)} run(s) · generated {time.strftime('%Y-%m-%d %H:%M:%S')}</div>"]
    if search:
        body.append(_search_section(runs, search, list(search_plots)))
    if len(runs) > 1:
        body.append("<h2>Comparison</h2>" + _table(headers, rows, 1 + len(compare.varied_keys(runs))))
    else:
        body.append(_run_section(runs[0], headers, rows[0]))
    body.append(interactive.section(runs))
    body.append("<h2>Curves</h2><div class='plots'>")
    for plot in plots:
        body.append(_img(plot))
    body.append("</div>")
    if len(runs) > 1:
        body.extend(_run_section(run, headers, row) for run, row in zip(runs, rows))
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_esc(title)}</title><style>{CSS}{interactive.CSS}</style><script>{SCRIPT}</script>"
        f"<script>{interactive.SCRIPT}</script></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )
