"""The gradient norm at logging steps: read from the model when the loop does not give it, and a streak of
non-finite norms reported as `nonfinite` (one inf is fp16 loss scaling doing its job)."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from trainlab.watch.advice import CODE, Advice
from trainlab.watch.events import Episode, Event


def read_grad_norm(model: Optional[nn.Module], optimizer: Optional[torch.optim.Optimizer]) -> Optional[float]:
    """Total gradient norm of the gradients still on the parameters (one read; logging steps only)."""
    if model is not None:
        params = model.parameters()
    elif optimizer is not None:
        params = (p for g in optimizer.param_groups for p in g["params"])
    else:
        return None
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return None
    norms = torch._foreach_norm(grads) if hasattr(torch, "_foreach_norm") else [g.norm() for g in grads]
    return float(torch.linalg.vector_norm(torch.stack([n.float() for n in norms])).item())


class GradNormCheck:
    def __init__(self, advice: Advice = CODE) -> None:
        self.advice = advice
        self.nonfinite_streak = 0
        self.episode = Episode()

    def events(self, grad_norm: float, step: int, epoch: int) -> list[Event]:
        # fp16 loss scaling produces the odd inf gradient and skips that step by design: only a streak counts
        self.nonfinite_streak = 0 if math.isfinite(grad_norm) else self.nonfinite_streak + 1
        if not self.episode.update(1 if self.nonfinite_streak >= 2 else 0):
            return []
        return [Event(
            "nonfinite", "critical", step, epoch,
            f"gradient norm is {grad_norm} at step {step} (and at the previous logged step): the "
            f"update is poisoning the weights: {self.advice.join('lower_lr', 'clip', 'precision')}.",
            {"grad_norm": str(grad_norm), "source": "grad"},
        )]
