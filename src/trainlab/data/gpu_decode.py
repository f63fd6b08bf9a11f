"""JPEG folders decoded on the GPU: host threads only read file bytes; nvjpeg decodes a batch at a time
(torchvision.io.decode_jpeg(list, device="cuda")); crops, flips and normalisation run on the GPU.

Selected by data.loader=auto for data.name=folder on a CUDA device when every file is a JPEG and the
augmentation is crop/flip only (`choose_gpu_decode` says why not otherwise, for the start line). JPEGs
nvjpeg rejects (progressive, CMYK/YCCK: told from the header bytes) are decoded on the CPU and moved to the
device, and a batch that fails on the GPU is decoded file by file on the CPU, so a corrupt file gets the
CPU path's one-line error naming it.

Order and sharding are the DataLoader path's (torch_loader.EpochOrder), so the same (seed, epoch) visits
the same samples in the same batches. Each sample's crop, flip and pad-crop offsets come from uniforms
hashed from (seed, epoch, index) (`sample_draws`, for the whole batch at once: the same crop on any process
count or batch), with torchvision's RandomResizedCrop rule (augment.boxes_from_draws); pad/none crops and
validation take the DataLoader path's Resize + CenterCrop box exactly (`centre_crop_boxes`, fractional source
pixels). The boxes go to the device in one copy, each image is resampled by its own roi_align (sizes differ),
and the batch is pad-cropped, flipped and normalised at once. The decode runs one batch ahead on a thread,
the file reads two ahead.

The decode itself has only run with device="cpu" (the same torchvision call) in this project's tests:
the CUDA path is unverified on a GPU.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.ops import roi_align

from trainlab.data.augment import TRIES, AugPlan, BatchAugmenter, CropParams, boxes_from_draws
from trainlab.data.torch_loader import EpochOrder, stream_seed

JPEG_SUFFIXES = (".jpg", ".jpeg")
_SAMPLE_TAG = 0x4A504547
# Start-of-frame markers (all but DHT C4, JPG C8, DAC CC); progressive/lossless ones nvjpeg may refuse.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_BASELINE = {0xC0, 0xC1}


def choose_gpu_decode(cfg: Any, files: list[str], device: torch.device) -> tuple[bool, str]:
    """(use the GPU decode path, why not / why) for a folder dataset."""
    if cfg.aug.policy not in ("none", "flip-crop") or float(cfg.aug.random_erasing) > 0:
        return False, f"aug.policy={cfg.aug.policy}/random_erasing need per-sample CPU transforms"
    others = [f for f in files if Path(f).suffix.lower() not in JPEG_SUFFIXES]
    if others:
        return False, f"{len(others)} file(s) are not JPEG (e.g. {others[0]}); nvjpeg decodes JPEG only"
    if device.type != "cuda" or not torch.cuda.is_available():
        return False, "no CUDA device"
    return True, "JPEG folder on CUDA: bytes read on the host, decoded and augmented on the GPU"


def nvjpeg_supported(data: bytes) -> tuple[bool, str]:
    """Whether nvjpeg takes this JPEG (baseline/extended Huffman, 1 or 3 components), from its header."""
    if len(data) < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return False, "not a JPEG (no start-of-image marker)"
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return False, "malformed JPEG header"
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = (data[i + 2] << 8) | data[i + 3]
        if marker in _SOF:
            if marker not in _BASELINE:
                return False, "progressive or lossless JPEG"
            components = data[i + 9] if i + 9 < len(data) else 0
            if components not in (1, 3):
                return False, f"{components}-component (CMYK/YCCK) JPEG"
            return True, ""
        i += 2 + length
    return False, "no frame header found"


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class GpuJpegLoader:
    """Loader protocol over a FolderDataset: `batches(epoch, start)` -> (float32 NCHW, int64) on `device`."""

    def __init__(
        self,
        source: Any,  # FolderDataset: .files, .labels, .load(i) (the CPU path, for its errors)
        batch_size: int,
        device: torch.device,
        train: bool,
        seed: int,
        mean: tuple,
        std: tuple,
        plan: AugPlan,
        rank: int = 0,
        world_size: int = 1,
        read_threads: int = 8,
        size_at: Optional[Any] = None,
        channels_last: bool = False,
    ):
        self.source, self.device, self.train, self.seed, self.plan = source, torch.device(device), train, seed, plan
        self.order = EpochOrder(len(source), batch_size, train, seed, rank, world_size)
        self.batch_size, self.num_samples = batch_size, self.order.num_samples
        self._augmenter = BatchAugmenter(plan, mean, std, self.device, train, channels_last)
        self._threads = read_threads
        self.size_at = size_at if train else None  # progressive resizing: epoch -> size
        self.cpu_fallbacks: list[tuple[str, str]] = []  # (file, reason) decoded on the CPU instead
        self._labels = torch.as_tensor(list(source.labels), dtype=torch.int64)

    @property
    def channels_last(self) -> bool:
        """Whether batches come in channels_last layout (the run's train.channels_last decision)."""
        return self._augmenter.channels_last

    @channels_last.setter
    def channels_last(self, on: bool) -> None:
        self._augmenter.channels_last = bool(on)

    def __len__(self) -> int:
        return self.order.num_batches

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Reads run two batches ahead on the read threads and the decode one batch ahead on a thread of its
        own (the decode's host share, nvjpeg's Huffman stage or the CPU fallbacks, overlaps the step); the
        training thread only crops the decoded batch. One CUDA stream for both (the thread's current one,
        the default): the crop kernels are queued after the decode's, no event needed."""
        indices = self.order.indices(epoch).tolist()
        bs, n_batches, start = self.batch_size, len(self), max(0, int(start))
        if start >= n_batches:
            return
        with ThreadPoolExecutor(self._threads, thread_name_prefix="trainlab-jpeg") as pool, ThreadPoolExecutor(
            1, thread_name_prefix="trainlab-jpeg-decode"
        ) as decoder:
            reads: dict[int, list[Future]] = {}

            def read(b: int) -> None:
                if b < n_batches and b not in reads:
                    reads[b] = [pool.submit(read_bytes, self.source.files[i]) for i in indices[b * bs : (b + 1) * bs]]

            def load(b: int) -> list[torch.Tensor]:
                read(b + 1)  # the next batch's files are read while this one decodes
                return self._decode(indices[b * bs : (b + 1) * bs], [f.result() for f in reads.pop(b)])

            read(start)
            ahead = decoder.submit(load, start)
            try:
                for b in range(start, n_batches):
                    images = ahead.result()
                    if b + 1 < n_batches:
                        ahead = decoder.submit(load, b + 1)
                    idx = indices[b * bs : (b + 1) * bs]
                    labels = self._labels[idx].to(self.device, non_blocking=True)
                    yield self._augment(images, idx, epoch), labels
            finally:  # stopped early (or failed): nothing more is read or decoded
                for futures in reads.values():
                    for future in futures:
                        future.cancel()
                ahead.cancel()

    def _decode(self, idx: list[int], datas: list[bytes]) -> list[torch.Tensor]:
        """uint8 CHW RGB images on the device, in order."""
        out: list[Optional[torch.Tensor]] = [None] * len(idx)
        on_device = []
        for k, (i, data) in enumerate(zip(idx, datas)):
            ok, why = nvjpeg_supported(data)
            if ok:
                on_device.append(k)
            else:
                self.cpu_fallbacks.append((self.source.files[i], why))
                out[k] = self._cpu(i)
        if on_device:
            tensors = [torch.frombuffer(bytearray(datas[k]), dtype=torch.uint8) for k in on_device]
            try:
                decoded = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=self.device)
            except Exception:  # noqa: BLE001 - a corrupt file fails the batch: find it on the CPU path
                decoded = [self._cpu(idx[k]) for k in on_device]
            for k, image in zip(on_device, decoded):
                out[k] = image
        return out  # type: ignore[return-value]

    def _cpu(self, index: int) -> torch.Tensor:
        image, _ = self.source.load(index)  # raises the CPU path's DataError for a bad file
        return image.to(self.device, non_blocking=True)

    def _augment(self, images: list[torch.Tensor], idx: list[int], epoch: int) -> torch.Tensor:
        """The decoded images (sizes differ) -> the normalised batch at the training size. Host work is per
        batch: every sample's crop from its own hashed draws at once (`sample_draws`, a pure function of
        (seed, epoch, index): the same on any process count), the boxes, pad offsets and flips in one
        host-to-device copy; per image there is one roi_align on its own box (a list of sizes has no batched
        resample without a padded canvas of the largest height x width per image), then the batch is
        pad-cropped, flipped and normalised at once."""
        size = self.size_at(epoch) if self.size_at is not None else self.plan.size
        n = len(images)
        heights = torch.tensor([image.shape[1] for image in images], dtype=torch.int64)
        widths = torch.tensor([image.shape[2] for image in images], dtype=torch.int64)
        plan = self.plan
        pad_y = pad_x = flip = torch.zeros(n, dtype=torch.float64)
        if self.train:
            draws = sample_draws(self.seed, epoch, torch.tensor(idx, dtype=torch.int64))
            t = TRIES
            flip = (draws[:, 2 * t + 2] < plan.hflip).double()
            if plan.crop == "resized":
                area = plan.scale[0] + (plan.scale[1] - plan.scale[0]) * draws[:, :t]
                low, high = math.log(plan.ratio[0]), math.log(plan.ratio[1])
                log_ratio = low + (high - low) * draws[:, t : 2 * t]
                y, x, h, w = boxes_from_draws(area, log_ratio, draws[:, 2 * t : 2 * t + 2], heights, widths, plan.ratio)
                boxes = torch.stack([x, y, x + w, y + h], dim=1).double()
            else:  # pad/none: the DataLoader path's Resize + CenterCrop, then (pad) a pad-crop window
                boxes = centre_crop_boxes(heights, widths, size, _resize_side(plan, size))
                if plan.crop == "pad":
                    span = 2 * plan.pad + 1
                    pad_y = (draws[:, 2 * t + 3] * span).floor()
                    pad_x = (draws[:, 2 * t + 4] * span).floor()
        else:  # transforms.build_val_transform's geometry (transforms.val_geometry)
            boxes = centre_crop_boxes(heights, widths, size, _resize_side(plan, size))
        # roi_align's rows (image 0 of its one-image input, then the box) and the pad/flip columns, in one
        # flat buffer: the batch's one host-to-device copy, viewed as two contiguous tables there
        rois = torch.cat([torch.zeros(n, 1, dtype=torch.float64), boxes], dim=1)
        flat = torch.cat([rois.flatten(), torch.stack([pad_y, pad_x, flip], dim=1).flatten()]).float()
        flat = flat.to(self.device, non_blocking=True)
        rois, extras = flat[: 5 * n].view(n, 5), flat[5 * n :].view(n, 3)
        batch = torch.cat([
            roi_align(image[None].float(), rois[k : k + 1], output_size=size, spatial_scale=1.0, sampling_ratio=-1,
                      aligned=True)
            for k, image in enumerate(images)
        ])  # fmt: skip
        if not self.train:
            return self._augmenter.finish(batch, None)
        full = torch.full((n,), size, dtype=torch.int64, device=self.device)
        params = CropParams(extras[:, 0].long(), extras[:, 1].long(), full, full, extras[:, 2] > 0.5)
        return self._augmenter.finish(batch, params, pad=plan.crop == "pad")


