"""One instrumented forward/backward pass: per-layer activation statistics, BatchNorm modes, gradients.

Activations are caught at the activation functions themselves (relu, gelu, silu, sigmoid, tanh, ...) through a
TorchFunctionMode, so models that call `F.relu` are seen as well as those with `nn.ReLU` modules; forward hooks
keep a stack of module names so each call is reported under the module that made it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

# function -> kind: "relu"-like outputs die (all zero); "sigmoid"/"tanh" outputs saturate at their bounds
_ACTIVATIONS = {F.relu: "relu", torch.relu: "relu", F.relu6: "relu", F.leaky_relu: "relu", F.gelu: "relu",
                F.silu: "relu", F.elu: "relu", F.hardswish: "relu", torch.sigmoid: "sigmoid",
                F.sigmoid: "sigmoid", torch.tanh: "tanh", F.tanh: "tanh"}  # fmt: skip


@dataclass
class LayerStats:
    name: str  # module that called the activation, with the call's index inside it
    kind: str
    channels: int
    dead_frac: float  # channels that are <= 0 for every sample of the batch (relu-like)
    saturated_frac: float  # entries at the function's bounds (sigmoid/tanh)


@dataclass
class Probe:
    loss: float
    accuracy: float
    logit_std: float
    top_class_share: float  # share of the batch predicted as the most predicted class
    no_grad: list[str] = field(default_factory=list)  # trainable parameters that got no gradient
    frozen: int = 0  # parameters (tensors) with requires_grad=False
    layers: list[LayerStats] = field(default_factory=list)
    bn_eval_in_train: list[str] = field(default_factory=list)  # BatchNorm layers that ran in eval mode


class _Capture(TorchFunctionMode):
    def __init__(self, names: list[str]) -> None:
        super().__init__()
        self.names, self.layers, self.calls = names, [], {}

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        kind = _ACTIVATIONS.get(func)
        if kind is not None and isinstance(out, torch.Tensor) and out.dim() >= 2:
            where = self.names[-1] if self.names else "model"
            index = self.calls[where] = self.calls.get(where, -1) + 1
            with torch.no_grad():
                flat = out.detach().float().transpose(0, 1).reshape(out.shape[1], -1)  # channel x everything
                dead = float((flat.max(dim=1).values <= 0).float().mean()) if kind == "relu" else 0.0
                if kind == "sigmoid":
                    sat = float(((flat < 0.01) | (flat > 0.99)).float().mean())
                elif kind == "tanh":
                    sat = float((flat.abs() > 0.99).float().mean())
                else:
                    sat = 0.0
            self.layers.append(LayerStats(f"{where}#{index}", kind, int(out.shape[1]), dead, sat))
        return out


def probe(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, loss_fn: Any, backward: bool = True) -> Probe:
    """Forward (train mode) and, with `backward`, backward once; the caller's model gets gradients."""
    names: list[str] = []
    bn_eval: list[str] = []
    handles = []

    def enter(module: nn.Module, args: Any, name: str) -> None:
        names.append(name or "model")
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not module.training:
            bn_eval.append(name)

    def leave(module: nn.Module, args: Any, output: Any) -> None:  # returns None: the output is untouched
        if names:
            names.pop()

    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(lambda m, a, n=name: enter(m, a, n)))
        handles.append(module.register_forward_hook(leave))
    capture = _Capture(names)
    try:
        model.train()
        model.zero_grad(set_to_none=True)
        with capture:
            logits = model(images)
        loss = loss_fn(logits, labels)
        if backward:
            loss.backward()
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        predicted = logits.argmax(dim=1)
        top_share = float(torch.bincount(predicted).max()) / len(predicted)
        result = Probe(float(loss), float((predicted == labels).float().mean()), float(logits.float().std()), top_share)
    result.layers = capture.layers
    result.bn_eval_in_train = sorted(set(bn_eval))
    for name, p in model.named_parameters():
        if not p.requires_grad:
            result.frozen += 1
        elif backward and p.grad is None:
            result.no_grad.append(name)
    return result
