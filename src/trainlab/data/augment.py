"""Crop and flip that fit the images: `aug.crop`, `aug.scale`, `aug.ratio`, `aug.hflip` -> one AugPlan.

The plan is resolved once per run (`resolve_plan`) and every loader applies the same semantics:
- `resized`: torchvision's RandomResizedCrop (area fraction in aug.scale, log-uniform aspect in aug.ratio,
  10 tries then a centre crop clamped to the ratio range), resized to the output size;
- `pad`: resize to the output size if needed, zero-pad `pad` px, take a random output-sized window (CIFAR);
- `none`: the whole image resized to the output size (the folder path keeps its val geometry instead);
then a horizontal flip with probability aug.hflip.

The torch DataLoader path uses torchvision's per-sample transforms (transforms.py). The batch loaders (the
tensor loader, the streaming loader) draw every sample's parameters for the whole epoch at once from a CPU
generator (`draw_params`, so a batch index alone says which parameters it gets and resume skips freely),
and apply them to a whole uint8 batch on the device (`BatchAugmenter`): one roi_align over the batch for
per-sample resized boxes, one gather for pad-crops, a where() for flips. For variable-size images (a
`--keep-aspect` pack) `draw_params` takes per-sample heights and widths, so each box lies in its own image;
`centre_square_boxes` gives their validation / pad / none view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

# "About data.img_size": stored images within 15% of the training size get a pad-crop (CIFAR style); a
# random resized crop of such an image would throw away most of an already small picture.
ABOUT_SAME_SIZE = 0.15
TRIES = 10  # torchvision's RandomResizedCrop tries 10 boxes before its centre-crop fallback


@dataclass(frozen=True)
class AugPlan:
    crop: str  # resized | pad | none
    size: int  # output (training) size
    hflip: float
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (0.75, 4.0 / 3.0)
    pad: int = 4
    reason: str = ""  # why `auto` chose this crop (printed on the start line)

    def describe(self) -> str:
        if self.crop == "resized":
            crop = f"resized crop scale {self.scale[0]:g}-{self.scale[1]:g} ratio {self.ratio[0]:.3g}-{self.ratio[1]:.3g}"
        elif self.crop == "pad":
            crop = f"pad-crop {self.pad} px"
        else:
            crop = "no crop"
        text = f"aug: {crop} to {self.size} px, hflip {self.hflip:g}"
        return f"{text} ({self.reason})" if self.reason else text


def resolve_plan(aug: Any, stored_size: Optional[int], out_size: int, pad: int, kept_aspect: bool = False) -> AugPlan:
    """The plan for aug config `aug` and images stored at about `stored_size` px (None: unknown).

    `kept_aspect`: the images were packed with `--keep-aspect`, which stores them for random resized crops;
    `auto` gives those crops whatever the stored size.

    Compatibility with aug.policy (older configs): policy=none meant no crop and no flip, so with
    crop=auto and hflip unset it still does; flip-crop and the other policies get crop=auto, hflip 0.5.
    """
    policy = str(aug.policy)
    hflip = aug.hflip if aug.hflip is not None else (0.0 if policy == "none" else 0.5)
    crop, reason = str(aug.crop), ""
    if crop == "auto":
        if policy == "none":
            crop, reason = "none", "aug.policy=none"
        elif kept_aspect:
            crop, reason = "resized", f"auto: a keep-aspect pack (short side {stored_size} px) is stored for resized crops"
        elif stored_size is not None and abs(stored_size / out_size - 1) <= ABOUT_SAME_SIZE:
            crop, reason = "pad", f"auto: images are {stored_size} px, about data.img_size={out_size}"
        elif stored_size is not None:
            crop, reason = "resized", f"auto: images are {stored_size} px, data.img_size={out_size}"
        else:
            crop, reason = "resized", "auto: image sizes unknown"
    return AugPlan(
        crop, int(out_size), float(hflip), tuple(float(v) for v in aug.scale),  # type: ignore[arg-type]
        tuple(float(v) for v in aug.ratio), int(pad), reason,  # type: ignore[arg-type]
    )  # fmt: skip


@dataclass(frozen=True)
class SizeSchedule:
    """Progressive resizing: epoch (1-based) -> training size, from [(fraction of training, size), ...]."""

    steps: tuple[tuple[float, int], ...]
    epochs: int

    def __call__(self, epoch: int) -> int:
        size = self.steps[0][1]
        for fraction, step_size in self.steps:
            if epoch - 1 >= fraction * self.epochs - 1e-9:  # done/total >= fraction, without float drift
                size = step_size
        return size


@dataclass
class CropParams:
    """Per-sample parameters for a run of samples (CPU int64/bool tensors, one entry per sample).

    A box (y, x, h, w) in source pixels for resized/none crops; (y, x) the window origin in the padded,
    output-sized image for pad-crops."""

    y: torch.Tensor
    x: torch.Tensor
    h: torch.Tensor
    w: torch.Tensor
    flip: torch.Tensor

    def __getitem__(self, part: Any) -> CropParams:
        return CropParams(self.y[part], self.x[part], self.h[part], self.w[part], self.flip[part])

    def to(self, device: torch.device) -> CropParams:
        return CropParams(*(t.to(device, non_blocking=True) for t in (self.y, self.x, self.h, self.w, self.flip)))


def _dims(n: int, height: int | torch.Tensor, width: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample int64 heights and widths (n,) from ints (one size for all) or tensors."""
    h = torch.as_tensor(height, dtype=torch.int64).expand(n) if n else torch.zeros(0, dtype=torch.int64)
    w = torch.as_tensor(width, dtype=torch.int64).expand(n) if n else torch.zeros(0, dtype=torch.int64)
    return h, w


