"""Run dirs are files people edit and copy from elsewhere: the report must neither run what they hold
(issue 24, item 2: a summary.json status ran script in Chromium) nor fail on what it cannot read (item 6:
`report` and `runs` raised OverflowError, TypeError, ValueError, AttributeError).

The page is checked as a browser would see it: parsed, every element, attribute and script listed.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

from tests.report_fixtures import make_run
from trainlab.commands.cli import main
from trainlab.report import html as report_html
from trainlab.report import interactive, load_run, load_runs, report_text, runs_table, write_report
from trainlab.report.compare import table, to_markdown

# What a file may hold to break out of HTML text, an attribute (quoted or not), a script, matplotlib's
# mathtext ($...$ is parsed as TeX in plot labels), or a terminal (an escape sequence that sets its title).
HOSTILE = "\"'><img src=x onerror=alert(1)><script>alert(2)</script>&amp; x=y $\\frac{$ \u2028\x1b]0;owned\x07"
HOSTILE_NAME = "run \"'><img src=x onerror=alert(3)>&$\\sqrt{$"  # a folder name cannot hold '/'

TAGS = {
    "html", "head", "meta", "title", "style", "script", "body", "h1", "h2", "div", "span", "table", "tr", "th",
    "td", "details", "summary", "pre", "img", "svg", "text", "line", "rect", "g", "polyline", "circle", "label",
    "input",
}  # fmt: skip


class _Page(HTMLParser):
    """Every element and attribute of the page, the text of its scripts, and its text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.scripts: list[str] = []
        self.text: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, {k: v or "" for k, v in attrs}))
        self._in_script = tag == "script"
        if self._in_script:
            self.scripts.append("")

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data
        else:
            self.text.append(data)


def _hostile_run(path: Path, status: str, seed: int, error_file: bool) -> Path:
    """A run dir with a hostile string in every field a run dir holds."""
    events = [
        {"kind": HOSTILE, "severity": HOSTILE, "step": 4, "epoch": 1, "message": HOSTILE, "data": {HOSTILE: HOSTILE}},
        {"kind": "loss_spike", "severity": "warning", "step": 7, "epoch": 2, "message": HOSTILE, "data": {}},
    ]
    make_run(path, epochs=2, planned=3, steps_per_epoch=4, seed=seed, events=events)
    (path / "config.yaml").write_text(json.dumps({
        "model": {"name": HOSTILE + str(seed)}, "optim": {"lr": HOSTILE, "name": "sgd"},
        "run": {"name": HOSTILE}, HOSTILE: {HOSTILE: seed},
    }))  # JSON is YAML; the values differ between the runs, so they become columns of the comparison
    summary = json.loads((path / "summary.json").read_text())
    summary.update({
        "status": status, "model": HOSTILE, "data": HOSTILE, "device": HOSTILE, "started": HOSTILE,
        "updated": HOSTILE, "error": HOSTILE, "best_weights": HOSTILE, "watch": {HOSTILE: HOSTILE},
        "events": {HOSTILE: 1},
    })  # fmt: skip
    (path / "summary.json").write_text(json.dumps(summary))
    if error_file:  # a sweep's record of a failed process (its run shows as failed)
        (path / "error.txt").write_text(HOSTILE)
    lines = (path / "metrics.csv").read_text().splitlines()  # a metric name of its own
    (path / "metrics.csv").write_text("\n".join([lines[0] + ',"' + HOSTILE.replace('"', '""') + '"']
                                                + [line + ",1.5" for line in lines[1:]]) + "\n")
    steps = [json.loads(line) for line in (path / "steps.jsonl").read_text().splitlines()]
    (path / "steps.jsonl").write_text("".join(json.dumps({**s, HOSTILE: HOSTILE}) + "\n" for s in steps))
    return path


def test_hostile_strings_in_every_field_stay_text(tmp_path):
    runs = [_hostile_run(tmp_path / f"{HOSTILE_NAME}{i}", status, i, error_file=i == 1)
            for i, status in enumerate(['finished" onmouseover="alert(4)', HOSTILE])]  # fmt: skip
    page = write_report(runs, tmp_path / "report.html").read_text(encoding="utf-8")
    parsed = _Page()
    parsed.feed(page)
    parsed.close()
    names = {tag for tag, _ in parsed.tags}
    assert names <= TAGS, f"elements the report never draws: {sorted(names - TAGS)}"
    handlers = [(tag, k) for tag, attrs in parsed.tags for k in attrs if k.startswith("on")]
    assert not handlers, f"event-handler attributes: {handlers}"
    assert [s.strip() for s in parsed.scripts] == [report_html.SCRIPT.strip(), interactive.SCRIPT.strip()]
    for tag, attrs in parsed.tags:
        assert re.fullmatch(r"[\w -]*", attrs.get("class", "")), (tag, attrs)
        if tag == "img":
            assert attrs["src"].startswith("data:image/png;base64,"), attrs
    text = "".join(parsed.text)
    # the strings were drawn, as text: each field reached the page and none was dropped to make it safe
    assert text.count(HOSTILE) >= 10 and HOSTILE_NAME in text
    assert 'finished" onmouseover="alert(4)' in text
    tips = [attrs["data-tip"] for _, attrs in parsed.tags if "data-tip" in attrs]
    assert any(HOSTILE in tip for tip in tips)  # the event's message, in its tooltip attribute
    # sweep.md: Markdown passes inline HTML to the page it renders
    markdown = to_markdown(*table(load_runs(runs)))
    assert "<" not in markdown and "&lt;img src=x onerror=alert(1)&gt;" in markdown
    # in a terminal the strings are shown, but no control character reaches it
    printed = report_text(runs) + runs_table(tmp_path)
    assert "\x1b" not in printed and "\x07" not in printed and "img src=x onerror=alert(1)" in printed


