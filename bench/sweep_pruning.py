"""What pruning by the watch saves on an LR search: the same Optuna study with and without it.

    PYTHONPATH=src python bench/sweep_pruning.py [--trials 16] [--seed 0] [--parallel 2] [--epochs 4]
                                                 [--train-size 960] [--pruner none] [--dir DIR]

Runs `trainlab sweep --search optuna --space optim.lr=1e-6:1:log` twice with the same TPE sampler seed:
`--watch-prune` (a trial whose watch says not_learning, divergence or nonfinite stops at once) and
`--no-watch-prune`; `--pruner` (default none) is the same in both, so the difference is the watch alone. The
range holds hopeless values (the bottom decades cannot train the tiny model in its budget). Each condition's
figures come from its trials' RUN/trial.json and summary.json: optimizer steps trained (all trials, and the
hopeless ones', LR < 1e-3), trials pruned, the best val_acc1 found and the trial that found it, the runs' own
time (summed wall_time_s) and the sweep's wall time (with the load average at its start), printed as rows of
the "Sweep: watch pruning on an LR search" table in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOPELESS_LR = 1e-3


def run_condition(name: str, flag: str, args: argparse.Namespace, root: Path) -> dict:
    sweep = root / name
    cmd = [
        sys.executable, "-m", "trainlab", "sweep", "data.name=shapes", f"data.train_size={args.train_size}",
        "data.val_size=320", "data.img_size=16", "data.batch_size=32", "model.name=resnet8",
        f"train.epochs={args.epochs}", "run.tensorboard=false", "train.threads=1", "watch.print_every=5",
        "--search", "optuna", "--trials", str(args.trials), "--space", "optim.lr=1e-6:1:log",
        "--sampler-seed", str(args.seed), "--pruner", args.pruner, flag, "--parallel", str(args.parallel),
        "--dir", str(sweep),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    load = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{name}: sweep exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    trials = [json.loads(p.read_text()) for p in sorted(sweep.glob("trial-*/trial.json"))]
    # the runs' own time (summary.json wall_time_s: build, data, steps, validation, checkpoints), without the
    # seconds each process spends importing before it starts
    run_s = sum(json.loads(p.read_text()).get("wall_time_s") or 0 for p in sweep.glob("trial-*/summary.json"))
    steps = sum(int(t.get("steps") or 0) for t in trials)
    planned = sum(int(t.get("planned_steps") or 0) for t in trials)
    hopeless = sum(int(t.get("steps") or 0) for t in trials if t["params"]["optim.lr"] < HOPELESS_LR)
    hopeless_n = sum(1 for t in trials if t["params"]["optim.lr"] < HOPELESS_LR)
    pruned = [t for t in trials if t["state"] == "PRUNED"]
    kinds: dict[str, int] = {}
    for t in pruned:
        why = t.get("pruned_by") or {}
        kind = why.get("pruner", why.get("kind", "?"))
        kinds[kind] = kinds.get(kind, 0) + 1
    complete = [t for t in trials if t["state"] == "COMPLETE" and t.get("value") is not None]
    best = max(complete, key=lambda t: t["value"]) if complete else None
    return {
        "name": name, "trials": len(trials), "steps": steps, "planned": planned, "hopeless_steps": hopeless,
        "hopeless_n": hopeless_n, "pruned": len(pruned), "kinds": kinds, "wall": wall, "run_s": run_s, "load": load,
        "best": best["value"] if best else None, "best_trial": best["number"] if best else None,
        "best_lr": best["params"]["optim.lr"] if best else None, "failed": sum(t["state"] == "FAIL" for t in trials),
    }  # fmt: skip


def row(result: dict, args: argparse.Namespace, machine: str, date: str) -> str:
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(result["kinds"].items())) or "-"
    best = (f"{result['best']:.2f} (trial {result['best_trial']}, lr {result['best_lr']:.3g})"
            if result["best"] is not None else "-")  # fmt: skip
    import torch

    return (f"| {date} | {machine} | {result['trials']}, lr 1e-6..1 log, seed {args.seed}, {args.epochs} ep x "
            f"{args.train_size // 32} steps | {result['name']} | {result['steps']} | {result['steps'] / max(1, result['planned']):.0%} "
            f"| {result['hopeless_steps']} ({result['hopeless_n']} trials) | {result['pruned']} ({kinds}) | {best} "
            f"| {result['run_s']:.0f} | {result['wall']:.0f} (load {result['load']:.1f}) | {torch.__version__} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-size", type=int, default=960)
    parser.add_argument("--pruner", default="none", choices=("none", "median", "hyperband"))
    parser.add_argument("--dir", help="where the two sweeps go (default: a temporary folder, kept)")
    parser.add_argument("--machine", default=f"{platform.machine()}, {os.cpu_count()} cores")
    args = parser.parse_args()
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="sweep-pruning-"))
    date = datetime.date.today().isoformat()
    results = [run_condition("watch pruning", "--watch-prune", args, root),
               run_condition("no watch pruning", "--no-watch-prune", args, root)]  # fmt: skip
    lines = [row(r, args, args.machine, date) for r in results]
    on, off = results
    ratio = on["steps"] / max(1, off["steps"])
    summary = (f"steps with watch pruning / without: {on['steps']}/{off['steps']} = {ratio:.2f}; best val_acc1 "
               f"{on['best']} vs {off['best']}; runs' own time {on['run_s']:.0f} s vs {off['run_s']:.0f} s; sweep wall "
               f"{on['wall']:.0f} s vs {off['wall']:.0f} s (sweeps in {root})")  # fmt: skip
    print("\n".join(lines))
    print(summary)


if __name__ == "__main__":
    main()
