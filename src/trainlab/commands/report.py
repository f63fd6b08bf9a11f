"""`trainlab report` and `trainlab runs`: arguments in, the report module's pages out."""

from __future__ import annotations

import argparse

from trainlab.report.pages import report_text, runs_table, write_report


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
