"""`trainlab report` and `trainlab runs`: arguments in, the report module's pages out."""

from __future__ import annotations

import argparse
import atexit
import shutil
import tempfile
from pathlib import Path

from trainlab.report.pages import report_text, runs_table, write_report
from trainlab.state import remote


def _local(paths: list[str]) -> list[str]:
    """Run dirs named by a store URL (s3://...) are read from a local copy of their small files."""
    if not any(remote.is_url(p) for p in paths):
        return paths
    scratch = Path(tempfile.mkdtemp(prefix="trainlab-report-"))
    atexit.register(shutil.rmtree, scratch, True)
    local = []
    for index, path in enumerate(paths):
        if remote.is_url(path):
            dest = scratch / str(index) / (path.rstrip("/").rsplit("/", 1)[-1] or "run")
            remote.fetch_run_dirs(path, dest)
            local.append(str(dest))
        else:
            local.append(path)
    return local


def cmd_report(args: argparse.Namespace) -> int:
    run_dirs = _local(args.run_dirs)
    if args.text:
        print(report_text(run_dirs), end="")
        return 0
    output = args.output
    if output is None and run_dirs != args.run_dirs:  # not into the temporary copy: here
        output = "report.html"
    out = write_report(run_dirs, output)
    where = " (beside the runs, in the folder they share; -o names another)" if output is None and len(run_dirs) > 1 else ""
    print(f"report: {out}{where}  (plots in {out.parent / (out.stem + '_files')})")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    print(runs_table(_local([args.dir])[0]), end="")
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    report = subparsers.add_parser(
        "report",
        help="HTML (or --text) report of one or more runs or sweeps",
        description="Draw a self-contained HTML report (plots embedded; PNGs written beside it) from run "
        "directories. A sweep directory expands to its runs; several runs are overlaid and compared.",
    )
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run or sweep directories")
    report.add_argument("-o", "--output", help="HTML file (default RUN_DIR/report.html; for several, report.html in the folder they share)")
    report.add_argument("--text", action="store_true", help="print a summary table and text charts instead")
    report.set_defaults(func=cmd_report)

    runs = subparsers.add_parser(
        "runs", help="list the runs under a folder", description="List run directories under DIR with their status."
    )
    runs.add_argument("dir", nargs="?", default="runs", metavar="DIR", help="folder to search (default: runs)")
    runs.set_defaults(func=cmd_runs)
