"""`trainlab sweep`: arguments in, trainlab.sweep's grid or search out (the logic lives in src/trainlab/sweep/).

    trainlab sweep CONFIG --grid optim.name=sgd,adam --grid optim.lr=0.05,0.1 [--parallel 2] [--engine ray]
    trainlab sweep CONFIG --search optuna --trials 16 --space optim.lr=1e-5:1:log --objective val_acc1
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Optional

from trainlab.commands.argtypes import positive_int
from trainlab.errors import UsageError
from trainlab.report.read import SWEEP_FILE, read_sweep
from trainlab.sweep.engines import ENGINES, EngineOptions
from trainlab.sweep.engines.local import GpuPool, visible_gpus  # noqa: F401 - kept importable from here
from trainlab.sweep.grid import run_grid
from trainlab.sweep.plan import parse_grid, run_names, split_items, split_values  # noqa: F401 - likewise
from trainlab.sweep.trial import OBJECTIVES, PRUNERS

RAY_FLAGS = ("ray_address", "ray_max_retries")
SUBMITIT_FLAGS = ("submitit_cluster", "slurm_partition", "slurm_gpus_per_task", "slurm_cpus_per_task", "slurm_time",
                  "slurm_signal_delay", "slurm_option")  # fmt: skip
SEARCH_FLAGS = ("space", "trials", "objective", "pruner", "storage", "study", "sampler_seed", "watch_prune")


def run_sweep(config: Optional[str], grid: dict[str, list[str]], overrides: list[str], sweep_dir: str | Path,
              parallel: int = 1, echo=print, gpus: Optional[list[str]] = None) -> int:  # fmt: skip
    """The grid on the local engine (the name and signature this function had before the engines)."""
    return run_grid(config, grid, overrides, sweep_dir, "local", EngineOptions(parallel=parallel, gpus=gpus), echo)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _given(args: argparse.Namespace, names: tuple[str, ...]) -> list[str]:
    return [_flag(n) for n in names if getattr(args, n) is not None]


def engine_options(args: argparse.Namespace) -> EngineOptions:
    """The engine's options; a flag of another engine is a mistake worth saying (it would be ignored)."""
    for engine, names in (("ray", RAY_FLAGS), ("submitit", SUBMITIT_FLAGS)):
        stray = _given(args, names)
        if stray and args.engine != engine:
            raise UsageError(f"{stray[0]} is for --engine {engine} (this sweep uses --engine {args.engine})")
    options = EngineOptions(parallel=args.parallel, ray_address=args.ray_address)
    if args.ray_max_retries is not None:
        options.ray_max_retries = args.ray_max_retries
    options.submitit_cluster = args.submitit_cluster or "slurm"
    options.slurm_partition = args.slurm_partition
    options.slurm_gpus_per_task = args.slurm_gpus_per_task
    options.slurm_cpus_per_task = args.slurm_cpus_per_task
    if args.slurm_time is not None:
        from trainlab.sweep.engines.submitit_engine import parse_time

        try:
            options.slurm_time_min = parse_time(args.slurm_time)
        except ValueError:
            raise UsageError(f"--slurm-time {args.slurm_time}: give minutes, HH:MM:SS or D-HH:MM:SS") from None
    if args.slurm_signal_delay is not None:
        options.slurm_signal_delay_s = args.slurm_signal_delay
    for item in args.slurm_option or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--slurm-option {item}: write KEY=VALUE (an sbatch long option, e.g. account=proj)")
        options.slurm_options[key.strip().lstrip("-")] = value.strip()
    return options


def cmd_sweep(args: argparse.Namespace) -> int:
    config, grid, overrides = split_items(args.items, args.grid or [])
    sweep_dir = Path(args.dir) if args.dir else Path("runs") / f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    spec = read_sweep(sweep_dir) if args.dir and (sweep_dir / SWEEP_FILE).is_file() else {}
    search = args.search
    if not grid and not search and not args.space and spec and config is None:
        # `trainlab sweep --dir D` alone continues the sweep recorded there, grid or search
        config = spec.get("config")
        overrides = [*spec.get("overrides", []), *overrides]
        grid = spec.get("grid", {})
        if spec.get("search"):
            search = spec["search"].get("kind", "optuna")
            recorded = spec["search"]
            args.space = [f"{k}={v}" for k, v in recorded.get("space", {}).items()]
            for name, key in (("trials", "trials"), ("objective", "objective"), ("pruner", "pruner"),
                              ("sampler_seed", "sampler_seed"), ("watch_prune", "watch_prune"),
                              ("storage", "storage"), ("study", "study")):  # fmt: skip
                if getattr(args, name) is None:
                    setattr(args, name, recorded.get(key))
    options = engine_options(args)
    if search:
        if grid:
            raise UsageError("--grid and --search are two kinds of sweep; give one (a grid key can be a --space choice)")
        return _search(args, config, overrides, sweep_dir, options)
    stray = _given(args, SEARCH_FLAGS)
    if stray:
        raise UsageError(f"{stray[0]} is for a search: add --search optuna (or use --grid for a grid)")
    if not grid:
        raise UsageError("no grid: give at least one --grid section.key=v1,v2, or --search optuna with --space "
                         "(or --dir of an existing sweep)")  # fmt: skip
    return run_grid(config, grid, overrides, sweep_dir, args.engine, options)


