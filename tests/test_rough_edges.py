"""Issue 26 item 12: the rough edges a newcomer hit, each on real files and a real run."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from tests.cli_checks import run_in_process
from tests.conftest import TINY
from tests.report_fixtures import make_run

REPO = Path(__file__).resolve().parents[1]


def test_a_multi_run_report_is_written_beside_the_runs_and_says_where(tmp_path):
    """Before: ./report.html in whatever folder the command ran from."""
    a, b = make_run(tmp_path / "runs" / "a"), make_run(tmp_path / "runs" / "b", lr=0.05, seed=1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run_in_process(["report", str(a), str(b)], elsewhere)
    assert result.returncode == 0, result.stderr
    assert not (elsewhere / "report.html").exists()
    out = tmp_path / "runs" / "report.html"
    assert out.is_file() and str(out) in result.stdout and "beside the runs" in result.stdout, result.stdout


def test_a_single_runs_fact_table_lists_each_fact_once(tmp_path):
    """Before: `status` twice (the run's facts, then the comparison table's figures)."""
    run = make_run(tmp_path / "run")
    result = run_in_process(["report", str(run)], tmp_path)
    assert result.returncode == 0, result.stderr
    page = (run / "report.html").read_text()
    section = page[page.index("<h2>Run "):]
    facts = re.findall(r"<tr><td[^>]*>([^<]+)</td>", section.split("</table>")[0])
    assert facts.count("status") == 1 and len(facts) == len(set(facts)), facts


def test_text_charts_use_a_log_axis_when_one_value_explodes(tmp_path):
    """A loss of 1e6 at the last epoch drew every other point on the chart's bottom row (linear only)."""
    run = make_run(tmp_path / "run", epochs=4)
    path = run / "metrics.csv"
    rows = list(csv.DictReader(path.open()))
    rows[-1]["train_loss"] = "1000000.0"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    result = run_in_process(["report", str(run), "--text"], tmp_path)
    assert result.returncode == 0, result.stderr
    chart = result.stdout.split("Loss")[1].split("\n\n")[0]
    assert chart.startswith(" (log scale)"), chart
    plotted = [line.split("|")[1] for line in chart.splitlines() if line.count("|") == 2]
    glyph_rows = [cells for cells in plotted if "*" in cells or "o" in cells]
    assert len(glyph_rows) >= 3, chart  # linear: the explosion on top, every other point on the bottom row


class _BarWatcher:
    """Records what the progress bar shows after each optimizer step."""

    def __init__(self) -> None:
        self.seen: list = []

    def on_step_end(self, run, step: int) -> None:
        self.seen.append(getattr(run.console, "bar_info", None))


def test_the_bar_shows_the_running_loss_and_a_short_epoch_logs_before_its_end(tmp_path):
    """Default watch.print_every (50) on an epoch of 10 steps: before, no step line, no steps.jsonl record and
    no loss on the bar until the epoch ended. Now every tenth of the epoch is logged and the bar shows it."""
    import trainlab

    recorder = _BarWatcher()
    base = [o for o in TINY if not o.startswith("watch.print_every")]
    trainlab.fit(None, *base, "train.epochs=1", "run.progress=bar", f"run.dir={tmp_path / 'run'}",
                 callbacks=[recorder])  # fmt: skip
    steps = [json.loads(line) for line in (tmp_path / "run" / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(1, 11)), steps
    assert len(recorder.seen) == 10 and all(re.fullmatch(r"loss \d+\.\d{4}", str(s)) for s in recorder.seen), recorder.seen


def test_the_readme_says_what_save_top_k_minus_one_keeps():
    """run.save_top_k=-1 was documented only in a docstring."""
    readme = (REPO / "README.md").read_text()
    row = next((line for line in readme.splitlines() if line.startswith("| `run.save_top_k`")), "")
    assert "`-1`" in row and "every" in row, row
