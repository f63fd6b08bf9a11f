"""Which loader: `data.loader` and, for `auto`, whether the dataset fits in memory. Never copy more than fits.

The tensor loader copies a split whole into the training device's memory (host RAM on the CPU), with a
zero-padded copy for pad-crops, once per process. `auto` takes it only when that copy fits the budget:
`data.memory_budget_gb` if set, and always at most half the free host memory (shared by the processes of
one node) and, on a GPU, half its free memory. A larger array dataset streams (stream.py), and what needs
per-sample transforms or decodes files goes to the DataLoader. Variable-size images (a keep-aspect pack)
always stream under `auto` (the tensor loader needs one size; it refuses them). The choice and its reason are returned for
the start line.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import torch

from trainlab.errors import ConfigError

IN_MEMORY_KINDS = ("shapes", "cifar10", "cifar100", "packed")
BATCH_POLICIES = ("none", "flip-crop")  # what the batch loaders (tensor, stream) implement
GB = 1e9


def _gb(n: float) -> str:
    return f"{n / GB:.3g} GB"


def copy_bytes(images: Any, pad: int) -> int:
    """Bytes of the tensor loader's resident copy of a (N, H, W, C) uint8 array, padded by `pad` px."""
    n, h, w, c = images.shape
    return int(n) * (h + 2 * pad) * (w + 2 * pad) * c


def memory_limit(cfg: Any, device: torch.device) -> tuple[float, str]:
    """(bytes one process may copy, what sets that limit)."""
    import psutil

    local_procs = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    host = psutil.virtual_memory().available / 2 / local_procs
    limits = [(host, f"half the free host memory{f' / {local_procs} processes' if local_procs > 1 else ''} ({_gb(host)})")]
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        limits.append((free / 2, f"half the free GPU memory ({_gb(free / 2)})"))
    budget = cfg.data.memory_budget_gb
    if budget is not None:
        limits.append((float(budget) * GB, f"data.memory_budget_gb={budget:g}"))
    return min(limits)


def choose_loader(
    cfg: Any, train_images: Optional[Any], val_images: Optional[Any], pad: int, device: torch.device
) -> tuple[str, str]:
    """('tensor' | 'torch' | 'stream', why). `train_images`/`val_images` are the arrays of an in-memory
    (array) dataset, None for a dataset of files."""
    want, policy, erasing = cfg.data.loader, cfg.aug.policy, float(cfg.aug.random_erasing)
    arrays = train_images is not None
    batch_ok = policy in BATCH_POLICIES and erasing == 0
    variable = bool(getattr(train_images, "variable_size", False))  # a --keep-aspect pack
    if variable and want == "tensor":
        raise ConfigError(
            "data.loader=tensor needs same-size images, but this packed set keeps each image's aspect "
            "(variable sizes, `data pack --keep-aspect`); use data.loader=stream (or auto)"
        )
    if want in ("tensor", "stream"):
        if not arrays:
            raise ConfigError(
                f"data.loader={want} needs an in-memory dataset ({', '.join(IN_MEMORY_KINDS)}); "
                f"data.name={cfg.data.name} decodes files per sample: pack it (`trainlab data pack`) or use data.loader=torch"
            )
        if policy not in BATCH_POLICIES:
            raise ConfigError(f"aug.policy={policy} is not supported with the {want} loader; use data.loader=torch")
        if erasing > 0:
            raise ConfigError(
                f"aug.random_erasing={erasing} is not supported with the {want} loader; use data.loader=torch"
            )
        return want, "data.loader=" + want
    if want == "torch":
        return "torch", "data.loader=torch"
    # auto, the last value config.CHOICES["data.loader"] admits (config.validate refuses any other)
    if not arrays:
        return "torch", f"data.name={cfg.data.name} decodes files per sample"
    if not batch_ok:
        why = f"aug.policy={policy}" if policy not in BATCH_POLICIES else f"aug.random_erasing={erasing:g}"
        return "torch", f"{why} needs per-sample transforms"
    if variable:
        return "stream", "variable-size images: stream"
    need = copy_bytes(train_images, pad) + copy_bytes(val_images, 0)
    limit, limit_why = memory_limit(cfg, device)
    if need <= limit:
        return "tensor", f"a {_gb(need)} copy fits {limit_why}"
    return "stream", f"a {_gb(need)} copy would exceed {limit_why}: streaming from disk"