def resized_crop_boxes(
    generator: torch.Generator,
    n: int,
    height: int | torch.Tensor,
    width: int | torch.Tensor,
    scale: tuple,
    ratio: tuple,
) -> tuple[torch.Tensor, ...]:
    """(y, x, h, w) of n RandomResizedCrop boxes, vectorised over samples and tries (torchvision's rule).
    `height`/`width`: one stored size for all samples, or (n,) tensors, each sample's own size (the draws
    are the same either way, so a box depends only on its sample's size)."""
    area_fraction = torch.empty(n, TRIES, dtype=torch.float64).uniform_(scale[0], scale[1], generator=generator)
    log_ratio = torch.empty(n, TRIES, dtype=torch.float64).uniform_(
        math.log(ratio[0]), math.log(ratio[1]), generator=generator
    )
    position = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    return boxes_from_draws(area_fraction, log_ratio, position, height, width, ratio)


def boxes_from_draws(
    area_fraction: torch.Tensor,
    log_ratio: torch.Tensor,
    position: torch.Tensor,
    height: int | torch.Tensor,
    width: int | torch.Tensor,
    ratio: tuple,
) -> tuple[torch.Tensor, ...]:
    """RandomResizedCrop's boxes from its draws: (n, TRIES) area fractions and log aspect ratios, (n, 2)
    uniforms for the box's place. Whoever draws them (a generator, or gpu_decode's per-sample hash) gets
    torchvision's rule: the first try that fits, else a centre crop clamped to the ratio range."""
    n = len(area_fraction)
    height, width = _dims(n, height, width)
    heights, widths = height.view(n, 1), width.view(n, 1)
    area = (heights * widths).double()
    target = area * area_fraction
    aspect = torch.exp(log_ratio)
    w = torch.sqrt(target * aspect).round().long()
    h = torch.sqrt(target / aspect).round().long()
    ok = (w > 0) & (w <= widths) & (h > 0) & (h <= heights)
    first = ok.long().argmax(dim=1)  # the first try that fits, as the loop in torchvision stops there
    found = ok.any(dim=1)
    rows = torch.arange(n)
    h, w = h[rows, first], w[rows, first]
    # Fallback (no try fits): centre crop of the whole image clamped to the ratio range.
    in_ratio = width.double() / height.double()
    fw = torch.where(in_ratio > ratio[1], (height.double() * ratio[1]).round().long(), width)
    fh = torch.where(in_ratio < ratio[0], (width.double() / ratio[0]).round().long(), height)
    h = torch.where(found, h, fh)
    w = torch.where(found, w, fw)
    u = position
    y = torch.minimum((u[:, 0] * (height - h + 1)).floor().long(), height - h)
    x = torch.minimum((u[:, 1] * (width - w + 1)).floor().long(), width - w)
    y = torch.where(found, y, torch.div(height - fh, 2, rounding_mode="floor"))
    x = torch.where(found, x, torch.div(width - fw, 2, rounding_mode="floor"))
    return y, x, h, w


