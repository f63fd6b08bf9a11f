"""A grid sweep: the cartesian product of settings, one `trainlab train` per run, through an engine.

    trainlab sweep CONFIG --grid optim.name=sgd,adam --grid optim.lr=0.05,0.1 train.epochs=2 [--parallel 2]

Each run lives in SWEEP_DIR/<name>, the name made of its varied values (`name=adam-lr=0.1`). A failed run
(non-zero exit) gets its stderr tail in RUN/error.txt and the sweep goes on. Running the same sweep again
(same --dir) skips finished runs and re-launches the others, which resume from their checkpoints.
SWEEP_DIR/sweep.json records the plan, so `trainlab report SWEEP_DIR` and a plain re-run know it.
At the end the comparison table is printed and written to sweep.md and sweep.csv.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from trainlab.errors import UsageError
from trainlab.paths import write_text_no_follow
from trainlab.report import compare
from trainlab.report.read import ERROR_FILE, SWEEP_FILE, load_sweep, read_json, read_jsonl, read_sweep
from trainlab.report.text import format_table
from trainlab.sweep.engines import Engine, EngineOptions, make_engine
from trainlab.sweep.jobs import STOPPED, Job, Result, describe_exit, last_line, tail
from trainlab.sweep.lock import SweepLock
from trainlab.sweep.plan import PlannedRun, run_names, train_args, validate_runs


@dataclass
class Outcome:
    name: str
    status: str  # finished | skipped | failed | stopped
    returncode: Optional[int] = None
    seconds: float = 0.0
    message: str = ""
    warnings: tuple[str, ...] = ()  # the run's warning lines, from its events.jsonl


def run_warnings(run_dir: Path) -> tuple[str, ...]:
    """One line per warning (or critical) event the run logged: what the sweep prints, the same events the
    run's health lines, its summary and the sweep's table count."""
    lines = []
    for e in read_jsonl(run_dir / "events.jsonl"):
        if e.get("severity") in ("warning", "critical"):
            label = "CRITICAL" if e["severity"] == "critical" else "WARNING"
            lines.append(f"{label} {e.get('kind')} (epoch {e.get('epoch')}, step {e.get('step')}): {e.get('message')}")
    return tuple(lines)


def is_finished(run_dir: Path) -> bool:
    return read_json(run_dir / "summary.json").get("status") == "finished"


def prepare(run_dir: Path) -> None:
    """Clear a previous failure so the run is retried; the run resumes from its checkpoints itself."""
    error = run_dir / ERROR_FILE
    if error.exists():
        error.unlink()
    if run_dir.is_dir() and not any(run_dir.iterdir()):
        run_dir.rmdir()  # only the error was there: the run never started, start clean


def portable_paths(engine: str | Engine, config: Optional[str], sweep_dir: Path) -> tuple[Optional[str], Path]:
    """On another machine a relative path means another file: the config and the sweep dir made absolute for
    the engines that run elsewhere (the local engine keeps them as given, as its start lines show)."""
    name = engine.name if isinstance(engine, Engine) else engine
    if name == "local":
        return config, sweep_dir
    return (str(Path(config).resolve()) if config else None), sweep_dir.resolve()


def make_job(config: Optional[str], overrides: list[str], planned: PlannedRun, sweep_dir: Path, cfg: Any) -> Job:
    run_dir = sweep_dir / planned.name
    return Job(planned.name, train_args(config, overrides, planned, run_dir), run_dir, sweep_dir / "logs",
               nproc=int(cfg.train.nproc), device=str(cfg.train.device), threads=cfg.train.threads)  # fmt: skip


def outcome_of(job: Job, result: Result) -> Outcome:
    """What a run's exit means; a run that did not finish gets RUN/error.txt with its log's tail."""
    if result.returncode == 0:
        return Outcome(job.name, "finished", 0, result.seconds, warnings=run_warnings(job.run_dir))
    log = tail(job.err_path) or tail(job.out_path)
    job.run_dir.mkdir(parents=True, exist_ok=True)
    head = f"exit code {result.returncode}" if result.returncode is not None else result.message
    write_text_no_follow(job.run_dir / ERROR_FILE, f"{head}\n{log}\n")  # in a run dir: never through a link
    message = result.message if result.returncode is None else last_line(job)
    status = "stopped" if result.returncode == STOPPED else "failed"
    return Outcome(job.name, status, result.returncode, result.seconds, message, run_warnings(job.run_dir))


def write_spec(sweep_dir: Path, config: Optional[str], grid: dict[str, list[str]], overrides: list[str],
               planned: list[PlannedRun], engine: str = "local", search: Optional[dict] = None) -> None:
    previous = read_sweep(sweep_dir)
    spec = {
        "config": str(Path(config).resolve()) if config else None,
        "grid": grid,
        "overrides": overrides,
        "runs": [{"name": p.name, "values": p.values} for p in planned],
        "engine": engine,
        "created": previous.get("created") or time.strftime("%Y-%m-%dT%H:%M:%S"),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "command": sys.argv,
    }
    if search is not None:
        spec["search"] = search
    tmp = sweep_dir / (SWEEP_FILE + ".tmp")
    write_text_no_follow(tmp, json.dumps(spec, indent=2) + "\n")
    tmp.replace(sweep_dir / SWEEP_FILE)


def write_tables(sweep_dir: Path, extra: str = "") -> str:
    """sweep.md and sweep.csv from what the runs wrote; returns the table as printed."""
    spec = read_sweep(sweep_dir)
    runs = load_sweep(sweep_dir)
    headers, rows = compare.table(runs)
    grid = ", ".join(f"{k}={','.join(v)}" for k, v in spec.get("grid", {}).items())
    md = [f"# Sweep {sweep_dir.name}\n", f"- config: `{spec.get('config') or '(defaults)'}`"]
    if grid:
        md.append(f"- grid: `{grid}`")
    md += [
        f"- fixed: `{' '.join(spec.get('overrides', [])) or '-'}`",
        f"- updated: {spec.get('updated', '')}\n",
        extra,
        compare.to_markdown(headers, rows),
        "Times are per training epoch (means); `1st epoch s` vs `later ep s` shows warm-up such as compilation.",
    ]
    write_text_no_follow(sweep_dir / "sweep.md", "\n".join(line for line in md if line) + "\n")
    write_text_no_follow(sweep_dir / "sweep.csv", compare.to_csv(runs))
    return format_table(headers, rows)


def run_grid(
    config: Optional[str],
    grid: dict[str, list[str]],
    overrides: list[str],
    sweep_dir: str | Path,
    engine: str | Engine = "local",
    options: Optional[EngineOptions] = None,
    echo: Callable[[str], None] = print,
) -> int:
    """Run (or continue) a grid sweep. Returns 0 when every run finished, 1 when any failed, 130 if interrupted."""
    options = options or EngineOptions()
    if options.parallel is not None and options.parallel < 1:
        raise UsageError(f"--parallel {options.parallel}: give 1 or more")
    config, sweep_dir = portable_paths(engine, config, Path(sweep_dir))
    planned = run_names(grid)
    configs = validate_runs(config, overrides, planned, sweep_dir)
    options.folder = options.folder or sweep_dir / "jobs"
    runner = engine if isinstance(engine, Engine) else make_engine(engine, options)
    jobs = [make_job(config, overrides, p, sweep_dir, cfg) for p, cfg in zip(planned, configs)]
    runner.open()  # an engine that cannot run anything says so before the sweep writes a file
    try:
        for job in jobs:
            runner.check(job)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        with SweepLock(sweep_dir):
            return _run(runner, config, grid, overrides, planned, jobs, sweep_dir, echo)
    finally:
        runner.close()


def _run(runner: Engine, config: Optional[str], grid: dict[str, list[str]], overrides: list[str],
         planned: list[PlannedRun], jobs: list[Job], sweep_dir: Path, echo: Callable[[str], None]) -> int:
    write_spec(sweep_dir, config, grid, overrides, planned, runner.name)
    todo = []
    for job in jobs:
        if is_finished(job.run_dir):
            echo(f"skip {job.name}: finished")
        else:
            todo.append(job)
    parallel = runner.parallel(len(todo))
    pace = f"{parallel} at a time" if runner.options.parallel or runner.default_parallel else "all handed over at once"
    echo(f"sweep {sweep_dir}: {len(planned)} runs, {len(todo)} to run, {pace} ({runner.name} engine)")
    index = {job.name: i for i, job in enumerate(todo, 1)}
    lock = threading.Lock()
    outcomes: list[Outcome] = []

    for job in todo:
        prepare(job.run_dir)

    def started(job: Job, where: str) -> None:
        with lock:
            echo(f"[{index[job.name]}/{len(todo)}] {job.name}: started{where}, log {job.out_path}")

    def finished(job: Job, result: Result) -> None:
        outcome = outcome_of(job, result)
        with lock:
            outcomes.append(outcome)
            i = f"[{index[job.name]}/{len(todo)}] {job.name}"
            count = len(outcome.warnings)
            said = f", {count} warning{'s' if count != 1 else ''}" if count else ""
            if outcome.status == "finished":
                echo(f"{i}: finished in {outcome.seconds:.1f}s{said}")
            else:
                echo(f"{i}: {outcome.status} ({describe_exit(outcome.returncode)}){said}: {outcome.message}  "
                     f"-> {job.run_dir / ERROR_FILE}")  # fmt: skip
            for line in outcome.warnings:
                echo(f"    {job.name}: {line}")

    interrupted = False
    worker = threading.Thread(target=runner.run_all, args=(todo, started, finished), daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.5)  # the main thread stays free for Ctrl-C
    except KeyboardInterrupt:
        # local children got the same SIGINT and checkpoint; remote jobs are asked to stop; wait for them
        interrupted = True
        echo("sweep interrupted: waiting for the running runs to stop; run the same command to continue")
        runner.interrupt()
        worker.join()

    echo("")
    echo(write_tables(sweep_dir).rstrip())
    echo(f"\ntables: {sweep_dir / 'sweep.md'}  {sweep_dir / 'sweep.csv'}  (report: trainlab report {sweep_dir})")
    failed = [o for o in outcomes if o.status != "finished"]
    if failed:
        echo(f"{len(failed)} of {len(planned)} runs failed: " + ", ".join(f"{o.name} ({describe_exit(o.returncode)})"
                                                                        for o in failed))
    if interrupted:
        return 130
    return 1 if failed else 0
