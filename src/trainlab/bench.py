"""`trainlab bench loader | step | batch`: how fast the configured data path, step and batch size can go.

- loader: images/s of the classic DataLoader for each num_workers, and of the tensor loader, with a pick.
- step: where one training step's time goes (data wait, host-to-device, forward, backward, optimizer);
  CUDA events on a GPU (device time), perf_counter on the CPU.
- batch: the largest batch that trains on this GPU (`find_max_batch`, also behind data.batch_size=auto).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from typing import Any, Optional

import torch
import torch.nn.functional as F

from trainlab.config import img_size_schedule
from trainlab.errors import ConfigError, UsageError

WARMUP_BATCHES = 3
SAFETY_MARGIN = 0.10  # find_max_batch keeps this fraction of the largest batch that trained in reserve
MAX_BATCH_CAP = 1 << 16


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


def _num_classes(cfg: Any) -> int:
    """The head size without loading data (find_max_batch runs before the dataset is built)."""
    if cfg.model.num_classes:
        return int(cfg.model.num_classes)
    known = {"cifar10": 10, "cifar100": 100}
    if cfg.data.name == "shapes":
        from trainlab.data.shapes import CLASS_NAMES

        return len(CLASS_NAMES)
    return known.get(cfg.data.name, 1000)  # folder/packed: 1000 is a safe upper bound for the head


def _model_setup(cfg: Any, device: torch.device, num_classes: int) -> tuple[torch.nn.Module, str, bool]:
    """The configured model on `device` with run.py's precision and memory-format choices."""
    from trainlab import models
    from trainlab.run import configure_backends, resolve_precision

    configure_backends(cfg, device)
    precision = resolve_precision(cfg, device)
    model = models.create(cfg.model.name, num_classes, cifar_stem=cfg.model.cifar_stem, norm=cfg.model.norm)
    channels_last = cfg.train.channels_last
    if channels_last is None:  # the run's default: NHWC for conv nets on a GPU
        channels_last = device.type == "cuda" and any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return model.to(device, memory_format=fmt), precision, bool(channels_last)


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if precision in dtypes:
        return torch.autocast(device_type=device.type, dtype=dtypes[precision])
    return contextlib.nullcontext()


def _config_from_args(args: argparse.Namespace) -> Any:
    from trainlab.cli import split_config_and_overrides
    from trainlab.config import load_config

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
    from trainlab import optim
    from trainlab.data import build_data

    device = device or resolve_device(cfg)
    data = build_data(cfg, device)
    num_classes = int(cfg.model.num_classes or data.num_classes)
    model, precision, channels_last = _model_setup(cfg, device, num_classes)
    optimizer = optim.build_optimizer(model, cfg.optim, int(cfg.data.batch_size) * int(cfg.train.grad_accum))
    model.train()
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
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            t1 = clock.now()
            with _autocast(device, precision):
                loss = F.cross_entropy(model(images).float(), labels)
            t2 = clock.now()
            loss.backward()
            t3 = clock.now()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
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


# ---------------------------------------------------------------- largest batch


def _fits(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: int, size: int, num_classes: int,
          device: torch.device, precision: str, channels_last: bool) -> bool:  # fmt: skip
    """One real forward+backward+step at `batch`; False on a CUDA out-of-memory error."""
    images = labels = loss = None
    try:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        images = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
        labels = torch.randint(0, num_classes, (batch,), device=device)
        with _autocast(device, precision):
            loss = F.cross_entropy(model(images).float(), labels)
        loss.backward()
        optimizer.step()
        torch.cuda.synchronize(device)
        return True
    except torch.cuda.OutOfMemoryError:
        return False
    except RuntimeError as err:  # cuDNN/cuBLAS report allocation failures as plain RuntimeErrors
        if "ALLOC_FAILED" in str(err) or "out of memory" in str(err):
            return False
        raise
    finally:
        del images, labels, loss
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()


def search_max_batch(fits: Callable[[int], bool], start: int = 8, cap: int = MAX_BATCH_CAP) -> int:
    """Largest n with fits(n), assuming monotonicity: double from `start`, then bisect. 0 if none fits."""
    low = 0
    high = start
    while high <= cap and fits(high):
        low, high = high, high * 2
    if low == 0:  # even `start` failed: look below it
        high, low = start, 0
    high = min(high, cap + 1)
    while high - low > max(1, low // 64):  # ~1.5% resolution is plenty under a 10% margin
        mid = (low + high) // 2
        if fits(mid):
            low = mid
        else:
            high = mid
    return low


def with_margin(largest: int) -> int:
    """Keep SAFETY_MARGIN in reserve, rounded down to a multiple of 8 (tensor-core friendly) when large."""
    batch = int(largest * (1.0 - SAFETY_MARGIN))
    if batch >= 16:
        batch -= batch % 8
    return max(1, batch)


def find_max_batch(cfg: Any, device: torch.device) -> int:
    """The largest per-process batch that trains on this GPU, less a safety margin.

    Real trials (forward, backward, optimizer step on random images at data.img_size), doubling and then
    bisecting on torch.cuda.OutOfMemoryError. Under DDP each process calls it for its own GPU; the margin
    covers DDP's gradient buckets. torch.compile is left out of the trials (it tends to use less memory).
    """
    device = torch.device(device)
    if device.type != "cuda":
        raise ConfigError(
            f"finding the largest batch needs a GPU; train.device={cfg.train.device} resolved to {device}"
        )
    from trainlab import optim

    num_classes = _num_classes(cfg)
    model, precision, channels_last = _model_setup(cfg, device, num_classes)
    model.train()
    optimizer = optim.build_optimizer(model, cfg.optim, 256)
    # the largest size of a progressive-resizing schedule: the batch must fit at every size
    size = 32 if cfg.data.name in ("cifar10", "cifar100") else max(s for _, s in img_size_schedule(cfg.data.img_size))

    def fits(batch: int) -> bool:
        return _fits(model, optimizer, batch, size, num_classes, device, precision, channels_last)

    largest = search_max_batch(fits)
    model = optimizer = None  # free the trial model before training builds its own
    torch.cuda.empty_cache()
    if largest == 0:
        raise ConfigError(
            f"model.name={cfg.model.name} does not train even with batch 1 at {size} px on {device}; "
            "use a smaller model or data.img_size"
        )
    return with_margin(largest)


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