def centre_square_boxes(height: torch.Tensor, width: torch.Tensor) -> CropParams:
    """The centre square (side = the short side) of each image, with CenterCrop's rounding, no flip: the
    validation view of variable-size images, which is what a square pack stores."""
    side = torch.minimum(height, width)
    y = torch.round((height - side).double() / 2).long()
    x = torch.round((width - side).double() / 2).long()
    return CropParams(y, x, side.clone(), side.clone(), torch.zeros(len(side), dtype=torch.bool))


def draw_params(
    generator: torch.Generator, n: int, plan: AugPlan, height: int | torch.Tensor, width: int | torch.Tensor
) -> CropParams:
    """Parameters for n samples of height x width stored images. Draws a fixed amount from `generator` for
    a given (plan.crop, n), so positions keep their parameters whatever the batch size or resume point.

    `height`/`width` may be (n,) tensors, each sample's own size (variable-size packs): resized boxes then
    lie inside each sample's own bounds, and `none` takes each sample's centre square (ints: the whole
    image, as before). `pad` offsets do not depend on the size."""
    if plan.crop == "resized":
        y, x, h, w = resized_crop_boxes(generator, n, height, width, plan.scale, plan.ratio)
    elif plan.crop == "pad":
        span = 2 * plan.pad + 1
        y = torch.randint(0, span, (n,), generator=generator)
        x = torch.randint(0, span, (n,), generator=generator)
        h = w = torch.full((n,), plan.size, dtype=torch.int64)
    elif isinstance(height, torch.Tensor) or isinstance(width, torch.Tensor):
        box = centre_square_boxes(*_dims(n, height, width))
        y, x, h, w = box.y, box.x, box.h, box.w
    else:
        y = x = torch.zeros(n, dtype=torch.int64)
        h, w = torch.full((n,), height, dtype=torch.int64), torch.full((n,), width, dtype=torch.int64)
    flip = torch.rand(n, generator=generator) < plan.hflip
    return CropParams(y, x, h, w, flip)


def memory_format(channels_last: bool) -> torch.memory_format:
    """The layout a loader gives its batches: the one the run feeds the model (`channels_last` is the run's
    decision, data.input_channels_last / train.runtime.channels_last_default), so the Step copies nothing."""
    return torch.channels_last if channels_last else torch.contiguous_format


class Normalise:
    """A batch of 0..255 pixels (uint8, or a float temporary) NCHW on `device` -> float32 (x / 255 - mean) / std,
    laid out channels_last when `channels_last` (settable: the run decides once the model is built). Every
    loader normalises on the training device with this: workers and host threads move uint8 bytes only."""

    def __init__(self, mean: tuple, std: tuple, device: torch.device, channels_last: bool = False):
        self.device, self.channels_last = torch.device(device), bool(channels_last)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        # (x / 255 - mean) / std == x * scale + shift: two in-place passes over the batch
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -mean_t / std_t

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        fmt = memory_format(self.channels_last)
        if x.is_floating_point():  # the caller's own temporary: normalised in place
            out = x.contiguous(memory_format=fmt)
        else:
            out = torch.empty(x.shape, dtype=torch.float32, device=x.device, memory_format=fmt)
            out.copy_(x)
        return out.mul_(self.scale).add_(self.shift)


