"""The streaming loader for packed data: large contiguous reads, a quasi-random order, augmentation on the device.

For packed sets that must not be copied whole into host or device memory (`data.loader=stream`, or what
`data.loader=auto` picks when a set exceeds the memory budget; see memory.py).

Order. The split is cut into blocks of consecutive samples (a few MB each: one read each). An epoch
visits the blocks in a shuffled order, a window of `window_blocks` blocks at a time, and shuffles the
samples within each window: each sample exactly once, every read is a block-sized sequential read, and
the host holds about two windows of blocks at a time. (FFCV's QUASI_RANDOM order has the same shape:
shuffled pages, then shuffling inside a buffer of them.) Both the order and the augmentation parameters
are drawn in one shot per epoch from CPU generators seeded by (seed, epoch), so `batches(epoch, k)`
starts at batch k without reading the skipped ones and the same (seed, epoch) gives the same batches.

Sharding: lanes. The epoch's order is cut into `lanes` contiguous parts of equal length (its head repeated
at the end to fill them), and the epoch's sequence interleaves them: position j is element j // lanes of
lane j % lanes. Rank r of N takes positions r::N of that sequence (padded by repeating its head to a
multiple of N: DistributedSampler's rule, like the other loaders), so optimizer step k sees the same
samples on any process count with the same global batch. `lanes` is the process count the run started
with and is kept across resumes (`state_dict`): with N == lanes rank r reads lane r alone, a contiguous
share of the windows (ranks read disjoint blocks); a 2 x 16 run resumed as 1 x 32 reads both lanes and
continues the very same order. A fresh 1-process run has one lane: its order is not a 2-process run's.
Validation: each rank a contiguous range of len(range(r, N, world_size)) samples, no padding.

Variable-size images (a `--keep-aspect` pack, packed.VariableImages). Blocks are runs of consecutive
images of about BLOCK_BYTES (one contiguous pread each). A batch is gathered into the top-left corner of a
padded (B, Hmax, Wmax, 3) view of a reusable host buffer (capacity: batch size x the largest height x the
largest width; Hmax, Wmax are the batch's own maxima), each image's last row and column copied once into
the padding so roi_align's bilinear taps at an image's edge see that edge (exactly as at a tensor's border).
Each sample's parameters are drawn in ITS OWN (h, w) (augment.draw_params with per-sample sizes), so a
resized-crop box never leaves its image. `pad` and `none` crops, and validation, start from each image's
centre square (its short side, with CenterCrop's rounding) resized to the output size; `pad` then pad-crops
it. So validation sees what a square pack of the same images stores.

Pipeline. A background thread reads blocks with pread (no memory map: touched pages of a mapping would
count against the process's memory), gathers a batch into one of a few reusable (pinned, on CUDA) host
buffers; the training thread copies it to the device (non_blocking) and augments the whole batch there
(augment.BatchAugmenter: per-sample resized-crop boxes with one roi_align, pad-crop, flip, normalise).
"""

from __future__ import annotations

import math
import os
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Optional

import numpy as np
import torch

from trainlab.data.augment import AugPlan, BatchAugmenter, CropParams, centre_square_boxes, draw_params
from trainlab.data.tensor_loader import _single_threaded
from trainlab.data.torch_loader import stream_seed
from trainlab.errors import DataError

_ORDER_TAG = 0x53545245  # keeps this loader's streams apart from the other loaders' ones
_AUGMENT_TAG = 0x53544147
BLOCK_BYTES = 4 << 20  # one read; large enough for NVMe/page-cache throughput, small against any budget
WINDOW_BLOCKS = 8  # blocks shuffled together: randomness vs host memory (about 2 windows resident)


