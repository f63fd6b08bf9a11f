"""Process-wide settings a run and a benchmark both need: seeds, backend flags, the precision to use."""

from __future__ import annotations

import hashlib
import os
import random
from typing import Any

import numpy as np
import torch

from trainlab.errors import ConfigError


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank `rank`'s own random streams (dropout, stochastic depth, mixup draws).

    Rank 0 keeps `seed` itself, so a one-process run is unchanged; other ranks get a hash of (seed, rank),
    so their streams are unrelated to each other and to rank 0's."""
    if rank == 0:
        return int(seed)
    digest = hashlib.blake2b(f"{seed}:rank{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def configure_backends(cfg: Any, device: torch.device) -> None:
    if cfg.train.threads:
        torch.set_num_threads(int(cfg.train.threads))
    if cfg.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def resolve_precision(cfg: Any, device: torch.device) -> str:
    precision = str(cfg.train.precision)
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "32"
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("train.precision=fp16 needs a GPU; use train.precision=bf16 or 32 on the CPU")
    return precision


def channels_last_default(cfg: Any, model: torch.nn.Module, device: torch.device) -> bool:
    """train.channels_last, where null means on for conv nets on a GPU (conv kernels prefer NHWC there)."""
    if cfg.train.channels_last is not None:
        return bool(cfg.train.channels_last)
    return device.type == "cuda" and any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