class BatchAugmenter:
    """uint8 NCHW batch on the device + CropParams -> float32 normalised NCHW at plan.size, in channels_last
    layout when `channels_last` (settable: the run decides once the model is built)."""

    def __init__(
        self, plan: AugPlan, mean: tuple, std: tuple, device: torch.device, train: bool, channels_last: bool = False
    ):
        self.plan, self.device, self.train = plan, torch.device(device), train
        self.normalise = Normalise(mean, std, self.device, channels_last)

    @property
    def channels_last(self) -> bool:
        return self.normalise.channels_last

    @channels_last.setter
    def channels_last(self, on: bool) -> None:
        self.normalise.channels_last = bool(on)

    def __call__(self, x: torch.Tensor, params: Optional[CropParams], size: Optional[int] = None) -> torch.Tensor:
        """`size` overrides plan.size (progressive resizing); the parameters do not depend on it."""
        size = size or self.plan.size
        n, _, height, width = x.shape
        if not self.train or params is None:  # evaluation: the whole image at the output size
            out = x.float() if (height, width) == (size, size) else _resize(x.float(), size)
            return self._normalise(out)
        if self.plan.crop == "resized" or (self.plan.crop == "none" and (height, width) != (size, size)):
            return self.finish(_boxes_to_size(x.float(), params, size), params, pad=False)
        out = x.float() if (height, width) == (size, size) else _resize(x.float(), size)
        return self.finish(out, params)

    @staticmethod
    def resample(x: torch.Tensor, params: CropParams, size: int) -> torch.Tensor:
        """float32 crops of the boxes in `params` at size x size (one roi_align)."""
        return _boxes_to_size(x.float(), params, size)

    def finish(self, out: torch.Tensor, params: Optional[CropParams], pad: bool = True) -> torch.Tensor:
        """A float batch already at the output size: pad-crop (plan.crop=pad), flip, normalise."""
        if params is None:
            return self._normalise(out)
        if pad and self.plan.crop == "pad" and self.plan.pad > 0:
            out = _pad_crop(out, params.y, params.x, self.plan.pad)
        if self.plan.hflip > 0:
            if self.device.type == "cpu":  # only the flipped ones are touched; nonzero() is free on the CPU
                which = params.flip.nonzero().squeeze(1)
                out.index_copy_(0, which, out.index_select(0, which).flip(3))
            else:  # no host sync on a GPU
                out = torch.where(params.flip.view(-1, 1, 1, 1), out.flip(3), out)
        return self._normalise(out)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalise(x)


def _boxes_to_size(x: torch.Tensor, p: CropParams, size: int) -> torch.Tensor:
    """One roi_align over the batch: box i of image i, bilinear, averaged over ceil(box/size) samples per
    output pixel (an antialiased downscale; exact pixels when the box is already `size`)."""
    from torchvision.ops import roi_align

    idx = torch.arange(len(x), device=x.device, dtype=torch.float32)
    boxes = torch.stack([idx, p.x.float(), p.y.float(), (p.x + p.w).float(), (p.y + p.h).float()], dim=1)
    return roi_align(x, boxes, output_size=size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def _pad_crop(x: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor, pad: int) -> torch.Tensor:
    """A window of x's size at (y0, x0) of each zero-padded image, gathered for the whole batch at once."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad,) * 4)
    rows = (y0.view(n, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1)
    cols = (x0.view(n, 1) + torch.arange(w, device=x.device)).view(n, 1, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    chan = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[batch, chan, rows, cols]


def stored_size_hint(source: Any, samples: int = 16) -> Optional[int]:
    """The stored images' typical short side: the array's size, or the median over a few files' headers."""
    images = getattr(source, "images", None)
    if getattr(images, "variable_size", False):  # a keep-aspect pack: every short side is the packed size
        return int(images.short_side)
    if images is not None:
        return int(min(images.shape[1], images.shape[2]))
    files = getattr(source, "files", None)
    if not files:
        return None
    from PIL import Image

    step = max(1, len(files) // samples)
    sides = []
    for path in files[::step][:samples]:
        try:
            with Image.open(path) as img:  # reads the header only
                sides.append(min(img.size))
        except Exception:  # noqa: BLE001 - an unreadable file is reported by the loader, not here
            continue
    return int(sorted(sides)[len(sides) // 2]) if sides else None
