"""`trainlab sweep`: run the cartesian product of a grid of settings, one `trainlab train` process per run.

    trainlab sweep CONFIG --grid optim.name=sgd,adam --grid optim.lr=0.05,0.1 train.epochs=2 [--parallel 2]

Each run lives in SWEEP_DIR/<name>, the name made of its varied values (`name=adam-lr=0.1`). A failed run
(non-zero exit) gets its stderr tail in RUN/error.txt and the sweep goes on. Running the same sweep again
(same --dir) skips finished runs and re-launches the others, which resume from their checkpoints.
SWEEP_DIR/sweep.json records the plan, so `trainlab report SWEEP_DIR` and a plain re-run know it.
At the end the comparison table is printed and written to sweep.md and sweep.csv.

GPUs: each run is handed its own GPU(s) through the child's CUDA_VISIBLE_DEVICES -- the least busy of
the visible ones (the user's CUDA_VISIBLE_DEVICES list, else every GPU torch sees), train.nproc of them
for a multi-process run, returned when the run ends -- so `--parallel N` on N GPUs puts one run on each.
More runs than GPUs share the least busy. A run whose train.device names a device (cuda:N, cpu, mps)
keeps the user's choice and environment. The start line says which.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from trainlab.errors import TrainlabError, UsageError
from trainlab.paths import write_text_no_follow
from trainlab.report import compare
from trainlab.report.read import ERROR_FILE, SWEEP_FILE, load_sweep, read_json, read_jsonl, read_sweep
from trainlab.report.text import format_table

ERROR_TAIL_LINES = 40
MAX_NAME = 100


@dataclass
class PlannedRun:
    name: str
    settings: dict[str, str]  # every grid key -> its value in this run
    values: dict[str, str]  # the keys that vary across the sweep (names and table columns)

    def overrides(self) -> list[str]:
        return [f"{key}={value}" for key, value in self.settings.items()]


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


# ------------------------------------------------------------------ planning


def split_values(text: str) -> list[str]:
    """Split `v1,v2,...` on the commas outside brackets, so list values like `[0.9,0.99]` stay whole."""
    values, depth, current = [], 0, ""
    for char in text:
        if char in "[({":
            depth += 1
        elif char in "])}":
            depth -= 1
        if char == "," and depth == 0:
            values.append(current.strip())
            current = ""
        else:
            current += char
    values.append(current.strip())
    return values


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or "." not in key:
            raise UsageError(f"--grid '{item}' is not section.key=v1,v2,... (e.g. --grid optim.lr=0.05,0.1)")
        values = split_values(text)
        if any(v == "" for v in values):
            raise UsageError(f"--grid '{item}' has an empty value; write values separated by commas")
        if key in grid:
            raise UsageError(f"--grid names '{key}' twice; give all its values in one --grid {key}=v1,v2")
        grid[key] = list(dict.fromkeys(values))  # repeated values would only run twice
    return grid


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", text).strip("_.") or "_"


def run_names(grid: dict[str, list[str]]) -> list[PlannedRun]:
    """The cartesian product, each run named from the values that vary (filesystem-safe and unique)."""
    keys = list(grid)
    varied = [k for k in keys if len(grid[k]) > 1] or keys
    short = {k: k.rsplit(".", 1)[-1] for k in varied}
    if len(set(short.values())) < len(short):  # e.g. optim.lr and sched.lr: keep the full keys
        short = {k: k for k in varied}
    planned, used = [], set()
    for combo in itertools.product(*(grid[k] for k in keys)):
        settings = dict(zip(keys, combo))
        name = "-".join(f"{short[k]}={settings[k]}" for k in varied) if varied else "run"
        name = _safe(name)
        if len(name) > MAX_NAME:
            name = name[: MAX_NAME - 9] + "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
        base, n = name, 2
        while name in used:
            name, n = f"{base}-{n}", n + 1
        used.add(name)
        planned.append(PlannedRun(name, settings, {k: settings[k] for k in varied if len(grid[k]) > 1}))
    return planned


def split_items(items: list[str], grid_items: list[str]) -> tuple[Optional[str], dict[str, list[str]], list[str]]:
    """CONFIG, grid and fixed overrides from the positional items and the --grid values.

    `--grid` takes several values, so `--grid a.b=1,2 c.d=3` puts `c.d=3` in the grid too: a one-value
    grid key is a fixed setting that does not appear in run names. A CONFIG caught by --grid is found.
    """
    config: Optional[str] = None
    overrides: list[str] = []
    grid_entries: list[str] = []
    for item in [*items, *grid_items]:
        if "=" not in item:
            if item in grid_items and not _looks_like_config(item):
                raise UsageError(f"--grid '{item}' has no values; write --grid {item}=v1,v2 (values separated by commas)")
            if config is not None:
                raise UsageError(f"two configs given ('{config}', '{item}'); give one CONFIG, then key=value")
            config = item
        elif item in grid_items:
            grid_entries.append(item)
        else:
            overrides.append(item)
    if config is not None and not Path(config).is_file():
        raise UsageError(f"config file not found: {config}")
    return config, parse_grid(grid_entries), overrides


def _looks_like_config(item: str) -> bool:
    """A word without '=' after --grid is a CONFIG only if it names a file or a YAML name; else it is a grid
    key whose values were forgotten (`--grid optim.lr`), and saying 'config file not found' would mislead."""
    return Path(item).is_file() or item.endswith((".yaml", ".yml"))


def validate_runs(config: Optional[str], overrides: list[str], planned: list[PlannedRun], sweep_dir: Path) -> None:
    """Load every run's config as its `trainlab train` would, before anything is launched or written: a bad
    key or value stops the sweep with that run's one-line error instead of failing each run in its log."""
    from trainlab.config import load_config
    from trainlab.errors import TrainlabError
    from trainlab.paths import check_output_dir

    check_output_dir(sweep_dir, "--dir", UsageError)
    for p in planned:
        try:
            load_config(config, train_overrides(overrides, p, sweep_dir / p.name))
        except TrainlabError as exc:
            raise type(exc)(f"sweep run {p.name}: {exc} (no run was started)") from None


