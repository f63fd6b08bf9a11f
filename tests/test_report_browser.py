"""The HTML report in a real headless browser (Debian's chromium): it loads, its plots decode, no console errors.

The page's inline script sets document.title to "ok:<decoded images>/<images>" on load, or "error:<msg>"
on an uncaught error; --dump-dom reads the title back, --enable-logging shows console messages.
"""

from __future__ import annotations

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
