"""Per-sample transforms for the classic DataLoader path (torchvision transforms v2 on uint8 CHW tensors).

Two geometries:
- "small" (shapes, CIFAR, packed arrays: every image already has the training size): train = pad-crop +
  horizontal flip (the CIFAR standard), val = nothing but normalisation.
- "folder" (images of any size, decoded from files): train = RandomResizedCrop + flip, val = Resize to
  img_size*256/224 + CenterCrop (the ImageNet standard).
`aug.policy` adds RandAugment / TrivialAugmentWide / AutoAugment after the geometry, `aug.random_erasing`
adds RandomErasing after normalisation. All randomness comes from torch's global generator, which the
loader seeds per sample (see torch_loader.py), so a transform here never needs its own seed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision.transforms import v2

from trainlab.errors import ConfigError

POLICIES = ("none", "flip-crop", "randaugment", "trivialaugment", "autoaugment")

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Transform = Callable[[torch.Tensor], torch.Tensor]


def _policy_transform(policy: str) -> list[v2.Transform]:
    if policy == "randaugment":
        return [v2.RandAugment()]
    if policy == "trivialaugment":
        return [v2.TrivialAugmentWide()]
    if policy == "autoaugment":
        return [v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)]
    if policy in ("none", "flip-crop"):
        return []
    raise ConfigError(f"aug.policy={policy!r} is not valid; choose one of: {', '.join(POLICIES)}")


def _finish(mean: tuple[float, ...], std: tuple[float, ...]) -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


def build_train_transform(
    geometry: str,
    img_size: int,
    policy: str,
    random_erasing: float,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    crop_pad: int = 4,
) -> Transform:
    """uint8 CHW tensor -> float32 CHW normalised, with random augmentation."""
    steps: list[v2.Transform] = []
    if geometry == "small":
        if policy != "none":
            if crop_pad > 0:
                steps.append(v2.RandomCrop(img_size, padding=crop_pad))
            steps.append(v2.RandomHorizontalFlip())
    elif geometry == "folder":
        if policy == "none":  # still needs a fixed size to batch: the val geometry
            steps += _folder_val_geometry(img_size)
        else:
            steps += [v2.RandomResizedCrop(img_size, antialias=True), v2.RandomHorizontalFlip()]
    else:
        raise ValueError(f"unknown geometry {geometry!r}")
    steps += _policy_transform(policy)
    steps += _finish(mean, std)
    if random_erasing > 0:
        steps.append(v2.RandomErasing(p=random_erasing))
    return v2.Compose(steps)


def _folder_val_geometry(img_size: int) -> list[v2.Transform]:
    return [v2.Resize(int(round(img_size * 256 / 224)), antialias=True), v2.CenterCrop(img_size)]


def build_val_transform(
    geometry: str, img_size: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> Transform:
    """uint8 CHW tensor -> float32 CHW normalised, deterministic."""
    steps = _folder_val_geometry(img_size) if geometry == "folder" else []
    return v2.Compose(steps + _finish(mean, std))
