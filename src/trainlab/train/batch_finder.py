"""The largest per-process batch that trains: real trials, doubling then bisecting on out-of-memory.

Used by `data.batch_size=auto` (run.py) and `trainlab bench batch` (bench.py). Under DDP every rank tries its
own GPU and the job takes the smallest answer, so all ranks' loaders have the same length.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

import torch
import torch.nn.functional as F

from trainlab import drills
from trainlab.config import img_size_schedule
from trainlab.errors import ConfigError
from trainlab.train.engine import autocast
from trainlab.train.runtime import channels_last_default, configure_backends, resolve_precision

SAFETY_MARGIN = 0.10  # keep this fraction of the largest batch that trained in reserve
MAX_BATCH_CAP = 1 << 16


def num_classes_hint(cfg: Any) -> int:
    """The head size without loading data (the search can run before the dataset is built)."""
    if cfg.model.num_classes:
        return int(cfg.model.num_classes)
    known = {"cifar10": 10, "cifar100": 100}
    if cfg.data.name == "shapes":
        from trainlab.data.shapes import CLASS_NAMES

        return len(CLASS_NAMES)
    return known.get(cfg.data.name, 1000)  # folder/packed: 1000 is a safe upper bound for the head


def model_setup(cfg: Any, device: torch.device, num_classes: int) -> tuple[torch.nn.Module, str, bool]:
    """The configured model on `device` with the run's precision and memory-format choices."""
    from trainlab import models

    configure_backends(cfg, device)
    precision = resolve_precision(cfg, device)
    model = models.from_config(cfg, num_classes, with_weights=False)
    channels_last = channels_last_default(cfg, model, device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return model.to(device, memory_format=fmt), precision, channels_last


def _fits(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: int, size: int, num_classes: int,
          device: torch.device, precision: str, channels_last: bool) -> bool:  # fmt: skip
    """One real forward+backward+step at `batch`; False on a CUDA out-of-memory error."""
    images = labels = loss = None
    try:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        images = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
        labels = torch.randint(0, num_classes, (batch,), device=device)
        with autocast(device, precision):
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


def find_max_batch(cfg: Any, device: torch.device, reserve_bytes: int = 0, rank: int = 0) -> int:
    """The largest per-process batch that trains on this device, less a safety margin.

    Real trials (forward, backward, optimizer step on random images at data.img_size), doubling and then
    bisecting on torch.cuda.OutOfMemoryError. `reserve_bytes` is held allocated during the trials: what the
    run will add beside the trial model (device-resident data, the EMA copy, DDP's gradient buckets).
    torch.compile is left out of the trials (it tends to use less memory). The peak-memory counters are reset
    afterwards so the run's own peaks are not the search's near-OOM peak.
    """
    device = torch.device(device)
    planted = drills.planted_max_batch(rank)
    if device.type != "cuda" and planted is None:
        raise ConfigError(
            f"finding the largest batch needs a GPU; train.device={cfg.train.device} resolved to {device}"
        )
    # The largest size a progressive-resizing schedule reaches: the batch must fit there too.
    size = 32 if cfg.data.name in ("cifar10", "cifar100") else max(s for _, s in img_size_schedule(cfg.data.img_size))
    if device.type != "cuda":  # the planted limit alone decides (a drill for CPU tests)
        largest = search_max_batch(lambda batch: batch <= planted)
    else:
        from trainlab.train import optim

        num_classes = num_classes_hint(cfg)
        model, precision, channels_last = model_setup(cfg, device, num_classes)
        model.train()
        optimizer = optim.build_optimizer(model, cfg.optim, 256)
        reserve: Optional[torch.Tensor] = (
            torch.empty(int(reserve_bytes), dtype=torch.uint8, device=device) if reserve_bytes > 0 else None
        )

        def fits(batch: int) -> bool:
            if planted is not None and batch > planted:
                return False
            return _fits(model, optimizer, batch, size, num_classes, device, precision, channels_last)

        largest = search_max_batch(fits)
        del model, optimizer, reserve  # free the trial model before training builds its own
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    if largest == 0:
        raise ConfigError(
            f"model.name={cfg.model.name} does not train even with batch 1 at {size} px on {device}; "
            "use a smaller model or data.img_size"
        )
    return with_margin(largest)
