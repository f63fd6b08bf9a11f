"""The HTML report in a real headless browser (Debian's chromium): it loads, its plots decode, no console errors.

The page's inline script sets document.title to "ok:<decoded images>/<images>" on load, or "error:<msg>"
on an uncaught error; --dump-dom reads the title back, --enable-logging shows console messages.
"""

from __future__ import annotations

import html
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.report_fixtures import make_run
from trainlab.report import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (make test installs it: scripts/ensure_chromium.sh)"
)
WINDOW = (1400, 2000)


def render(page: Path, screenshot: Path, profile: Path) -> tuple[str, list[str]]:
    """Load `page` headless; returns (document.title after load, console lines)."""
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--dump-dom",
        f"--screenshot={screenshot}", f"--window-size={WINDOW[0]},{WINDOW[1]}", page.resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    title = re.search(r"<title>(.*?)</title>", proc.stdout, re.S)
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return (title.group(1) if title else ""), console


def test_report_renders_in_chromium(tmp_path):
    runs = [make_run(tmp_path / "runs" / "a", lr=0.1), make_run(tmp_path / "runs" / "b", lr=0.05, seed=1)]
    page = write_report(runs, tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    title, console = render(page, shot, tmp_path / "profile")
    assert title == "ok:6/6", f"page did not load all its plots: {title!r}"
    assert console == [], f"console messages: {console}"
    image = Image.open(shot).convert("RGB")
    assert image.size == WINDOW
    colours = image.getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 50, "screenshot is (nearly) blank"
    # the top of the page holds the comparison table and the first plot: not a white sheet
    top = np.asarray(image.crop((0, 0, WINDOW[0], 600)))
    assert (top != 255).any(axis=2).mean() > 0.02


def test_browser_check_catches_broken_images_and_console_errors(tmp_path):
    """The checks above can fail: a corrupt plot, a plot of the wrong size and a console error are all seen."""
    page = write_report([make_run(tmp_path / "run")], tmp_path / "report.html")
    text = page.read_text()
    first_png = re.search(r'src="data:image/png;base64,([^"]+)"', text).group(1)
    broken = text.replace(first_png, "iVBORw0KGgoAAAAbroken", 1).replace(
        "</body>", "<script>console.error('planted failure')</script></body>"
    )
    broken = broken.replace('id="plot-lr" alt="Learning rate" width="900"', 'id="plot-lr" alt="Learning rate" width="901"')
    bad = tmp_path / "broken.html"
    bad.write_text(broken)
    title, console = render(bad, tmp_path / "shot.png", tmp_path / "profile")
    assert title == "ok:4/6"
    assert any("planted failure" in line for line in console)
    assert Image.open(io.BytesIO((tmp_path / "shot.png").read_bytes())).size == WINDOW


# The page's interactive curves, driven in the browser: the script below is appended to a copy of the page.
# It finds a point by its data, checks the browser's own hit test puts that point under the mouse, sends the
# mouse there (the page's listeners show the tooltip), then unticks a run's checkbox with a real click and
# checks that run's lines and points are no longer drawn or hit, while the other run's still are.
PROBE = """
<script>
window.addEventListener('load', function () {
  var out = {};
  function centre(el) { var r = el.getBoundingClientRect(); return [r.left + r.width / 2, r.top + r.height / 2, r.width]; }
  function hover(el) {
    el.scrollIntoView({block: 'center'});
    var c = centre(el), hit = document.elementFromPoint(c[0], c[1]);
    hit.dispatchEvent(new MouseEvent('mouseover', {bubbles: true, clientX: c[0], clientY: c[1]}));
    var tip = document.getElementById('tip');
    return {hit: hit === el, tip: getComputedStyle(tip).display === 'none' ? '' : tip.textContent};
  }
  var pts = document.querySelectorAll('#chart-accuracy .series[data-run="1"][data-metric="val_acc1"] .pt');
  out.b_point = hover(pts[2]);
  var ev = document.querySelector('#chart-loss .event[data-run="1"]');  // drawn over run a's same event
  out.event = hover(ev);
  var step12 = Array.prototype.filter.call(document.querySelectorAll('#chart-loss .series[data-run="1"] .pt'),
    function (p) { return / · step 12: /.test(p.getAttribute('data-tip')); })[0];
  out.event_at_its_step = Math.abs(ev.x1.baseVal.value - step12.cx.baseVal.value) < 0.5;
  var a = document.querySelector('#chart-loss .series[data-run="0"][data-metric="train_loss"] .pt');
  var bPoint = pts[2], bLine = bPoint.parentNode.querySelector('polyline');
  document.querySelector('input.run-toggle[data-run="1"]').click();
  out.after = {
    b_line_width: bLine.getBoundingClientRect().width, b_point_width: centre(bPoint)[2],
    b_marks_drawn: Array.prototype.filter.call(document.querySelectorAll('.ichart [data-run="1"]'),
      function (el) { return el.getClientRects().length > 0; }).length,
    a_still: hover(a)
  };
  document.querySelector('input.run-toggle[data-run="1"]').click();
  out.back = centre(bPoint)[2] > 0;
  document.title = 'probe:' + JSON.stringify(out);
});
</script>
"""


def test_interactive_curves_hover_shows_values_and_runs_toggle(tmp_path):
    import json

    runs = [make_run(tmp_path / "runs" / "a", lr=0.1), make_run(tmp_path / "runs" / "b", lr=0.05, seed=1)]
    page = write_report(runs, tmp_path / "report.html")
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    title, console = render(probed, tmp_path / "shot.png", tmp_path / "profile")
    assert console == [], console
    assert title.startswith("probe:"), f"the probe did not finish: {title!r}"
    out = json.loads(html.unescape(title[len("probe:"):]))
    from tests.conftest import read_metrics

    val_acc1_b_epoch3 = read_metrics(runs[1])[2]["val_acc1"]  # as the file holds it
    assert out["b_point"]["hit"], "the point is not what the mouse finds there"
    assert out["b_point"]["tip"] == f"b · val_acc1 · epoch 3: {float(val_acc1_b_epoch3):g}"
    assert out["event"]["hit"] and out["event"]["tip"].startswith("b · event data_bottleneck · step 12: ")
    assert out["event_at_its_step"], "the event mark is not at the step loss point of its step"
    after = out["after"]
    assert after["b_line_width"] == 0 and after["b_point_width"] == 0 and after["b_marks_drawn"] == 0
    assert after["a_still"]["hit"] and after["a_still"]["tip"].startswith("a · train_loss · epoch 1: ")
    assert out["back"], "ticking the run again shows it again"
