"""The in-memory tensor loader: the whole split resident on the device, augmented a batch at a time.

The airbench idea, kept general: uint8 images live on the training device (GPU memory on a GPU, plain RAM
on the CPU), zero-padded once for training. Each epoch draws its permutation, crop offsets and flips in one
shot on a CPU generator seeded by (seed, epoch), so the order and augmentation are bitwise the same on any
device and `batches(epoch, k)` starts at batch k without computing the skipped batches.

A random crop of a padded image is W-byte rows read at `start + row * padded_width`, so a whole batch
crops with a single `index_select` over an overlapping-rows view of the padded data (no per-sample Python,
no per-pixel index arithmetic); flips and normalisation then run on the whole batch.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Optional

import torch
import torch.nn.functional as F

from trainlab.data.augment import AugPlan, BatchAugmenter, CropParams, Normalise, draw_params
from trainlab.data.torch_loader import stream_seed

_AUGMENT_TAG = 0x54454E53  # keeps this loader's stream apart from the torch loader's ones


class TensorLoader:
    """Loader protocol: `batches(epoch, start)` yields (float32 NCHW normalised, int64 labels) on `device`."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        device: torch.device,
        train: bool,
        seed: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        pad: int = 4,
        flip: bool = True,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        plan: Optional[AugPlan] = None,
        size_at: Optional[Callable[[int], int]] = None,
        channels_last: bool = False,
    ):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 NHWC, got {images.dtype} of shape {tuple(images.shape)}")
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.train = bool(train)
        self.seed = int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.drop_last = bool(drop_last) and self.train  # evaluation always sees every sample
        self.dataset_size = len(images)
        _, self.height, self.width, self.channels = images.shape
        if plan is None:  # the pad/flip arguments: pad-crop and a fair coin flip at the stored size
            plan = AugPlan("pad" if pad > 0 else "none", self.height, 0.5 if flip else 0.0, pad=int(pad))
        self.plan = plan
        # Pad-crops at the stored size take the fast row-gather below; anything that resamples (resized
        # crops, another output size) goes through the batch augmenter's roi_align.
        self.size_at = size_at if self.train else None  # progressive resizing: epoch -> size
        self._resample = (
            plan.size != self.height or plan.size != self.width or (train and plan.crop == "resized")
            or self.size_at is not None
        )  # fmt: skip
        self.pad = plan.pad if self.train and plan.crop == "pad" and not self._resample else 0
        self.flip = plan.hflip > 0 and self.train
        self._augmenter = BatchAugmenter(plan, mean, std, self.device, self.train) if self._resample else None
        self._normalise = self._augmenter.normalise if self._augmenter is not None else Normalise(mean, std, self.device)
        self.channels_last = channels_last

        # NCHW uint8 on the device; moved before permuting so a GPU does the layout work.
        data = images.to(self.device).permute(0, 3, 1, 2).contiguous()
        if self.pad > 0:
            data = F.pad(data, (self.pad,) * 4)  # zeros, as torchvision's RandomCrop(padding=p)
        self._data = data
        self._labels = labels.to(device=self.device, dtype=torch.int64)
        h_pad, w_pad = data.shape[2], data.shape[3]
        self._image_stride = self.channels * h_pad * w_pad
        # Every byte offset is the start of a W-wide row; a crop row is one of them.
        flat = data.view(-1)
        self._rows = flat.as_strided((flat.numel() - self.width + 1, self.width), (1, 1))
        # Offsets of each output row (channel c, row r) from an image's crop origin.
        c = torch.arange(self.channels, device=self.device).view(-1, 1)
        r = torch.arange(self.height, device=self.device).view(1, -1)
        self._row_offsets = (c * (h_pad * w_pad) + r * w_pad).view(1, -1)


        if self.train:  # DistributedSampler semantics: pad the permutation so every rank has the same count
            self.num_samples = math.ceil(self.dataset_size / self.world_size)
        else:  # val: rank r takes r::world_size, no padding, so no sample is counted twice
            self.num_samples = len(range(self.rank, self.dataset_size, self.world_size))

    @property
    def channels_last(self) -> bool:
        """Whether batches come in channels_last layout (the run's train.channels_last decision)."""
        return self._normalise.channels_last

    @channels_last.setter
    def channels_last(self, on: bool) -> None:
        self._normalise.channels_last = bool(on)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def epoch_plan(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(indices, crop y, crop x, flip) for this rank's samples in `epoch`, in order, on the CPU."""
        indices, params = self.epoch_params(epoch)
        return indices, params.y, params.x, params.flip

    def epoch_params(self, epoch: int) -> tuple[torch.Tensor, CropParams]:
        """This rank's dataset indices in `epoch` and their crop/flip parameters, in order, on the CPU."""
        n, ws = self.dataset_size, self.world_size
        if not self.train:
            indices = torch.arange(self.rank, n, ws)
            zeros = torch.zeros(len(indices), dtype=torch.int64)
            full_h, full_w = torch.full_like(zeros, self.height), torch.full_like(zeros, self.width)
            return indices, CropParams(zeros, zeros, full_h, full_w, torch.zeros(len(indices), dtype=torch.bool))
        generator = torch.Generator().manual_seed(stream_seed(self.seed, epoch, _AUGMENT_TAG))
        order = torch.randperm(n, generator=generator)
        # Parameters for the n positions of the permutation, whatever the process count (drawn for the padded
        # length, every draw after the first would move with it: a resume on another count augmented each
        # sample differently). Draw for every position even when unused, so the streams do not depend on
        # pad/flip flags.
        crop_y = torch.randint(0, 2 * self.pad + 1, (n,), generator=generator)
        crop_x = torch.randint(0, 2 * self.pad + 1, (n,), generator=generator)
        flips = torch.rand(n, generator=generator) < (self.plan.hflip if self.flip else 0.0)
        size = torch.full((n,), self.height, dtype=torch.int64)
        params = CropParams(crop_y, crop_x, size, size.clone(), flips)
        if self._resample:  # drawn after the fast path's draws, which stay as they were
            params = draw_params(generator, n, self.plan, self.height, self.width)
        # DistributedSampler's padding to a multiple of the process count repeats the head, parameters too.
        position = torch.arange(self.num_samples * ws) % max(1, n)
        mine = position[self.rank :: ws]
        return order[mine], params[mine]

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        indices, params = self.epoch_params(epoch)
        indices, params = indices.to(self.device), params.to(self.device)
        on_cpu = self.device.type == "cpu"
        bs = self.batch_size
        size = self.size_at(epoch) if self.size_at is not None else None
        for b in range(max(0, int(start)), len(self)):
            part = slice(b * bs, (b + 1) * bs)
            idx = indices[part]
            p = params[part]
            with _single_threaded(on_cpu):
                if self._augmenter is not None:
                    images = self._augmenter(self._data[idx], p if self.train else None, size)
                else:
                    images = self._images(idx, p.y, p.x, p.flip, on_cpu)
            yield images, self._labels[idx]

    def _images(
        self, idx: torch.Tensor, crop_y: torch.Tensor, crop_x: torch.Tensor, flips: torch.Tensor, on_cpu: bool
    ) -> torch.Tensor:
        n, c, h, w = len(idx), self.channels, self.height, self.width
        origin = idx * self._image_stride + crop_y * self._data.shape[3] + crop_x
        starts = (origin.view(-1, 1) + self._row_offsets).view(-1)
        x = self._rows.index_select(0, starts).view(n, c, h, w)
        if self.flip:
            if on_cpu:  # only the flipped half is touched; nonzero() is free on the CPU
                which = flips.nonzero().squeeze(1)
                x.index_copy_(0, which, x.index_select(0, which).flip(3))
            else:  # no host sync on a GPU
                x = torch.where(flips.view(-1, 1, 1, 1), x.flip(3), x)
        return self._normalise(x)


@contextlib.contextmanager
def _single_threaded(active: bool) -> Iterator[None]:
    """One intra-op thread for the batch ops on the CPU.

    Each op is ~1 MB of memory-bound work: a multi-threaded OpenMP region per op saves little when cores
    are free (measured ~250k vs ~300k images/s on 2 idle cores) and stalls badly when they are shared, as
    every region waits for its slowest thread (measured 1.5k-23k vs 70k-250k images/s on a loaded 2-core
    machine). Setting the count is ~0.1 us; the count is restored for the model's ops.
    """
    threads = torch.get_num_threads()
    if not active or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
