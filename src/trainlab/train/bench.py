"""Measuring the configured data path and training step: what `trainlab bench loader | step` prints.

- loader: images/s of the classic DataLoader for each num_workers (up to the usable CPUs), and of the tensor
  loader, with a pick.
- step: where one training step's time goes (data wait, host-to-device, forward, backward, optimizer);
  CUDA events on a GPU (device time), perf_counter on the CPU.
The largest batch that trains is `train.batch_finder.find_max_batch`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, Optional

import torch

from trainlab.distributed import resolve_device
from trainlab.errors import ConfigError
from trainlab.train.batch_finder import trial_step
from trainlab.user import UserParts, load_loss
from trainlab.watch.sampler import usable_cpus

WARMUP_BATCHES = 3


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _endless(loader: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches across epoch boundaries, so a small dataset still gives N timed batches."""
    epoch = 0
    while True:
        yield from loader.batches(epoch)
        epoch += 1


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
    """`{"results": [...], "recommended": {...}}` for the torch loader at each num_workers and the tensor loader.
    A num_workers above the usable CPUs is not measured (nor recommended): its workers would share the CPUs."""
    from trainlab.config import replace
    from trainlab.data import build_data

    device = device or resolve_device(cfg.train.device)
    cpus = usable_cpus()
    results: list[dict] = []
    for w in workers:
        if w > cpus:
            note = f"more workers than the {cpus} CPU{'s' if cpus > 1 else ''} this process may use"
            results.append({"loader": "torch", "num_workers": w, "images_per_s": None, "note": note})
            continue
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
            "usable_cpus": cpus, "results": results, "recommended": recommended}  # fmt: skip


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

    device = device or resolve_device(cfg.train.device)
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


__all__ = ["WARMUP_BATCHES", "bench_loader", "bench_step", "time_loader", "usable_cpus"]