def quasi_random_order(
    n: int, block: int, window_blocks: int, generator: torch.Generator, bounds: Optional[np.ndarray] = None
) -> torch.Tensor:
    """A permutation of range(n): shuffled blocks of `block` consecutive indices, shuffled within windows.
    `bounds` (n_blocks + 1 increasing sample indices, 0 ... n) gives blocks of varying length instead."""
    if bounds is None:
        bounds = np.append(np.arange(0, n, block), n)
    n_blocks = len(bounds) - 1
    block_order = torch.randperm(n_blocks, generator=generator)
    parts = []
    for w in range(0, n_blocks, window_blocks):
        members = torch.cat(
            [torch.arange(int(bounds[b]), int(bounds[b + 1])) for b in block_order[w : w + window_blocks].tolist()]
        )
        parts.append(members[torch.randperm(len(members), generator=generator)])
    return torch.cat(parts)


def _repeat_head(order: torch.Tensor, total: int) -> torch.Tensor:
    """`order` extended to `total` by repeating its head (DistributedSampler's padding)."""
    while len(order) < total:
        order = torch.cat([order, order[: total - len(order)]])
    return order


class _BlockReader:
    """Contiguous runs of samples from an (N, H, W, C) uint8 .npy file (pread) or an in-memory array;
    or, for VariableImages, contiguous byte ranges of the flat pixels file."""

    def __init__(self, images):
        self.variable = bool(getattr(images, "variable_size", False))
        array = images.pixels if self.variable else images
        self.count = len(images)
        if self.variable:
            self.sample_shape = (images.max_height, images.max_width, 3)
            self.offsets = images.offsets
            self.ends = images.offsets + images.heights * images.widths * 3
        else:
            self.sample_shape = tuple(images.shape[1:])
        self.sample_bytes = int(np.prod(self.sample_shape))  # the largest sample: a batch buffer's row
        filename = getattr(array, "filename", None)
        self._array = None if filename else array
        self._path, self._offset = filename, int(getattr(array, "offset", 0))
        self._fd: Optional[int] = None

    def bounds(self, block_bytes: int) -> np.ndarray:
        """Block boundaries (sample indices 0 ... N): fixed counts of equal samples, or runs of about
        `block_bytes` of variable ones (a sample larger than that is a block of its own)."""
        if not self.variable:
            block = max(1, int(block_bytes) // self.sample_bytes)
            return np.append(np.arange(0, self.count, block), self.count)
        bucket = (self.offsets - (self.offsets[0] if self.count else 0)) // max(1, int(block_bytes))
        starts = np.concatenate([[0], np.nonzero(np.diff(bucket))[0] + 1]) if self.count else np.zeros(0, np.int64)
        return np.append(starts, self.count).astype(np.int64)

    def read(self, first: int, count: int) -> np.ndarray:
        """Samples first .. first+count-1: (count, H, W, C), or for variable sizes their bytes (flat, from
        the smallest offset among them)."""
        if self.variable:
            start, stop = int(self.offsets[first : first + count].min()), int(self.ends[first : first + count].max())
            out = np.empty(stop - start, dtype=np.uint8)
        else:
            start = first * self.sample_bytes
            out = np.empty((count, *self.sample_shape), dtype=np.uint8)
        if self._array is not None:
            out[:] = self._array[start:stop] if self.variable else self._array[first : first + count]
            return out
        if self._fd is None:
            self._fd = os.open(self._path, os.O_RDONLY)
        view, done = memoryview(out).cast("B"), 0
        position = self._offset + start
        while done < len(view):
            got = os.preadv(self._fd, [view[done:]], position + done)
            if got <= 0:
                where = (
                    f"byte {start + done} of the pixels, reading images {first}..{first + count - 1} of {self.count}"
                    if self.variable else f"sample {first + done // self.sample_bytes} of {self.count}"
                )  # fmt: skip
                raise DataError(
                    f"{self._path} ended early ({where}); the packed file is truncated: repack it with `trainlab data pack`"
                )
            done += got
        return out

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class StreamLoader:
    """Loader protocol: `batches(epoch, start)` yields (float32 NCHW normalised, int64 labels) on `device`."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        device: torch.device,
        train: bool,
        seed: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        plan: AugPlan,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        block_bytes: int = BLOCK_BYTES,
        window_blocks: int = WINDOW_BLOCKS,
        prefetch: int = 3,
        size_at: Optional[Callable[[int], int]] = None,
        lanes: Optional[int] = None,
        channels_last: bool = False,
    ):
        variable = bool(getattr(images, "variable_size", False))
        if not variable and (images.dtype != np.uint8 or images.ndim != 4):
            raise ValueError(f"images must be uint8 NHWC, got {images.dtype} of shape {tuple(images.shape)}")
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad batch_size {batch_size} or rank {rank} of {world_size}")
        self.device = torch.device(device)
        self.batch_size, self.train, self.seed = int(batch_size), bool(train), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.drop_last = bool(drop_last) and self.train
        self.plan = plan
        self.size_at = size_at if self.train else None  # progressive resizing: epoch -> size
        self.dataset_size = len(images)
        self._reader = _BlockReader(images)
        self._labels = torch.from_numpy(np.asarray(labels, dtype=np.int64).copy())
        self.variable = variable
        if variable:  # each sample's own size: its crop box is drawn inside it
            self._heights = torch.from_numpy(np.array(images.heights, dtype=np.int64))
            self._widths = torch.from_numpy(np.array(images.widths, dtype=np.int64))
        self._bounds = self._reader.bounds(block_bytes)
        self._block_of = np.repeat(np.arange(len(self._bounds) - 1), np.diff(self._bounds))  # sample -> block
        if variable and self.dataset_size:  # where each block's read starts in the pixels
            self._block_base = np.minimum.reduceat(self._reader.offsets, self._bounds[:-1])
        # about the bytes of one block (one read)
        self.block_bytes = max(int(block_bytes), self._reader.sample_bytes) if variable else int(
            self._bounds[1] if self.dataset_size else 1
        ) * self._reader.sample_bytes
        self.window_blocks = max(1, int(window_blocks))
        self.prefetch = max(1, int(prefetch))
        self._augmenter = BatchAugmenter(plan, mean, std, self.device, self.train, channels_last)
        self._set_lanes(self.world_size if lanes is None else lanes)

    def _set_lanes(self, lanes: int) -> None:
        if int(lanes) < 1:
            raise ValueError(f"lanes must be positive, got {lanes}")
        self.lanes = int(lanes)
        n, ws = self.dataset_size, self.world_size
        self._lane_length = math.ceil(n / self.lanes)
        if self.train:  # DistributedSampler semantics: pad so every rank has the same count
            self.num_samples = math.ceil(self.lanes * self._lane_length / ws)
        else:
            self.num_samples = len(range(self.rank, n, ws))

    @property
    def channels_last(self) -> bool:
        """Whether batches come in channels_last layout (the run's train.channels_last decision)."""
        return self._augmenter.channels_last

    @channels_last.setter
    def channels_last(self, on: bool) -> None:
        self._augmenter.channels_last = bool(on)

    def state_dict(self) -> dict:
        """What a resume needs to continue this order on any process count: the lane count."""
        return {"lanes": self.lanes}

    def load_state_dict(self, state: dict) -> None:
        """A checkpoint's `state_dict()`; one without it (older) gives its `world_size`, which was the lane
        count of every order this loader made before lanes were kept."""
        lanes = state.get("lanes") or state.get("world_size")
        if lanes:
            self._set_lanes(int(lanes))

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    @property
    def resident_bytes(self) -> int:
        """About the most host memory the pipeline holds: two windows of blocks of each lane this rank
        reads (lanes / gcd(lanes, N)), plus the batch buffers."""
        lanes_read = self.lanes // math.gcd(self.lanes, self.world_size) if self.train else 1
        windows = 2 * lanes_read * self.window_blocks * self.block_bytes
        return windows + (self.prefetch + 2) * self.batch_size * self._reader.sample_bytes

    def indices(self, epoch: int) -> torch.Tensor:
        """The dataset indices this rank visits in `epoch`, in order."""
        return self._epoch(epoch)[0]

    def _epoch(self, epoch: int):
        n, ws, r = self.dataset_size, self.world_size, self.rank
        if not self.train:
            sizes = [len(range(k, n, ws)) for k in range(ws)]
            first = sum(sizes[:r])
            return torch.arange(first, first + sizes[r]), None
        order = quasi_random_order(
            n, 0, self.window_blocks, torch.Generator().manual_seed(stream_seed(self.seed, epoch, _ORDER_TAG)),
            self._bounds,
        )
        lanes, lane_length = self.lanes, self._lane_length
        base = lanes * lane_length
        order = _repeat_head(order, base)  # the lanes' padding: a function of the lane count alone
        if self.variable:  # every position's own size (padding positions repeat their sample's)
            height, width = self._heights[order], self._widths[order]
        else:
            height, width = self._reader.sample_shape[0], self._reader.sample_shape[1]
        generator = torch.Generator().manual_seed(stream_seed(self.seed, epoch, _AUGMENT_TAG))
        params = draw_params(generator, base, self.plan, height, width)
        # Position j of the epoch's sequence is element j // lanes of lane j % lanes; then DistributedSampler's
        # padding to a multiple of the process count repeats the sequence's head, parameters included.
        j = torch.arange(self.num_samples * ws) % base
        position = (j % lanes) * lane_length + j // lanes
        mine = position[r::ws]
        return order[mine], params[mine]

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        indices, params = self._epoch(epoch)
        size = self.size_at(epoch) if self.size_at is not None else None
        on_cuda = self.device.type == "cuda"
        bs = self.batch_size
        fences: list = []  # CUDA events of copies still reading a host buffer
        for b, buf in self._host_batches(indices, start, fences):
            part = slice(b * bs, b * bs + len(buf))
            x = buf.permute(0, 3, 1, 2).to(self.device, non_blocking=True)
            labels = self._labels[indices[part]].to(self.device, non_blocking=True)
            if on_cuda:  # the buffer is reused only once this copy has finished
                fences.append(torch.cuda.Event())
                fences[-1].record()
            with _single_threaded(not on_cuda):
                mine = params[part].to(self.device) if params is not None else None
                if self.variable:
                    out = self._augment_variable(x, indices[part], mine, size)
                else:
                    out = self._augmenter(x, mine, size)
            yield out, labels

    def _augment_variable(
        self, x: torch.Tensor, idx: torch.Tensor, params: Optional[CropParams], size: Optional[int]
    ) -> torch.Tensor:
        """A padded batch of variable-size images -> float NCHW at the output size: resized crops from each
        sample's box (drawn in its own bounds); pad/none crops and validation from each centre square."""
        size = size or self.plan.size
        aug = self._augmenter
        # roi_align makes its input contiguous NCHW: doing it on the uint8 batch copies a quarter of the bytes
        # of doing it on the float one (the padded batch is ~3x the pixels of a square one; measured on the
        # CPU, 160 px keep-aspect images: float + roi_align 2.8 -> 1.9 ms per image).
        x = x.contiguous()
        if params is not None and self.plan.crop == "resized":
            return aug.finish(aug.resample(x, params, size), params, pad=False)
        centre = centre_square_boxes(self._heights[idx], self._widths[idx]).to(self.device)
        out = aug.resample(x, centre, size)
        return aug.finish(out, params, pad=self.plan.crop == "pad")

    def host_batches(self, epoch: int, start: int = 0) -> Iterator[torch.Tensor]:
        """The uint8 NHWC host batches of `epoch` in order (each valid until the next is asked for): the
        host's whole share of the work when the device is a GPU. For benchmarks and checks."""
        for _, buf in self._host_batches(self._epoch(epoch)[0], start, []):
            yield buf

    def _host_batches(self, indices: torch.Tensor, start: int, fences: list) -> Iterator[tuple[int, torch.Tensor]]:
        """(batch index, uint8 NHWC host buffer) from the reader thread; a buffer goes back to the thread
        when the next one is asked for, after the device copies recorded in `fences` are done."""
        start, n_batches = max(0, int(start)), len(self)
        if start >= n_batches:
            return
        pin = self.device.type == "cuda"
        # Variable sizes: a flat buffer of the largest batch, viewed per batch at the batch's own maxima.
        shape = (self.batch_size * self._reader.sample_bytes,) if self.variable else (self.batch_size, *self._reader.sample_shape)
        free: queue.Queue = queue.Queue()
        for _ in range(self.prefetch + 2):
            free.put(torch.empty(shape, dtype=torch.uint8, pin_memory=pin))
        ready: queue.Queue = queue.Queue()
        stop = threading.Event()
        worker = threading.Thread(
            target=self._produce, args=(indices.numpy(), start, n_batches, free, ready, stop),
            name="trainlab-stream", daemon=True,
        )  # fmt: skip
        worker.start()
        lent: Optional[torch.Tensor] = None
        try:
            for b in range(start, n_batches):
                item = ready.get()
                if isinstance(item, BaseException):
                    raise item
                buf, count, height, width = item
                if lent is not None:
                    while fences:
                        fences.pop(0).synchronize()
                    free.put(lent)
                lent = buf
                if self.variable:
                    yield b, buf[: count * height * width * 3].view(count, height, width, 3)
                else:
                    yield b, buf[:count]
        finally:
            stop.set()
            worker.join()
            self._reader.close()

    def _produce(self, indices: np.ndarray, start: int, n_batches: int, free, ready, stop) -> None:
        """Background thread: read the blocks the next batch needs, gather it into a free host buffer."""
        try:
            bs, bounds = self.batch_size, self._bounds
            blocks_of = self._block_of[indices]
            last_use: dict[int, int] = {}  # block -> last batch that needs it (to drop it after)
            for pos, blk in enumerate(blocks_of.tolist()):
                last_use[blk] = pos // bs
            cache: dict[int, np.ndarray] = {}
            for b in range(start, n_batches):
                idx = indices[b * bs : (b + 1) * bs]
                blk_ids = blocks_of[b * bs : (b + 1) * bs]
                for blk in np.unique(blk_ids).tolist():
                    if blk not in cache:
                        first = int(bounds[blk])
                        cache[blk] = self._reader.read(first, int(bounds[blk + 1]) - first)
                buf = None
                while buf is None:
                    if stop.is_set():
                        return
                    try:
                        buf = free.get(timeout=0.05)
                    except queue.Empty:
                        continue
                height = width = 0
                if self.variable:
                    height, width = int(self._heights[idx].max()), int(self._widths[idx].max())
                    out = buf.numpy()[: len(idx) * height * width * 3].reshape(len(idx), height, width, 3)
                else:
                    out = buf.numpy()
                for blk in np.unique(blk_ids).tolist():
                    rows = np.nonzero(blk_ids == blk)[0]
                    if self.variable:
                        self._gather_variable(out, rows, idx[rows], cache[blk], int(self._block_base[blk]))
                    else:
                        out[rows] = cache[blk][idx[rows] - bounds[blk]]
                    if last_use[blk] <= b:
                        del cache[blk]
                ready.put((buf, len(idx), height, width))
        except BaseException as err:  # noqa: BLE001 - handed to the training thread, which raises it
            ready.put(err if isinstance(err, DataError) else DataError(f"streaming loader: {type(err).__name__}: {err}"))

    def _gather_variable(self, out: np.ndarray, rows: np.ndarray, idx: np.ndarray, data: np.ndarray, base: int) -> None:
        """Copy images `idx` (their bytes in `data`, read from pixel byte `base`) into the top-left of
        their rows of the padded batch `out`, each with its last row and column repeated once into the
        padding: the one extra tap of roi_align's bilinear sampling at an edge then reads the edge."""
        reader, pad_h, pad_w = self._reader, out.shape[1], out.shape[2]
        for row, i in zip(rows.tolist(), idx.tolist()):
            h, w = int(self._heights[i]), int(self._widths[i])
            start = int(reader.offsets[i]) - base
            image = out[row]
            image[:h, :w] = data[start : start + h * w * 3].reshape(h, w, 3)
            if h < pad_h:
                image[h, :w] = image[h - 1, :w]
            if w < pad_w:
                image[: min(h + 1, pad_h), w] = image[: min(h + 1, pad_h), w - 1]
