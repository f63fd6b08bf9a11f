"""JPEG folders decoded on the GPU: host threads only read file bytes; nvjpeg decodes a batch at a time
(torchvision.io.decode_jpeg(list, device="cuda")); crops, flips and normalisation run on the GPU.

Selected by data.loader=auto for data.name=folder on a CUDA device when every file is a JPEG and the
augmentation is crop/flip only (`choose_gpu_decode` says why not otherwise, for the start line). JPEGs
nvjpeg rejects (progressive, CMYK/YCCK: told from the header bytes) are decoded on the CPU and moved to the
device, and a batch that fails on the GPU is decoded file by file on the CPU, so a corrupt file gets the
CPU path's one-line error naming it.

Order and sharding are the DataLoader path's (torch_loader.EpochOrder), so the same (seed, epoch) visits
the same samples in the same batches. Images differ in size, so each sample's crop box is drawn from its own
generator seeded by (seed, epoch, index) with torchvision's RandomResizedCrop rule (augment.py) and
resampled by roi_align per image; flips and normalisation then run on the stacked batch.

The decode itself has only run with device="cpu" (the same torchvision call) in this project's tests:
the CUDA path is unverified on a GPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

import torch
from torchvision.io import ImageReadMode, decode_jpeg

from trainlab.data.augment import AugPlan, BatchAugmenter, CropParams, draw_params
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
        indices = self.order.indices(epoch).tolist()
        bs, n_batches = self.batch_size, len(self)
        with ThreadPoolExecutor(self._threads, thread_name_prefix="trainlab-jpeg") as pool:

            def submit(b: int) -> list[Future]:
                return [pool.submit(read_bytes, self.source.files[i]) for i in indices[b * bs : (b + 1) * bs]]

            pending = submit(start) if start < n_batches else []
            for b in range(max(0, start), n_batches):
                datas = [f.result() for f in pending]
                pending = submit(b + 1) if b + 1 < n_batches else []  # read ahead while this one decodes
                idx = indices[b * bs : (b + 1) * bs]
                images = self._decode(idx, datas)
                labels = torch.tensor([self.source.labels[i] for i in idx], dtype=torch.int64)
                yield self._augment(images, idx, epoch), labels.to(self.device, non_blocking=True)

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
        """Each image to plan.size through its own box (one roi_align each: sizes differ), then the batch
        is flipped and normalised at once."""
        size = self.size_at(epoch) if self.size_at is not None else self.plan.size
        crops, flips, pads = [], [], []
        for image, i in zip(images, idx):
            _, h, w = image.shape
            if self.train:
                gen = torch.Generator().manual_seed(stream_seed(self.seed, epoch, i, _SAMPLE_TAG))
                p = draw_params(gen, 1, self.plan, h, w)
                pads.append(p)  # a pad-crop's offsets: the sample's own, whatever batch it lands in
                if self.plan.crop != "resized":  # pad/none: resize the short side, centre crop, then pad-crop
                    p = _centre_box(h, w, size, 1.0, p.flip)
            else:  # val geometry of the CPU path: Resize(size * 256 / 224) + CenterCrop(size), or for a
                # pad-crop plan Resize(size) + CenterCrop(size) (transforms.val_geometry)
                fraction = 1.0 if self.plan.crop == "pad" else 224 / 256
                p = _centre_box(h, w, size, fraction, torch.zeros(1, dtype=torch.bool))
            crops.append(BatchAugmenter.resample(image[None], p.to(image.device), size))
            flips.append(p.flip)
        batch = torch.cat(crops)
        if self.train and self.plan.crop == "pad":
            y, x = torch.cat([p.y for p in pads]), torch.cat([p.x for p in pads])
            params = CropParams(y, x, y * 0 + size, x * 0 + size, torch.cat(flips)).to(self.device)
        else:
            zeros = torch.zeros(len(idx), dtype=torch.int64)
            params = CropParams(zeros, zeros, zeros + size, zeros + size, torch.cat(flips)).to(self.device)
        return self._augmenter.finish(batch, params if self.train else None)


def _centre_box(h: int, w: int, size: int, fraction: float, flip: torch.Tensor) -> CropParams:
    """The centred square of side short * fraction: Resize(size / fraction) then CenterCrop(size)."""
    side = max(1, round(min(h, w) * fraction))
    y, x = (h - side) // 2, (w - side) // 2
    t = lambda v: torch.tensor([v], dtype=torch.int64)  # noqa: E731
    return CropParams(t(y), t(x), t(side), t(side), flip)
