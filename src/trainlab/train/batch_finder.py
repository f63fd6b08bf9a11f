"""The largest per-process batch that trains: real trials, doubling then bisecting on out-of-memory.

Used by `data.batch_size=auto` (run.py) and `trainlab bench batch`. Each trial is one real training step
(engine.Step: the run's precision, memory format and loss, the user's model and loss included) on random
images. Under DDP every rank tries its own device and the job takes the smallest answer, so all ranks'
loaders have the same length. On a CPU there is no out-of-memory error to catch (the kernel kills the
process), so the memory each trial added is projected to the next one and the search stops short of half
the available memory; it also stops at CPU_BATCH_CAP, beyond which a CPU trains no faster.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

import torch

from trainlab.config import img_size_schedule
from trainlab.errors import ConfigError
from trainlab.train.runtime import configure_backends

SAFETY_MARGIN = 0.10  # keep this fraction of the largest batch that trained in reserve
MAX_BATCH_CAP = 1 << 16
CPU_BATCH_CAP = 1024
# torch.OutOfMemoryError from torch 2.5 on (the CUDA one is its subclass); torch.cuda's before
OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def num_classes_hint(cfg: Any) -> int:
    """The head size without loading data (the search can run before the dataset is built)."""
    if cfg.model.num_classes:
        return int(cfg.model.num_classes)
    known = {"cifar10": 10, "cifar100": 100}
    if cfg.data.name == "shapes":
        from trainlab.data.shapes import CLASS_NAMES

        return len(CLASS_NAMES)
    return known.get(cfg.data.name, 1000)  # folder/packed/your own: 1000 is a safe upper bound for the head


def trial_step(cfg: Any, device: torch.device, num_classes: int, user: Any = None) -> Any:
    """The configured model on `device` and the Step the run takes with it (precision, memory format, loss).
    A model object of the user's is trained here: pass a copy (build._copied)."""
    from trainlab import models
    from trainlab.train import optim
    from trainlab.train.engine import step_for

    configure_backends(cfg, device)
    model = models.from_config(cfg, num_classes, with_weights=False, user=user)
    step = step_for(cfg, model, optim.build_optimizer(model, cfg.optim, 256), device, getattr(user, "loss_fn", None))
    fmt = torch.channels_last if step.channels_last else torch.contiguous_format
    model.to(device, memory_format=fmt).train()
    return step


def _is_oom(err: BaseException) -> bool:
    if isinstance(err, OUT_OF_MEMORY):
        return True
    # cuDNN/cuBLAS report allocation failures as plain RuntimeErrors, the CPU allocator as "can't allocate"
    return isinstance(err, RuntimeError) and any(
        s in str(err) for s in ("ALLOC_FAILED", "out of memory", "can't allocate memory")
    )


def fits(step: Any, batch: int, size: int, num_classes: int) -> bool:
    """One real training step at `batch` on random images; False when memory runs out."""
    device = step.device
    try:
        step(torch.randn(batch, 3, size, size), torch.randint(0, num_classes, (batch,)))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return True
    except Exception as err:
        if _is_oom(err):
            return False
        raise
    finally:
        step.optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()


class HostMemoryGuard:
    """Projects the host memory the last trial added to the next batch; beyond half of what is available the
    batch counts as not fitting (on a CPU, running out of memory is a kill, not an exception)."""

    def __init__(self) -> None:
        import psutil

        self.psutil, self.process = psutil, psutil.Process()
        self.last: Optional[tuple[int, int]] = None  # (batch, bytes its trial added)

    def __call__(self, trial: Callable[[int], bool], batch: int) -> bool:
        if self.last is not None:
            prev_batch, added = self.last
            if added * batch / prev_batch > 0.5 * self.psutil.virtual_memory().available:
                return False
        before = self.process.memory_info().rss
        ok = trial(batch)
        self.last = (batch, max(1, self.process.memory_info().rss - before))
        return ok


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


def find_max_batch(cfg: Any, device: torch.device, reserve_bytes: int = 0, rank: int = 0, user: Any = None) -> int:
    """The largest per-process batch that trains on this device, less a safety margin.

    Real trials (the run's training step on random images at data.img_size), doubling and then bisecting on
    out-of-memory. `reserve_bytes` is held allocated during the trials: what the run will add beside the trial
    model (device-resident data, the EMA copy). torch.compile is left out of the trials (it tends to use less
    memory). On a GPU the peak-memory counters are reset afterwards so the run's own peaks are not the
    search's near-OOM peak. `rank` is unused (each rank searches its own device); kept for callers."""
    device = torch.device(device)
    # The largest size a progressive-resizing schedule reaches: the batch must fit there too.
    size = 32 if cfg.data.name in ("cifar10", "cifar100") else max(s for _, s in img_size_schedule(cfg.data.img_size))
    num_classes = num_classes_hint(cfg)
    step = trial_step(cfg, device, num_classes, user)
    on_gpu = device.type == "cuda"
    reserve: Optional[torch.Tensor] = (
        torch.empty(int(reserve_bytes), dtype=torch.uint8, device=device) if reserve_bytes > 0 and on_gpu else None
    )

    def trial(batch: int) -> bool:
        return fits(step, batch, size, num_classes)  # noqa: F821  (bound above; deleted after the search)

    if on_gpu:
        largest = search_max_batch(trial)
    else:
        guard = HostMemoryGuard()
        largest = search_max_batch(lambda batch: guard(trial, batch), cap=CPU_BATCH_CAP)
    del step, reserve  # free the trial model before training builds its own
    if on_gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    if largest == 0:
        raise ConfigError(
            f"model.name={cfg.model.name} does not train even with batch 1 at {size} px on {device}; "
            "use a smaller model or data.img_size"
        )
    return with_margin(largest)