DRAWS = 2 * TRIES + 5  # per sample: area fractions, log ratios (TRIES each), box place (2), flip, pad-crop (2)


def sample_draws(seed: int, epoch: int, index: torch.Tensor) -> torch.Tensor:
    """(len(index), DRAWS) uniforms in [0, 1), each a hash of (seed, epoch, dataset index, k): a pure function of
    the sample, computed for a whole batch at once (splitmix64 over uint64 counters, numpy's wrapping
    arithmetic) where a torch.Generator per image cost ~100 us of Python each."""
    key = np.uint64(stream_seed(seed, epoch, _SAMPLE_TAG))
    counters = index.numpy().astype(np.uint64)[:, None] * np.uint64(DRAWS) + np.arange(DRAWS, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (counters ^ key) + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return torch.from_numpy((x >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53)))


def _resize_side(plan: AugPlan, size: int) -> int:
    """The short side torchvision's Resize gives before CenterCrop(size) on the DataLoader path: the training
    size itself for pad-crop plans (train and val: transforms.val_geometry); the ImageNet zoom (size * 256 /
    224) for validation after resized crops and for the folder's `none` crop (build_train_transform)."""
    return size if plan.crop == "pad" else int(round(size * 256 / 224))


def centre_crop_boxes(heights: torch.Tensor, widths: torch.Tensor, size: int, side: int) -> torch.Tensor:
    """(n, 4) float boxes (x0, y0, x1, y1) in source pixels of Resize(side) + CenterCrop(size), exactly as
    torchvision computes them: the short side to `side`, the long one truncated (int(side * long / short)),
    the crop's origin rounded in resized pixels; mapped back through each axis's own scale."""
    short = torch.minimum(heights, widths).double()
    long_side = (torch.maximum(heights, widths).double() * side / short).floor()
    resized_h = torch.where(heights <= widths, torch.full_like(short, side), long_side)
    resized_w = torch.where(heights <= widths, long_side, torch.full_like(short, side))
    top = torch.round((resized_h - size) / 2)
    left = torch.round((resized_w - size) / 2)
    sy, sx = heights.double() / resized_h, widths.double() / resized_w
    return torch.stack([left * sx, top * sy, (left + size) * sx, (top + size) * sy], dim=1)
