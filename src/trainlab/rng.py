"""Every random stream the math depends on, captured and restored as plain values (python, numpy's global
generator, torch's CPU and CUDA generators): what a checkpoint holds, and what a replaying loader sets again."""

from __future__ import annotations

import random
import warnings
from typing import Any

import numpy as np
import torch


def capture_rng() -> dict:
    """The state of every RNG the math depends on: python, numpy global, torch CPU and all CUDA devices.

    Only tensors and plain Python values, so that a weights-only load reads it back: numpy's
    (name, uint32 key array, pos, has_gauss, cached_gaussian) keeps its key as an int64 tensor.
    """
    name, key, pos, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (str(name), torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss),
                  float(cached_gaussian)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # Only when CUDA is in use: querying would otherwise initialise a context on every device.
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    """Restore what capture_rng returned (or an older checkpoint's ndarray form). CUDA states are restored
    only when the device count matches."""
    random.setstate(_as_python_state(state["python"]))
    name, key, *rest = state["numpy"]
    key = key.numpy() if isinstance(key, torch.Tensor) else np.asarray(key)
    np.random.set_state((name, key.astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"].cpu() if isinstance(state["torch"], torch.Tensor) else state["torch"])
    cuda_states = state.get("cuda")
    if cuda_states and torch.cuda.is_available():
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])
        else:
            warnings.warn(
                f"checkpoint holds CUDA RNG states for {len(cuda_states)} devices but "
                f"{torch.cuda.device_count()} are visible; CUDA RNG not restored",
                stacklevel=2,
            )


def _as_python_state(state: Any) -> tuple:
    # random.setstate wants (version, tuple of ints, gauss_next); a list would be refused
    version, internal, gauss_next = state
    return (version, tuple(internal), gauss_next)
