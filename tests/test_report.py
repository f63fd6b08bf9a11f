"""`trainlab report` / `trainlab runs` on run directories written in the documented format."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import time

import pytest
from PIL import Image

from tests.report_fixtures import make_run
from trainlab.commands.cli import main
from trainlab.errors import UsageError
from trainlab.report import load_run, load_runs, report_text, runs_table, write_report
from trainlab.report.compare import run_figures, to_csv
from trainlab.report.plots import HEIGHT, WIDTH

PLOT_NAMES = {"loss", "accuracy", "lr", "time", "throughput", "memory"}


def _embedded_pngs(page: str) -> dict[str, bytes]:
    return {
        name: base64.b64decode(data)
        for name, data in re.findall(r'id="plot-(\w+)"[^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    }


def _assert_plot_image(png: bytes) -> None:
    image = Image.open(io.BytesIO(png)).convert("RGB")
    assert image.size == (WIDTH, HEIGHT)
    colours = image.getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 20, "plot is blank"


def test_reader_tolerates_a_run_that_is_still_writing(tmp_path):
    run_dir = make_run(tmp_path / "r", epochs=3, status="running")
    # torn writes: half a CSV row and half a JSON line at the end, as a reader can see mid-write
    with open(run_dir / "metrics.csv", "a") as f:
        f.write("4,40,0.5,81,0.6")
    with open(run_dir / "steps.jsonl", "a") as f:
        f.write('{"step": 41, "loss": 0.')
    with open(run_dir / "events.jsonl", "a") as f:
        f.write("not json at all\n")
    run = load_run(run_dir)
    assert [row["epoch"] for row in run.metrics] == [1, 2, 3]
    assert run.steps[-1]["step"] == 30
    assert [e["kind"] for e in run.events] == ["data_bottleneck", "schedule"]
    assert run.status == "running"


def test_reader_tolerates_missing_files_and_marks_a_crash(tmp_path):
    run_dir = tmp_path / "crashed"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("model:\n  name: resnet8\ntrain:\n  epochs: 5\n")
    run = load_run(run_dir)
    assert run.metrics == [] and run.steps == [] and run.summary == {}
    assert run.status == "started" and run.epochs_planned == 5 and run.epochs_done == 0
    (run_dir / "error.txt").write_text("exit code 1\nRuntimeError: boom\n")
    assert load_run(run_dir).status == "failed"
    # a report can still be drawn: empty plots, the error shown
    page = write_report([run_dir]).read_text()
    assert "RuntimeError: boom" in page and set(_embedded_pngs(page)) == PLOT_NAMES


def test_figures_match_metrics(tmp_path):
    run = load_run(make_run(tmp_path / "r", epochs=4))
    fig = run_figures(run)
    with open(tmp_path / "r" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    epoch_times = [float(r["epoch_time_s"]) for r in rows]
    assert fig["final_val_acc1"] == float(rows[-1]["val_acc1"])
    assert fig["best_val_acc1"] == max(float(r["val_acc1"]) for r in rows)
    assert fig["final_train_loss"] == float(rows[-1]["train_loss"])
    assert fig["data_s"] == pytest.approx(sum(float(r["data_time_s"]) for r in rows) / 4)
    assert fig["first_epoch_s"] == epoch_times[0]
    assert fig["later_epoch_s"] == pytest.approx(sum(epoch_times[1:]) / 3)
    assert fig["peak_mem_mb"] == max(float(r["peak_mem_mb"]) for r in rows)
    assert fig["epochs"] == "4/4"
    assert fig["warnings"] == "data_bottleneck x1"  # the info-level schedule event is not a warning


def test_html_report_is_self_contained_with_plots_and_pngs(tmp_path):
    run_dir = make_run(tmp_path / "r")
    out = write_report([run_dir])
    assert out == run_dir / "report.html"
    page = out.read_text()
    # nothing fetched from anywhere: no external src/href, images inline
    assert not re.search(r'(src|href)="(?!data:)', page)
    assert "http://" not in page and "https://" not in page
    pngs = _embedded_pngs(page)
    assert set(pngs) == PLOT_NAMES
    for name, png in pngs.items():
        _assert_plot_image(png)
        assert (run_dir / "report_files" / f"{name}.png").read_bytes() == png
    assert "resnet8" in page and "data_bottleneck" in page and "74.00" in page


def test_several_runs_overlay_with_a_leading_comparison_table(tmp_path):
    a = make_run(tmp_path / "a", lr=0.1)
    b = make_run(tmp_path / "b", lr=0.05, seed=1)
    out = tmp_path / "cmp" / "page.html"
    assert main(["report", str(a), str(b), "-o", str(out)]) == 0
    page = out.read_text()
    comparison = page.index("<h2>Comparison</h2>")
    assert comparison < page.index("<h2>Curves</h2>") < page.index("<h2>Run a")
    assert "optim.lr" in page[comparison:]  # the differing settings become columns
    assert {p.name for p in (tmp_path / "cmp" / "page_files").iterdir()} == {f"{n}.png" for n in PLOT_NAMES}
    # the two runs' figures, as a machine-readable table
    rows = list(csv.DictReader(io.StringIO(to_csv(load_runs([a, b])))))
    assert [r["optim.lr"] for r in rows] == ["0.1", "0.05"]
    assert [float(r["final_val_acc1"]) for r in rows] == [74.0, 75.0]


def test_text_report_prints_table_and_charts(tmp_path, capsys):
    run_dir = make_run(tmp_path / "r")
    assert main(["report", str(run_dir), "--text"]) == 0
    out = capsys.readouterr().out
    assert "best top-1 %" in out and "74.00" in out
    for title in ("Loss", "Top-1 accuracy (%)", "Top-5 accuracy (%)", "Learning rate"):
        assert f"\n{title}\n" in out
    assert "events: data_bottleneck" in out and "(epoch)" in out
    assert report_text([run_dir]).count("|") > 50


def test_runs_lists_status_epochs_and_best(tmp_path, capsys):
    make_run(tmp_path / "done", epochs=3, planned=3)
    make_run(tmp_path / "group" / "live", epochs=1, planned=5, status="running")
    make_run(tmp_path / "stale", epochs=2, planned=5, status="running", updated=time.time() - 3600)
    failed = tmp_path / "failed"
    failed.mkdir()
    (failed / "error.txt").write_text("exit code 2\nbad config\n")
    assert main(["runs", str(tmp_path)]) == 0
    lines = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[2:]}
    assert lines["done"][1:4] == ["finished", "3/3", "60.00"]
    assert lines["group/live"][1:4] == ["running", "1/5", "32.00"]
    assert lines["stale"][1] == "running?"
    assert lines["failed"][1] == "failed"
    (tmp_path / "nothing").mkdir()
    assert runs_table(tmp_path / "nothing") == f"no runs under {tmp_path / 'nothing'}\n"


def test_bad_input_is_a_one_line_usage_error(tmp_path, capsys):
    with pytest.raises(UsageError, match="no such directory"):
        load_runs([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="not a run directory"):
        load_runs([tmp_path / "empty"])
    assert main(["report", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a run directory" in err
    assert main(["runs", str(tmp_path / "nope")]) == 2


def test_sweep_dir_expands_to_its_runs(tmp_path):
    sweep = tmp_path / "sweep"
    make_run(sweep / "lr=0.1", lr=0.1)
    make_run(sweep / "lr=0.05", lr=0.05)
    (sweep / "sweep.json").write_text(json.dumps({
        "grid": {"optim.lr": ["0.1", "0.05"]},
        "runs": [{"name": "lr=0.1", "values": {"optim.lr": "0.1"}}, {"name": "lr=0.05", "values": {"optim.lr": "0.05"}}],
    }))
    runs = load_runs([sweep])
    assert [r.name for r in runs] == ["lr=0.1", "lr=0.05"]
    out = write_report([sweep])
    assert out == sweep / "report.html" and (sweep / "report_files" / "loss.png").is_file()
