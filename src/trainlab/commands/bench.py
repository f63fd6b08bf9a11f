"""`trainlab bench loader | step | batch`: how fast the configured data path, step and batch size can go.

The argparse layer and the tables; the measuring is the library's (train/bench.py, train/batch_finder.py).
- loader: images/s of the classic DataLoader for each num_workers, and of the tensor loader, with a pick.
- step: where one training step's time goes (data wait, host-to-device, forward, backward, optimizer);
  CUDA events on a GPU (device time), perf_counter on the CPU.
- batch: the largest batch that trains on this GPU (`find_max_batch`, also behind data.batch_size=auto).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

from trainlab.distributed import resolve_device
from trainlab.errors import UsageError
from trainlab.train.batch_finder import SAFETY_MARGIN, find_max_batch, search_max_batch
from trainlab.train.bench import bench_loader, bench_step


def _config_from_args(args: argparse.Namespace) -> Any:
    from trainlab.config import load_config, split_config_and_overrides

    return load_config(*split_config_and_overrides(args.items))


# ---------------------------------------------------------------- CLI


def _print_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def cmd_loader(args: argparse.Namespace) -> int:
    try:
        workers = [int(w) for w in str(args.workers).split(",") if w.strip() != ""]
    except ValueError:
        raise UsageError(
            f"--workers {args.workers!r}: give a comma-separated list of ints, e.g. 0,2,4"
        ) from None
    if not workers or min(workers) < 0 or args.batches < 1:
        raise UsageError("--workers needs at least one value >= 0 and --batches a positive number")
    result = bench_loader(_config_from_args(args), workers, args.batches)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    rows = []
    for r in result["results"]:
        name = f"torch, {r['num_workers']} workers" if r["loader"] == "torch" else "tensor"
        speed = f"{r['images_per_s']:,.0f}" if r["images_per_s"] else f"n/a ({r.get('note', '')})"
        rows.append([name, speed])
    _print_table(
        f"loader images/s on {result['device']}, batch {result['batch_size']}", ["loader", "images/s"], rows
    )
    print(f"recommended: {result['recommended']['override']}")
    return 0


def cmd_step(args: argparse.Namespace) -> int:
    if args.steps < 1:
        raise UsageError("--steps must be a positive number")
    result = bench_step(_config_from_args(args), args.steps)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    rows = [
        [k, f"{v:.2f}", f"{100 * result['phases_frac'].get(k, 0):.1f}%"]
        for k, v in result["phases_ms"].items()
    ]
    rows.append(["step (wall)", f"{result['step_ms']:.2f}", "100%"])
    title = (f"{result['model']} on {result['device']}, batch {result['batch_size']}, {result['loader']} loader, "
             f"precision {result['precision']}")  # fmt: skip
    _print_table(title, ["phase", "ms/step", "share"], rows)
    print(f"{result['images_per_s']:,.0f} images/s")
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    cfg = _config_from_args(args)
    device = resolve_device(cfg.train.device)
    if device.type != "cuda":
        raise UsageError(
            f"trainlab bench batch needs a GPU (train.device={cfg.train.device} resolved to {device})"
        )
    batch = find_max_batch(cfg, device)
    if args.json:
        print(json.dumps({"device": str(device), "model": cfg.model.name, "batch_size": batch}))
    else:
        print(f"largest batch for {cfg.model.name} on {torch.cuda.get_device_name(device)}: {batch} "
              f"(with a {SAFETY_MARGIN:.0%} margin); use data.batch_size={batch}")  # fmt: skip
    return 0


def register_cli(subparsers: Any) -> None:
    bench = subparsers.add_parser("bench", help="measure loader speed, step-time breakdown, largest batch")
    sub = bench.add_subparsers(dest="bench_command", metavar="WHAT", parser_class=type(bench))

    def items(p: argparse.ArgumentParser) -> None:
        p.add_argument("items", nargs="*", metavar="CONFIG|key=value", help="a YAML config, then overrides")
        p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = sub.add_parser("loader", help="images/s of the DataLoader per num_workers and of the tensor loader")
    items(p)
    p.add_argument(
        "--workers", default="0,1,2,4",
        help="comma-separated num_workers values (default 0,1,2,4); those above the usable CPUs are skipped"
    )
    p.add_argument("--batches", type=int, default=50, help="timed batches per setting (after 3 warm-up)")
    p.set_defaults(func=cmd_loader)

    p = sub.add_parser(
        "step", help="step-time breakdown: data wait, host-to-device, forward, backward, optimizer"
    )
    items(p)
    p.add_argument("--steps", type=int, default=20, help="timed steps (after 3 warm-up)")
    p.set_defaults(func=cmd_step)

    p = sub.add_parser(
        "batch", help="largest batch that trains on this GPU (doubling, then bisecting on OOM)"
    )
    items(p)
    p.set_defaults(func=cmd_batch)

    def no_subcommand(args: argparse.Namespace) -> int:
        bench.print_help()
        return 2

    bench.set_defaults(func=no_subcommand)


__all__ = ["bench_loader", "bench_step", "find_max_batch", "search_max_batch", "register_cli"]
