"""What `trainlab inspect MODEL` reports: conv layers, parameters, gradients after one backward pass, FLOPs."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from trainlab.errors import ConfigError


def _first_tensor_outputs(out: Any) -> list[torch.Tensor]:
    """Logits and any auxiliary outputs (inception, googlenet return named tuples in train mode)."""
    if torch.is_tensor(out):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for t in out if torch.is_tensor(t)]
    if isinstance(out, dict):
        return [t for t in out.values() if torch.is_tensor(t)]
    raise TypeError(f"unexpected model output {type(out).__name__}")


def inspect_model(
    name: str,
    num_classes: int = 1000,
    cifar_stem: bool = False,
    img_size: int | None = None,
    norm: str = "batch",
) -> dict[str, Any]:
    """Counts for one model. img_size=None means 32 for CIFAR-style models, else 224.

    params_with_grad counts the elements of parameters whose .grad is set after one real
    forward + backward pass on a batch of 2 (train mode). FLOPs come from torch's FlopCounterMode
    on a forward pass of one image in eval mode: 2 x multiply-accumulates of convs, linears and
    matmuls; elementwise ops, norms and pooling are not counted.
    """
    from trainlab.models import create, is_cifar_model

    if img_size is None:
        img_size = 32 if is_cifar_model(name, cifar_stem) else 224
    torch.manual_seed(0)
    model = create(name, num_classes, cifar_stem=cifar_stem, norm=norm, img_size=img_size)
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    conv_layers = sum(1 for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd))

    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.randn(1, 3, img_size, img_size))
    except RuntimeError as exc:  # a fresh model on random input fails only on its shape
        raise ConfigError(
            f"--img-size {img_size} does not fit {name} ({str(exc).splitlines()[0]}); give a larger --img-size"
        ) from None
    flops = counter.get_total_flops()

    model.train()
    model.zero_grad(set_to_none=True)
    outputs = _first_tensor_outputs(model(torch.randn(2, 3, img_size, img_size)))
    sum(o.float().sum() for o in outputs).backward()
    with_grad = sum(p.numel() for p in model.parameters() if p.grad is not None)

    return {
        "name": name,
        "num_classes": num_classes,
        "cifar_stem": cifar_stem,
        "norm": norm,
        "img_size": img_size,
        "conv_layers": conv_layers,
        "params": params,
        "trainable_params": trainable,
        "params_with_grad": with_grad,
        "last_linear_in_features": linears[-1].in_features if linears else None,
        "flops_per_image": int(flops),
    }
