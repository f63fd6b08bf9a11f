"""`trainlab report` and `trainlab runs`: glue between the command line and the readers/renderers."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional

from trainlab.errors import UsageError
from trainlab.paths import check_output_dir
from trainlab.report import html, plots, text
from trainlab.report.read import Run, find_runs, is_sweep_dir, load_run, load_runs, parse_time


def default_output(paths: list[str | Path], runs: list[Run]) -> Path:
    """RUN_DIR/report.html for one run or one sweep, ./report.html for several."""
    if len(paths) == 1 and (len(runs) == 1 or is_sweep_dir(Path(paths[0]))):
        return Path(paths[0]) / "report.html"
    return Path("report.html")


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
    drawn = plots.make_plots(runs)
    files_dir = out.parent / f"{out.stem}_files"
    files_dir.mkdir(exist_ok=True)
    for plot in drawn:
        (files_dir / f"{plot.name}.png").write_bytes(plot.png)
    title = f"trainlab report: {runs[0].name}" if len(runs) == 1 else f"trainlab report: {len(runs)} runs"
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(html.render(runs, drawn, title), encoding="utf-8")
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


def report_text(paths: list[str | Path], width: int = 64) -> str:
    runs = load_runs(list(paths))
    warn_skipped(runs)
    return text.render(runs, width=width)


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


def cmd_report(args: argparse.Namespace) -> int:
    if args.text:
        print(report_text(args.run_dirs), end="")
        return 0
    out = write_report(args.run_dirs, args.output)
    print(f"report: {out}  (plots in {out.parent / (out.stem + '_files')})")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    print(runs_table(args.dir), end="")
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    report = subparsers.add_parser(
        "report",
        help="HTML (or --text) report of one or more runs or sweeps",
        description="Draw a self-contained HTML report (plots embedded; PNGs written beside it) from run "
        "directories. A sweep directory expands to its runs; several runs are overlaid and compared.",
    )
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run or sweep directories")
    report.add_argument("-o", "--output", help="HTML file (default RUN_DIR/report.html, ./report.html for several)")
    report.add_argument("--text", action="store_true", help="print a summary table and text charts instead")
    report.set_defaults(func=cmd_report)

    runs = subparsers.add_parser(
        "runs", help="list the runs under a folder", description="List run directories under DIR with their status."
    )
    runs.add_argument("dir", nargs="?", default="runs", metavar="DIR", help="folder to search (default: runs)")
    runs.set_defaults(func=cmd_runs)
