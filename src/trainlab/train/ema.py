"""Exponential moving average of model weights (Polyak averaging), with warmup of the decay.

decay_t = min(decay, (1 + step) / (10 + step)) when warmup is on, so early averages are not
dominated by the random initialisation. Float parameters are averaged with fused multi-tensor
ops and a Python-float weight (no host-device sync); buffers such as BatchNorm running stats are
copied from the live model, whose statistics match its current weights better than an average would.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from trainlab.distributed import unwrap


class ModelEMA:
    def __init__(self, model: nn.Module, decay: float, warmup: bool = True) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
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
        if ema_floats:
            # ema + (1 - decay) * (live - ema) == decay * ema + (1 - decay) * live
            torch._foreach_lerp_(ema_floats, live_floats, 1.0 - decay)
        for ema_b, live_b in zip(self.module.buffers(), source.buffers()):
            ema_b.copy_(live_b)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "warmup": self.warmup, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Accepts what state_dict() returned, or a plain module state_dict."""
        if "module" in state and isinstance(state["module"], dict):
            self.decay = float(state.get("decay", self.decay))
            self.warmup = bool(state.get("warmup", self.warmup))
            state = state["module"]
        self.module.load_state_dict(state)
