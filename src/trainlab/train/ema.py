"""Exponential moving average of model weights (Polyak averaging), with warmup of the decay.

decay_t = min(decay, (1 + step) / (10 + step)) when warmup is on, so early averages are not
dominated by the random initialisation. Float parameters are averaged with fused multi-tensor
ops and a Python-float weight (no host-device sync). Float buffers (BatchNorm running mean and
variance) are averaged the same way by default (`train.ema_buffers=average`, as timm's ModelEmaV3 and
torchvision's reference EMA do): the averaged weights are evaluated with statistics averaged alongside
them, not with the live model's, which belong to other weights. Integer buffers (num_batches_tracked) are
copied. `buffers="copy"` copies every buffer from the live model (trainlab before issue 26).
"""

from __future__ import annotations

import copy
from typing import Any, Optional

import torch
from torch import nn

from trainlab.distributed import unwrap

BUFFER_MODES = ("average", "copy")  # train.ema_buffers


def scored_weights(row: dict) -> tuple[Optional[float], str]:
    """An epoch's score and the weights that made it: the EMA's top-1 when it beats the raw weights' (a tie
    goes to the raw weights), else the raw one. The run's best file is chosen by it, and `trainlab eval`
    scores the same weights by default."""
    score, ema_score = row.get("val_acc1"), row.get("ema_val_acc1")
    if isinstance(ema_score, (int, float)) and (not isinstance(score, (int, float)) or ema_score > score):
        return float(ema_score), "ema"
    return (float(score) if isinstance(score, (int, float)) else None), "raw"


class ModelEMA:
    def __init__(self, model: nn.Module, decay: float, warmup: bool = True, buffers: str = "average") -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        if buffers not in BUFFER_MODES:
            raise ValueError(f"EMA buffers must be average or copy, got {buffers!r}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.buffers = buffers
        self.module = copy.deepcopy(unwrap(model)).eval()
        self.module.requires_grad_(False)

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold the live weights in after optimizer step `step` (0-based or 1-based, used for the warmup)."""
        decay = self.decay_at(step)
        source = unwrap(model)
        ema_floats, live_floats = [], []
        for ema_p, live_p in zip(self.module.parameters(), source.parameters()):
            if ema_p.is_floating_point():
                ema_floats.append(ema_p)
                live_floats.append(live_p.detach())
            else:
                ema_p.copy_(live_p)
        for ema_b, live_b in zip(self.module.buffers(), source.buffers()):
            if self.buffers == "average" and ema_b.is_floating_point():
                ema_floats.append(ema_b)
                live_floats.append(live_b.detach())
            else:  # num_batches_tracked (a count), or every buffer with buffers="copy"
                ema_b.copy_(live_b)
        if ema_floats:
            # ema + (1 - decay) * (live - ema) == decay * ema + (1 - decay) * live
            torch._foreach_lerp_(ema_floats, live_floats, 1.0 - decay)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "warmup": self.warmup, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Accepts what state_dict() returned, or a plain module state_dict."""
        if "module" in state and isinstance(state["module"], dict):
            self.decay = float(state.get("decay", self.decay))
            self.warmup = bool(state.get("warmup", self.warmup))
            state = state["module"]
        self.module.load_state_dict(state)
