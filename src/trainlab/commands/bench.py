"""`trainlab bench loader | step | batch`: how fast the configured data path, step and batch size can go.

- loader: images/s of the classic DataLoader for each num_workers, and of the tensor loader, with a pick.
- step: where one training step's time goes (data wait, host-to-device, forward, backward, optimizer);
  CUDA events on a GPU (device time), perf_counter on the CPU.
- batch: the largest batch that trains on this GPU (`find_max_batch`, also behind data.batch_size=auto).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from typing import Any, Optional

import torch

from trainlab.errors import ConfigError, UsageError
from trainlab.train.batch_finder import SAFETY_MARGIN, find_max_batch, search_max_batch, trial_step
from trainlab.user import UserParts, load_loss

WARMUP_BATCHES = 3


# ---------------------------------------------------------------- shared helpers


def resolve_device(cfg: Any) -> torch.device:
    """train.device as a torch.device; `auto` takes the GPU when there is one."""
    name = str(cfg.train.device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but no CUDA GPU is visible; use train.device=cpu or auto")
    return device


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _endless(loader: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches across epoch boundaries, so a small dataset still gives N timed batches."""
    epoch = 0
    while True:
        yield from loader.batches(epoch)
        epoch += 1


def _config_from_args(args: argparse.Namespace) -> Any:
    from trainlab.config import load_config, split_config_and_overrides

    return load_config(*split_config_and_overrides(args.items))


# ---------------------------------------------------------------- loader


def time_loader(loader: Any, batches: int, device: torch.device) -> float:
    """Images/s over `batches` batches after a warm-up (worker start-up, first allocations)."""
    stream = _endless(loader)
    try:
        for _ in range(WARMUP_BATCHES):
            next(stream)
        _synchronize(device)
        images_seen = 0
        start = time.perf_counter()
        for _ in range(batches):
            images, _labels = next(stream)
            images = images.to(device, non_blocking=True)  # the torch path ends on the host; count the copy
            images_seen += images.shape[0]
        _synchronize(device)
        return images_seen / (time.perf_counter() - start)
    finally:
        stream.close()  # shuts a DataLoader's workers down now, not at garbage collection


def bench_loader(cfg: Any, workers: list[int], batches: int, device: Optional[torch.device] = None) -> dict:
    """`{"results": [...], "recommended": {...}}` for the torch loader at each num_workers and the tensor loader."""
    from trainlab.config import replace
    from trainlab.data import build_data

    device = device or resolve_device(cfg)
    results: list[dict] = []
    for w in workers:
        data = build_data(replace(cfg, **{"data.loader": "torch", "data.num_workers": w}), device)
        results.append(
            {"loader": "torch", "num_workers": w, "images_per_s": time_loader(data.train, batches, device)}
        )
        del data
    try:
        data = build_data(replace(cfg, **{"data.loader": "tensor"}), device)
    except ConfigError as err:  # e.g. a folder dataset or randaugment: say why instead of failing the bench
        results.append({"loader": "tensor", "images_per_s": None, "note": str(err)})
    else:
        results.append({"loader": "tensor", "images_per_s": time_loader(data.train, batches, device)})
    best = max((r for r in results if r["images_per_s"]), key=lambda r: r["images_per_s"])
    override = (
        "data.loader=tensor"
        if best["loader"] == "tensor"
        else f"data.loader=torch data.num_workers={best['num_workers']}"
    )
    recommended = {**best, "override": override}
    return {"device": str(device), "batch_size": int(cfg.data.batch_size), "batches": batches,
            "results": results, "recommended": recommended}  # fmt: skip


# ---------------------------------------------------------------- step


class _PhaseClock:
    """Per-phase durations: CUDA events on a GPU (read once at the end), perf_counter on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list[tuple[str, Any, Any]] = []

    def now(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def add(self, phase: str, start: Any, end: Any) -> None:
        self.marks.append((phase, start, end))

    def totals_s(self) -> dict[str, float]:
        if self.cuda:
            torch.cuda.synchronize()
        out: dict[str, float] = {}
        for phase, start, end in self.marks:
            seconds = start.elapsed_time(end) / 1000.0 if self.cuda else end - start
            out[phase] = out.get(phase, 0.0) + seconds
        return out


def bench_step(cfg: Any, steps: int, device: Optional[torch.device] = None) -> dict:
    """Mean time per step and per phase of the configured model, data and optimizer."""
    from trainlab.data import build_data

    device = device or resolve_device(cfg)
    data = build_data(cfg, device)
    num_classes = int(cfg.model.num_classes or data.num_classes)
    step_fn = trial_step(cfg, device, num_classes, UserParts(loss_fn=load_loss(cfg)))
    precision, channels_last = step_fn.precision, step_fn.channels_last
    data.use_channels_last(channels_last)  # the run's layout: what the run's loaders give its Step
    clock = _PhaseClock(device)
    stream = _endless(data.train)
    data_wait_s = 0.0
    images_seen = 0
    wall_start = 0.0
    try:
        for step in range(WARMUP_BATCHES + steps):
            if step == WARMUP_BATCHES:  # the timed part starts on an idle device
                _synchronize(device)
                clock.marks.clear()
                data_wait_s, images_seen = 0.0, 0
                wall_start = time.perf_counter()
            host = time.perf_counter()
            images, labels = next(stream)
            data_wait_s += time.perf_counter() - host
            t0 = clock.now()
            images, labels = step_fn.inputs(images, labels)  # the run's own step, one phase at a time
            t1 = clock.now()
            _, loss = step_fn.forward(images, labels)
            t2 = clock.now()
            step_fn.backward(loss)
            t3 = clock.now()
            step_fn.optimizer_step()
            t4 = clock.now()
            for phase, a, b in (
                ("host_to_device", t0, t1),
                ("forward", t1, t2),
                ("backward", t2, t3),
                ("optimizer", t3, t4),
            ):
                clock.add(phase, a, b)
            images_seen += labels.shape[0]
        _synchronize(device)
        wall_s = time.perf_counter() - wall_start
    finally:
        stream.close()
    phases = {"data_wait": data_wait_s, **clock.totals_s()}
    per_step_ms = {k: 1000.0 * v / steps for k, v in phases.items()}
    return {
        "device": str(device), "model": cfg.model.name, "batch_size": int(cfg.data.batch_size),
        "loader": data.loader_kind, "precision": precision, "channels_last": channels_last, "steps": steps,
        "step_ms": 1000.0 * wall_s / steps, "phases_ms": per_step_ms,
        "phases_frac": {k: v / wall_s for k, v in phases.items()} if wall_s > 0 else {},
        "images_per_s": images_seen / wall_s if wall_s > 0 else 0.0,
    }  # fmt: skip


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
    device = resolve_device(cfg)
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
        "--workers", default="0,1,2,4", help="comma-separated num_workers values (default 0,1,2,4)"
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