def _edit(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def test_edited_files_are_skipped_line_by_line_and_named(tmp_path, capsys):
    root = tmp_path / "runs"
    good = make_run(root / "good", epochs=2, planned=2, steps_per_epoch=3)
    cells = make_run(root / "cells", epochs=4, planned=4, steps_per_epoch=3)
    rows = (cells / "metrics.csv").read_text().splitlines()

    def row(epoch: str, step: str, acc: str) -> str:
        values = rows[1].split(",")
        values[0], values[1], values[5] = epoch, step, acc
        return ",".join(values)

    _edit(cells / "metrics.csv", "\n".join([
        rows[0], rows[1], row("inf", "6", "50"), row("nan", "6", "50"), row("2", "abc", "50"), row("3", "9", "high"),
        row("1e300", "12", "50"), row("-5", "3", "50"), rows[4], "4,12", row("5", "inf", "50"),
        row("6", "18", "inf"),  # a diverged run writes inf: kept
    ]) + "\n")  # fmt: skip
    _edit(cells / "events.jsonl", "\n".join([
        json.dumps({"kind": ["x"], "severity": {"a": 1}, "step": 2, "epoch": 1, "message": None}),
        json.dumps({"kind": "loss_spike", "severity": "warning", "step": "x", "epoch": 1}),
        json.dumps({"kind": "loss_spike", "severity": "warning", "step": 3, "epoch": float("inf")}),
        "not json", "[1, 2]",
    ]) + "\n")  # fmt: skip
    _edit(cells / "steps.jsonl", "\n".join(json.dumps(r) for r in [
        {"step": "x", "loss": 1.0}, {"step": 2, "loss": "y", "lr": -1, "time": float("inf")},
        {"step": True, "loss": 1.0}, {"step": 4, "loss": float("inf"), "rss_mb": float("nan"), "time": 1e300},
    ]) + "\n")  # fmt: skip
    listed = make_run(root / "listed", epochs=1, planned=2)
    _edit(listed / "config.yaml", "- 1\n- 2\n")  # a config that is not a mapping
    _edit(listed / "summary.json", json.dumps({"status": ["running"], "epochs": "x", "events": {"x": "abc"},
                                               "started": 1e300, "best_val_acc1": "high", "updated": [1]}))
    (listed / "events.jsonl").unlink()  # the warnings come from the summary's counts
    sections = make_run(root / "sections", epochs=1, planned=2)
    _edit(sections / "config.yaml", "model: 5\ntrain: [3]\ndata: {name: shapes}\n")  # a section replaced by a number
    _edit(sections / "summary.json", json.dumps({"events": {"x": [1]}, "epochs_done": 1e300, "wall_time_s": "q"}))
    sweep = tmp_path / "sweep"
    make_run(sweep / "a")
    (sweep / "sweep.json").write_text(json.dumps({"runs": [{"name": "a", "values": [1]}, {"name": "../runs/good"},
                                                           {"values": {}}, "b", {"name": 5}]}))  # fmt: skip

    assert main(["runs", str(root)]) == 0
    out, err = capsys.readouterr()
    listing = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert set(listing) == {"good", "cells", "listed", "sections"}  # one bad run no longer hides the others
    assert listing["good"][1:4] == ["finished", "2/2", "46.00"]
    assert listing["cells"][1:3] == ["finished", "4/4"]  # the summary says 4 done; 3 rows are readable
    for note in ("metrics.csv line 3: epoch 'inf'", "metrics.csv line 4: epoch 'nan'", "line 5: step 'abc'",
                 "line 6: val_acc1 'high' is not a number", "line 7: epoch '1e300'", "line 8: epoch '-5'",
                 "line 10: wrong number of cells", "line 11: step 'inf'", "events.jsonl line 2: step 'x'",
                 "events.jsonl line 3: epoch inf", "events.jsonl line 4: not JSON", "line 5: not a JSON object",
                 "steps.jsonl line 1: step 'x'", "steps.jsonl line 3: step True",
                 "listed/config.yaml: not a mapping of sections (list)", "listed/summary.json: status ['running']",
                 "sections/config.yaml: section 'model' is not a mapping (int)"):  # fmt: skip
        assert note in err, f"{note!r} not in:\n{err}"
    assert "Traceback" not in err and all(line.startswith("trainlab: warning: skipped ") for line in err.splitlines())
    run = load_run(cells)
    assert [r["epoch"] for r in run.metrics] == [1, 4, 6] and run.metrics[-1]["val_acc1"] == float("inf")
    assert [e["kind"] for e in run.events] == ['["x"]']

    page = tmp_path / "all.html"
    assert main(["report", str(good), str(cells), str(listed), str(sections), str(sweep), "-o", str(page)]) == 0
    assert "metrics.csv line 3" in page.read_text() and "Traceback" not in capsys.readouterr().err
    assert main(["report", str(cells)]) == 0 and (cells / "report.html").is_file()
    text = report_text([good, cells, listed, sections])
    assert "cells" in text and "sections" in text
    capsys.readouterr()
    assert runs_table(sweep).count("\n") == 3