def _search(args: argparse.Namespace, config: Optional[str], overrides: list[str], sweep_dir: Path,
            options: EngineOptions) -> int:  # fmt: skip
    from trainlab.sweep.optuna_search import SearchSpec, run_search
    from trainlab.sweep.space import parse_space

    spec = SearchSpec(
        space=parse_space(args.space or []),
        trials=args.trials if args.trials is not None else 16,
        objective=args.objective or "val_acc1",
        pruner=args.pruner or "median",
        storage=args.storage,
        study=args.study,
        sampler_seed=args.sampler_seed,
        watch_prune=True if args.watch_prune is None else bool(args.watch_prune),
    )
    return run_search(config, overrides, sweep_dir, spec, args.engine, options)


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sweep",
        help="run a grid or an Optuna search of trainings and compare them",
        description="Run the cartesian product of --grid values, or an Optuna search (--search optuna --space ...), "
        "one `trainlab train` per run in SWEEP_DIR/<name>, on this machine, a Ray cluster or SLURM (--engine). "
        "Failed runs are recorded and the sweep continues; re-running with the same --dir skips finished runs "
        "(finished trials) and resumes the others. Writes sweep.md and sweep.csv. Exit 0 when all finished, 1 if "
        "any failed or stopped before the end.",
    )
    p.add_argument("items", nargs="*", metavar="CONFIG|key=value", help="a YAML config, then fixed overrides")
    p.add_argument("--grid", action="extend", nargs="+", metavar="key=v1,v2",
                   help="a key and its values (repeatable); key=value entries with one value are fixed settings")
    p.add_argument("--dir", help="sweep directory (default runs/sweep-<timestamp>); reuse it to continue")
    p.add_argument("--parallel", type=positive_int, default=None, metavar="N",
                   help="runs at a time (default 1; a grid on ray/submitit: all at once, the cluster paces them)")
    p.add_argument("--engine", choices=ENGINES, default="local",
                   help="local: processes here (default); ray: one Ray task per run; submitit: one SLURM job per run")

    s = p.add_argument_group("search (extra trainlab[optuna])")
    s.add_argument("--search", choices=("optuna",), help="search with Optuna instead of a grid")
    s.add_argument("--space", action="append", metavar="key=low:high[:log|:int] | key=a,b",
                   help="a searched key (repeatable): a float range (:log on a log scale), an :int range, or choices")
    s.add_argument("--trials", type=positive_int, help="trials in the study (default 16)")
    s.add_argument("--objective", help=f"metrics.csv column to optimise (default val_acc1; maximised, a *_loss "
                                       f"minimised): {', '.join(OBJECTIVES)}")
    s.add_argument("--pruner", choices=PRUNERS, help="Optuna's pruner on each epoch's objective (default median)")
    s.add_argument("--watch-prune", action=argparse.BooleanOptionalAction, default=None,
                   help="stop a trial at once on the watch's not_learning, divergence or nonfinite event (default on)")
    s.add_argument("--storage", help="Optuna storage URL (default sqlite:///SWEEP_DIR/study.db)")
    s.add_argument("--study", help="study name (default: the sweep directory's name)")
    s.add_argument("--sampler-seed", type=int, help="seed of the TPE sampler (same seed, same first settings)")

    r = p.add_argument_group("--engine ray (extra trainlab[ray])")
    r.add_argument("--ray-address", help="the cluster (HOST:PORT, ray://HOST:PORT; default RAY_ADDRESS, else a "
                                         "local instance)")
    r.add_argument("--ray-max-retries", type=int, help="retries of a run whose worker or node dies (default 3)")

    q = p.add_argument_group("--engine submitit (extra trainlab[slurm])")
    q.add_argument("--submitit-cluster", choices=("slurm", "local"),
                   help="slurm (default), or local: the same jobs through submitit's local executor")
    q.add_argument("--slurm-partition")
    q.add_argument("--slurm-gpus-per-task", type=int, help="default train.nproc (0 with train.device=cpu)")
    q.add_argument("--slurm-cpus-per-task", type=int)
    q.add_argument("--slurm-time", help="time limit: minutes, HH:MM:SS or D-HH:MM:SS")
    q.add_argument("--slurm-signal-delay", type=int, metavar="S",
                   help="seconds before the limit that SLURM sends USR1 (checkpoint, then requeue; default 120)")
    q.add_argument("--slurm-option", action="append", metavar="KEY=VALUE",
                   help="any sbatch long option (repeatable): account=proj, qos=high, mem=32G")
    p.set_defaults(func=cmd_sweep)
