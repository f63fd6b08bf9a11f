"""Host time per image of the GPU JPEG loader's crop step (issue 26 item 6), on the CPU.

The loader's `_augment` (draw each image's crop, resample it to the training size, flip, normalise) is
timed on already-decoded images, so the decode is not in the figure; run with device="cpu" the resampling
kernels run on the host too, so the per-image figure is an upper bound of what the training thread spends
in Python and small copies on a GPU. 256 random images of 48-96 px (--small: 16-20 px, where the kernels
weigh next to nothing and the figure is the Python and small-op overhead), output 16 px, one thread; the
median of --rounds batches.

    PYTHONPATH=src python bench/gpu_decode_host.py [--rounds 7] [--batch 256] [--small]
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

import torch

from trainlab.data.augment import AugPlan
from trainlab.data.gpu_decode import GpuJpegLoader


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--small", action="store_true", help="16-20 px images: the kernels weigh ~nothing")
    args = parser.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    low, high = (16, 21) if args.small else (48, 97)
    sizes = torch.randint(low, high, (args.batch, 2), generator=g).tolist()
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g) for h, w in sizes]
    source = SimpleNamespace(files=[f"{i}.jpg" for i in range(args.batch)], labels=[0] * args.batch)
    for crop, train in (("resized", True), ("pad", True), ("resized", False)):
        loader = GpuJpegLoader(_Sized(source, args.batch), args.batch, torch.device("cpu"), train, 0,
                               (0.5,) * 3, (0.25,) * 3, AugPlan(crop, 16, 0.5))  # fmt: skip
        idx = list(range(args.batch))
        times = []
        for epoch in range(args.rounds + 1):
            started = time.perf_counter()
            loader._augment(images, idx, epoch + 1)
            times.append(time.perf_counter() - started)
        per_image_us = statistics.median(times[1:]) / args.batch * 1e6
        print(f"{'train' if train else 'val'} {crop:8s}: {per_image_us:6.1f} us per image ({args.batch} per batch)")


class _Sized:
    def __init__(self, source, n):
        self.files, self.labels, self._n = source.files, source.labels, n

    def __len__(self) -> int:
        return self._n


if __name__ == "__main__":
    main()
