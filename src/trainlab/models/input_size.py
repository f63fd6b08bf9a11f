"""Which image sizes a registry model accepts, so a size it cannot take is refused by name, in one line.

The minimums were measured by forward passes of each family's models (train mode, batch 2) in this
version of torchvision: below them a feature map shrinks to nothing. ViTs and MaxViT are built for one
size (`create(img_size=...)`), which must then be the input's.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from trainlab.errors import ConfigError

# name prefix -> smallest input side in px with the standard stem (the longest matching prefix wins)
MIN_SIZE = {
    "alexnet": 63,
    "convnext": 32,
    "densenet": 29,
    "googlenet": 15,
    "inception_v3": 75,
    "squeezenet1_0": 21,
    "squeezenet1_1": 17,
    "vgg": 32,
}
INCEPTION_AUX_MIN = 299  # Inception-v3's auxiliary head needs a 17x17 map at Mixed_6e


def min_img_size(name: str, cifar_stem: bool = False, aux_logits: bool = False) -> int:
    """The smallest data.img_size `name` trains at (1 where any size works)."""
    if cifar_stem:  # resnet / densenet with a stride-1 stem: the standard minimums do not apply
        return 1
    if name == "inception_v3" and aux_logits:
        return INCEPTION_AUX_MIN
    if name.startswith("maxvit"):
        return 224
    matches = [prefix for prefix in MIN_SIZE if name.startswith(prefix)]
    return MIN_SIZE[max(matches, key=len)] if matches else 1


def size_step(name: str) -> int:
    """data.img_size must be a multiple of this: a ViT's patch size, 224 for MaxViT, else 1."""
    if name.startswith("vit_"):
        return int(name.rsplit("_", 1)[-1])
    return 224 if name.startswith("maxvit") else 1


def size_problem(name: str, height: int, width: int, built_for: Optional[int], cifar_stem: bool = False,
                 aux_logits: bool = False) -> Optional[str]:
    """Why `name` cannot take an input of height x width, or None when it can."""
    side = min(height, width)
    if built_for is not None and (height, width) != (built_for, built_for):
        return (f"model.name={name} is built for {built_for} px images (data.img_size={built_for}) but gets "
                f"{height}x{width}; set data.img_size to the images' size")
    least = min_img_size(name, cifar_stem, aux_logits)
    if side < least:
        why = " with model.aux_logits=true (or set model.aux_logits=false)" if least == INCEPTION_AUX_MIN else ""
        return f"model.name={name} needs images of at least {least} px{why}; data.img_size gives {side}"
    return None


def guard_first_input(model: nn.Module, name: str, built_for: Optional[int], cifar_stem: bool,
                      aux_logits: bool) -> None:
    """Check the first batch's size before the model sees it: a ConfigError naming the model instead of a
    shape error deep inside it. The hook removes itself after the first forward."""

    def check(module: nn.Module, args: tuple) -> None:
        handle.remove()
        images = args[0] if args else None
        if isinstance(images, torch.Tensor) and images.dim() == 4:
            problem = size_problem(name, images.shape[-2], images.shape[-1], built_for, cifar_stem,
                                   aux_logits and module.training)
            if problem:
                raise ConfigError(problem)

    handle = model.register_forward_pre_hook(check)
