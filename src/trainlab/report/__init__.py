"""Reports from run directories: comparison tables, plots, a self-contained HTML page, text charts.

Reads only what runs wrote to disk (docs/run-dir.md), so it works while a run is going and after a crash.
"""

from trainlab.report.pages import report_text, runs_table, write_report
from trainlab.report.read import Run, find_runs, load_run, load_runs

__all__ = ["Run", "find_runs", "load_run", "load_runs", "report_text", "runs_table", "write_report"]