# ------------------------------------------------------------------ running


def train_overrides(overrides: list[str], run: PlannedRun, run_dir: Path) -> list[str]:
    """Every key=value one run's `trainlab train` gets: fixed ones, its grid values, name and dir."""
    extra = [] if any(o.startswith("run.name=") for o in overrides) else [f"run.name={run.name}"]
    return [*overrides, *run.overrides(), *extra, f"run.dir={run_dir}"]


def train_command(config: Optional[str], overrides: list[str], run: PlannedRun, run_dir: Path) -> list[str]:
    cmd = [sys.executable, "-m", "trainlab", "train"]
    if config:
        cmd.append(config)
    return [*cmd, *train_overrides(overrides, run, run_dir)]


def _tail(path: Path, lines: int = ERROR_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _is_finished(run_dir: Path) -> bool:
    return read_json(run_dir / "summary.json").get("status") == "finished"


def _prepare(run_dir: Path) -> None:
    """Clear a previous failure so the run is retried; the engine resumes from its checkpoints itself."""
    error = run_dir / ERROR_FILE
    if error.exists():
        error.unlink()
    if run_dir.is_dir() and not any(run_dir.iterdir()):
        run_dir.rmdir()  # only the error was there: the engine never started, start clean


def _run_one(
    planned: PlannedRun, config: Optional[str], overrides: list[str], sweep_dir: Path, env: dict[str, str]
) -> Outcome:
    run_dir = sweep_dir / planned.name
    _prepare(run_dir)
    logs = sweep_dir / "logs"
    logs.mkdir(exist_ok=True)
    out_path, err_path = logs / f"{planned.name}.out", logs / f"{planned.name}.err"
    start = time.perf_counter()
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.run(
            train_command(config, overrides, planned, run_dir), stdout=out, stderr=err, env=env,
            stdin=subprocess.DEVNULL,
        )
    seconds = time.perf_counter() - start
    if proc.returncode == 0:
        return Outcome(planned.name, "finished", 0, seconds, warnings=run_warnings(run_dir))
    tail = _tail(err_path) or _tail(out_path)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_no_follow(run_dir / ERROR_FILE, f"exit code {proc.returncode}\n{tail}\n")  # not through a link
    last = next((ln for ln in reversed(tail.splitlines()) if ln.strip()), "no output")
    status = "stopped" if proc.returncode == 143 else "failed"
    return Outcome(planned.name, status, proc.returncode, seconds, last.strip(), run_warnings(run_dir))


# ------------------------------------------------------------------ devices


def visible_gpus(environ: Optional[dict[str, str]] = None) -> list[str]:
    """The GPUs a sweep may hand out, as CUDA_VISIBLE_DEVICES entries: the user's own list when set (indices,
    UUIDs or MIG names, kept as written), else one index per GPU torch counts."""
    environ = os.environ if environ is None else environ
    if "CUDA_VISIBLE_DEVICES" in environ:
        entries = []
        for entry in environ["CUDA_VISIBLE_DEVICES"].split(","):
            entry = entry.strip()
            if not entry or entry.startswith("-"):  # CUDA stops at the first invalid entry
                break
            entries.append(entry)
        return entries
    try:
        import torch
    except ImportError:
        return []
    return [str(i) for i in range(torch.cuda.device_count())]


class GpuPool:
    """Hands each run the least busy GPUs (ties: the first listed) and takes them back when it ends."""

    def __init__(self, gpus: list[str]) -> None:
        self.busy = {gpu: 0 for gpu in gpus}

    def take(self, count: int) -> list[str]:
        chosen = sorted(self.busy, key=lambda gpu: self.busy[gpu])[: max(count, 0)]  # sorted() is stable
        for gpu in chosen:
            self.busy[gpu] += 1
        return chosen

    def give_back(self, gpus: list[str]) -> None:
        for gpu in gpus:
            self.busy[gpu] -= 1


def gpus_wanted(config: Optional[str], overrides: list[str], planned: PlannedRun) -> tuple[int, str]:
    """How many GPUs the run needs from the pool (train.nproc), or 0 and why when the user's train.device
    names a device (theirs to keep) or the config does not load (the run will say so itself)."""
    from trainlab.config import load_config

    try:
        cfg = load_config(config, [*overrides, *planned.overrides()])
    except TrainlabError:
        return 0, ""
    device = str(cfg.train.device).strip().lower()
    if device not in ("auto", "cuda"):
        return 0, f"train.device={cfg.train.device} (as set)"
    return max(1, int(cfg.train.nproc)), ""


def _child_env(parallel: int) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if parallel > 1 and "OMP_NUM_THREADS" not in env:
        # N runs share the CPU: without this each torch process would start one thread per core.
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // parallel))
    return env


def write_spec(sweep_dir: Path, config: Optional[str], grid: dict[str, list[str]], overrides: list[str],
               planned: list[PlannedRun]) -> None:
    spec = {
        "config": str(Path(config).resolve()) if config else None,
        "grid": grid,
        "overrides": overrides,
        "runs": [{"name": p.name, "values": p.values} for p in planned],
        "created": read_sweep(sweep_dir).get("created") or time.strftime("%Y-%m-%dT%H:%M:%S"),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "command": sys.argv,
    }
    tmp = sweep_dir / (SWEEP_FILE + ".tmp")
    tmp.write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
    tmp.replace(sweep_dir / SWEEP_FILE)


def write_tables(sweep_dir: Path) -> str:
    """sweep.md and sweep.csv from what the runs wrote; returns the table as printed."""
    spec = read_sweep(sweep_dir)
    runs = load_sweep(sweep_dir)
    headers, rows = compare.table(runs)
    grid = ", ".join(f"{k}={','.join(v)}" for k, v in spec.get("grid", {}).items())
    md = [
        f"# Sweep {sweep_dir.name}\n",
        f"- config: `{spec.get('config') or '(defaults)'}`",
        f"- grid: `{grid}`",
        f"- fixed: `{' '.join(spec.get('overrides', [])) or '-'}`",
        f"- updated: {spec.get('updated', '')}\n",
        compare.to_markdown(headers, rows),
        "Times are per training epoch (means); `1st epoch s` vs `later ep s` shows warm-up such as compilation.",
    ]
    (sweep_dir / "sweep.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    (sweep_dir / "sweep.csv").write_text(compare.to_csv(runs), encoding="utf-8")
    return format_table(headers, rows)


def run_sweep(
    config: Optional[str],
    grid: dict[str, list[str]],
    overrides: list[str],
    sweep_dir: str | Path,
    parallel: int = 1,
    echo: Callable[[str], None] = print,
    gpus: Optional[list[str]] = None,
) -> int:
    """Run (or continue) a sweep. Returns 0 when every run finished, 1 when any failed.

    `gpus`: the CUDA_VISIBLE_DEVICES entries to hand out (default: visible_gpus())."""
    if parallel < 1:
        raise UsageError(f"--parallel {parallel}: give 1 or more")
    sweep_dir = Path(sweep_dir)
    planned = run_names(grid)
    validate_runs(config, overrides, planned, sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    write_spec(sweep_dir, config, grid, overrides, planned)
    todo = []
    for p in planned:
        if _is_finished(sweep_dir / p.name):
            echo(f"skip {p.name}: finished")
        else:
            todo.append(p)
    echo(f"sweep {sweep_dir}: {len(planned)} runs, {len(todo)} to run, {parallel} at a time")

    env = _child_env(parallel)
    pool = GpuPool(visible_gpus(env) if gpus is None else gpus)
    lock = threading.Lock()  # one lock for the pool and the printing: the lines show who held which GPU
    stop = threading.Event()
    outcomes: list[Outcome] = []

    def work(index: int, p: PlannedRun) -> None:
        if stop.is_set():
            return
        count, kept = gpus_wanted(config, overrides, p) if pool.busy else (0, "")
        with lock:
            taken = pool.take(count)
            where = kept and f" on {kept}"
            if taken:
                shared = max(pool.busy[g] for g in taken) - 1
                where = f" on GPU{'s' if len(taken) > 1 else ''} {','.join(taken)}" + (
                    f" (shared with {shared} other run{'s' if shared > 1 else ''})" if shared else "")
            echo(f"[{index}/{len(todo)}] {p.name}: started{where}, log {sweep_dir / 'logs' / (p.name + '.out')}")
        child_env = dict(env, CUDA_VISIBLE_DEVICES=",".join(taken)) if taken else env
        try:
            outcome = _run_one(p, config, overrides, sweep_dir, child_env)
        finally:
            with lock:
                pool.give_back(taken)
        with lock:
            outcomes.append(outcome)
            count = len(outcome.warnings)
            said = f", {count} warning{'s' if count != 1 else ''}" if count else ""
            if outcome.status == "finished":
                echo(f"[{index}/{len(todo)}] {p.name}: finished in {outcome.seconds:.1f}s{said}")
            else:
                echo(f"[{index}/{len(todo)}] {p.name}: {outcome.status} (exit {outcome.returncode}){said}: "
                     f"{outcome.message}  -> {sweep_dir / p.name / ERROR_FILE}")
            for line in outcome.warnings:
                echo(f"    {p.name}: {line}")

    interrupted = False
    executor = ThreadPoolExecutor(max_workers=parallel)
    try:
        futures = [executor.submit(work, i, p) for i, p in enumerate(todo, 1)]
        for future in futures:
            future.result()
    except KeyboardInterrupt:
        # the children got the same SIGINT and checkpoint; start nothing new and wait for them
        interrupted = True
        stop.set()
        echo("sweep interrupted: waiting for the running runs to stop; run the same command to continue")
    finally:
        executor.shutdown(wait=True, cancel_futures=True)

    echo("")
    echo(write_tables(sweep_dir).rstrip())
    echo(f"\ntables: {sweep_dir / 'sweep.md'}  {sweep_dir / 'sweep.csv'}  (report: trainlab report {sweep_dir})")
    failed = [o for o in outcomes if o.status != "finished"]
    if failed:
        echo(f"{len(failed)} of {len(planned)} runs failed: " + ", ".join(f"{o.name} (exit {o.returncode})"
                                                                        for o in failed))
    if interrupted:
        return 130
    return 1 if failed else 0


# ------------------------------------------------------------------ command line


def cmd_sweep(args: argparse.Namespace) -> int:
    config, grid, overrides = split_items(args.items, args.grid or [])
    sweep_dir = Path(args.dir) if args.dir else Path("runs") / f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    if not grid and args.dir and (sweep_dir / SWEEP_FILE).is_file() and config is None:
        # `trainlab sweep --dir D` alone continues the sweep recorded there
        spec = read_sweep(sweep_dir)
        config, grid = spec.get("config"), spec.get("grid", {})
        overrides = [*spec.get("overrides", []), *overrides]
    if not grid:
        raise UsageError("no grid: give at least one --grid section.key=v1,v2 (or --dir of an existing sweep)")
    return run_sweep(config, grid, overrides, sweep_dir, args.parallel)


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sweep",
        help="run a grid of trainings and compare them",
        description="Run the cartesian product of --grid values, one `trainlab train` per run in SWEEP_DIR/<name>. "
        "Failed runs are recorded and the sweep continues; re-running with the same --dir skips finished "
        "runs and resumes the others. Writes sweep.md and sweep.csv. Exit 0 when all finished, 1 if any failed.",
    )
    p.add_argument("items", nargs="*", metavar="CONFIG|key=value", help="a YAML config, then fixed overrides")
    p.add_argument("--grid", action="extend", nargs="+", metavar="key=v1,v2",
                   help="a key and its values (repeatable); key=value entries with one value are fixed settings")
    p.add_argument("--dir", help="sweep directory (default runs/sweep-<timestamp>); reuse it to continue")
    p.add_argument("--parallel", type=int, default=1, metavar="N", help="runs at a time (default 1)")
    p.set_defaults(func=cmd_sweep)
