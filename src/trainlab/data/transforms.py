"""Per-sample transforms for the classic DataLoader path (torchvision transforms v2 on uint8 CHW tensors).

Two geometries:
- "small" (shapes, CIFAR, packed arrays: every image already has the training size): train = pad-crop +
  horizontal flip (the CIFAR standard), val = nothing but normalisation. A `--keep-aspect` pack's images
  (short side S, any aspect) take the same steps: Resize + CenterCrop makes the centre square, as the
  streaming loader does; RandomResizedCrop draws in each image's own size.
- "folder" (images of any size, decoded from files): train = RandomResizedCrop + flip, val = Resize to
  img_size*256/224 + CenterCrop (the ImageNet standard); a folder whose plan is the pad-crop (images about
  img_size) validates like "small" data instead, on the whole image (`val_geometry`).
`aug.crop`/`aug.scale`/`aug.ratio`/`aug.hflip` replace these defaults (an AugPlan, see augment.py).
`aug.policy` adds RandAugment / TrivialAugmentWide / AutoAugment after the geometry, `aug.random_erasing`
adds RandomErasing last. All randomness comes from torch's global generator, which the loader seeds per
sample (see torch_loader.py), so a transform here never needs its own seed.

The transforms end in uint8: the workers hand over a quarter of float32's bytes (shared memory, pinned
copies, host-to-device) and TorchLoader normalises each batch on the training device with data.mean/std
(augment.Normalise), as the batch loaders do. RandomErasing, which ran on the normalised image with fill 0
(the mean colour), fills with the mean colour in uint8: 0 after normalisation within half a grey level.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Optional

import torch

if TYPE_CHECKING:  # imported where used: torchvision's import costs ~1.7 s of CPU (it loads torch._dynamo)
    from torchvision.transforms import v2

from trainlab.data.augment import AugPlan

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Transform = Callable[[torch.Tensor], torch.Tensor]


def _policy_transform(policy: str) -> list[v2.Transform]:
    from torchvision.transforms import v2
    if policy == "randaugment":
        return [v2.RandAugment()]
    if policy == "trivialaugment":
        return [v2.TrivialAugmentWide()]
    if policy == "autoaugment":
        return [v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)]
    return []  # none and flip-crop: no policy after the crop and flip (config.CHOICES admits no other)


def mean_fill(mean: tuple[float, ...]) -> list[int]:
    """The uint8 value of the mean colour: what 0 is once normalised (RandomErasing's fill)."""
    return [int(round(255 * m)) for m in mean]


def build_train_transform(
    geometry: str,
    img_size: int,
    policy: str,
    random_erasing: float,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    crop_pad: int = 4,
    plan: Optional[AugPlan] = None,
) -> Transform:
    """uint8 CHW tensor -> uint8 CHW at the training size, with random augmentation (normalised later, on
    the device: torch_loader.TorchLoader).

    `plan` (data/augment.py) sets crop and flip; without one, the geometry's classic default for `policy`
    (the behaviour before aug.crop/aug.hflip existed)."""
    from torchvision.transforms import v2
    if geometry not in ("small", "folder"):
        raise ValueError(f"unknown geometry {geometry!r}")
    if plan is None:
        crop = "none" if policy == "none" else ("pad" if geometry == "small" else "resized")
        plan = AugPlan(crop, img_size, 0.0 if policy == "none" else 0.5, pad=crop_pad)
    steps: list[v2.Transform] = []
    if plan.crop == "resized":
        steps.append(v2.RandomResizedCrop(plan.size, scale=plan.scale, ratio=plan.ratio, antialias=True))
    elif geometry == "folder" and plan.crop == "none":  # still needs a fixed size to batch: the val geometry
        steps += _folder_val_geometry(plan.size)
    else:  # pad or none, on images that may not have the training size yet (Resize is a no-op if they do)
        steps += [v2.Resize(plan.size, antialias=True), v2.CenterCrop(plan.size)]
        if plan.crop == "pad" and plan.pad > 0:
            steps.append(v2.RandomCrop(plan.size, padding=plan.pad))
    if plan.hflip > 0:
        steps.append(v2.RandomHorizontalFlip(p=plan.hflip))
    steps += _policy_transform(policy)
    if random_erasing > 0:
        steps.append(v2.RandomErasing(p=random_erasing, value=mean_fill(mean)))
    return v2.Compose(steps)


def _folder_val_geometry(img_size: int) -> list[v2.Transform]:
    from torchvision.transforms import v2
    return [v2.Resize(int(round(img_size * 256 / 224)), antialias=True), v2.CenterCrop(img_size)]


def val_geometry(geometry: str, plan: Optional[AugPlan]) -> str:
    """The geometry validation uses: a pad-crop plan trains on the whole image at its stored scale, so val
    must see that scale too ("small"), not the ImageNet zoom that goes with resized crops."""
    return "small" if plan is not None and plan.crop == "pad" else geometry


def build_val_transform(
    geometry: str, img_size: int, mean: tuple[float, ...], std: tuple[float, ...], plan: Optional[AugPlan] = None
) -> Transform:
    """uint8 CHW tensor -> uint8 CHW at the training size, deterministic (geometry: see `val_geometry`);
    normalised on the device by the loader. `mean`/`std` are kept in the signature for the callers' symmetry."""
    from torchvision.transforms import v2
    if val_geometry(geometry, plan) == "folder":
        steps = _folder_val_geometry(img_size)
    else:  # arrays stored at another size than the training size (a no-op when they have it)
        steps = [v2.Resize(img_size, antialias=True), v2.CenterCrop(img_size)]
    return v2.Compose(steps)
