"""The pages `trainlab report` and `trainlab runs` produce: load the runs, render, write atomically."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Optional

from trainlab.errors import UsageError
from trainlab.paths import check_output_dir, open_no_follow, write_text_no_follow
from trainlab.report import html, plots, text
from trainlab.report.read import Run, find_runs, is_sweep_dir, load_run, load_runs, parse_time
from trainlab.report.search import objective_plots, ranking_text, search_of


def default_output(paths: list[str | Path], runs: list[Run]) -> Path:
    """RUN_DIR/report.html for one run or one sweep; for several, report.html beside them, in the folder they
    share (runs/a and runs/b: runs/report.html), never in whatever folder the command ran from."""
    if len(paths) == 1 and (len(runs) == 1 or is_sweep_dir(Path(paths[0]))):
        return Path(paths[0]) / "report.html"
    return Path(os.path.commonpath([str(Path(p).resolve()) for p in paths])) / "report.html"


def warn_skipped(runs: list[Run]) -> None:
    """What the readers left out of the runs' files, one line each on stderr (the report goes on)."""
    for run in runs:
        for note in run.skipped:
            print(f"trainlab: warning: skipped {text.printable(note)}", file=sys.stderr)


def write_report(paths: list[str | Path], output: Optional[str | Path] = None) -> Path:
    """Write the HTML page and, beside it in `<stem>_files/`, a PNG of each plot. Returns the page's path."""
    runs = load_runs(list(paths))
    warn_skipped(runs)
    out = Path(output) if output else default_output(paths, runs)
    check_report_output(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    search = _search(paths)
    search_plots = objective_plots(runs, search) if search else []
    drawn = plots.make_plots(runs)
    files_dir = out.parent / f"{out.stem}_files"
    files_dir.mkdir(exist_ok=True)
    for plot in [*search_plots, *drawn]:
        with open_no_follow(files_dir / f"{plot.name}.png", "wb") as f:  # often inside a run dir: no links
            f.write(plot.png)
    title = f"trainlab report: {runs[0].name}" if len(runs) == 1 else f"trainlab report: {len(runs)} runs"
    tmp = out.with_name(out.name + ".tmp")
    write_text_no_follow(tmp, html.render(runs, drawn, title, search=search, search_plots=search_plots))
    tmp.replace(out)  # a browser reloading the page never sees half of it
    return out


def check_report_output(out: Path) -> None:
    """The page and its `<stem>_files/` folder can be written: checked before anything is."""
    if out.is_dir():
        raise UsageError(f"--output {out} is a folder; give an HTML file name, e.g. {out / 'report.html'}")
    check_output_dir(out.parent, f"--output's folder for {out}", UsageError)
    files_dir = out.parent / f"{out.stem}_files"
    if files_dir.exists() and not files_dir.is_dir():
        raise UsageError(f"{files_dir} (for the report's plots) is a file; move it or choose another --output")


def _search(paths: list[str | Path]) -> Optional[dict]:
    """The `search` section of a single search sweep's sweep.json (None for runs and grids)."""
    if len(paths) == 1 and is_sweep_dir(Path(paths[0])):
        return search_of(paths[0])
    return None


def report_text(paths: list[str | Path], width: int = 64) -> str:
    runs = load_runs(list(paths))
    warn_skipped(runs)
    ranking = ranking_text(paths[0]) + "\n" if _search(paths) else ""
    return ranking + text.render(runs, width=width)


def runs_table(root: str | Path = "runs", now: Optional[float] = None) -> str:
    """The runs under `root`: name, status, epochs done/planned, best val top-1, date."""
    root = Path(root)
    rows = []
    for path in find_runs(root):
        run = load_run(path)
        warn_skipped([run])
        planned = run.epochs_planned
        best = run.best_val_acc1
        started = parse_time(run.summary.get("started")) or _mtime(path)
        rows.append([
            str(path.relative_to(root)) if path != root else path.name,
            run.display_status(now),
            f"{run.epochs_done}/{planned}" if planned else str(run.epochs_done),
            f"{best:.2f}" if best is not None else "-",
            time.strftime("%Y-%m-%d %H:%M", time.localtime(started)) if started else "-",
        ])
    if not rows:
        return f"no runs under {root}\n"
    return text.format_table(["run", "status", "epochs", "best top-1 %", "date"], rows)


def _mtime(path: Path) -> Optional[float]:
    try:
        return path.stat().st_mtime
    except OSError:
        return None
