"""Tensor loader vs torchvision's DataLoader with per-sample transforms, on CIFAR-format data, on the CPU.

    PYTHONPATH=src python bench/loader_cpu.py [--images 50000] [--batches 60] [--repeats 3]

Writes a CIFAR-10 python-pickle fixture of random images (the real file format; content does not change
the speed of either path), then times, interleaved in one process and repeated:
  - torchvision.datasets.CIFAR10 + DataLoader(batch 256, shuffle) with RandomCrop(32, 4),
    RandomHorizontalFlip, ToTensor, Normalize, at num_workers 0 and 2;
  - trainlab's TensorLoader on the CPU (same batch size, same augmentation), the data read by
    trainlab's cifar reader.
Each timing is `--batches` batches after 5 warm-up batches (worker start-up excluded: steady state).
Prints a markdown block for BENCHMARKS.md with medians and ratios.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pickle
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torchvision
from torchvision import transforms as T

from trainlab.data.cifar import load_cifar
from trainlab.data.tensor_loader import TensorLoader
from trainlab.data.transforms import CIFAR10_MEAN, CIFAR10_STD

BATCH = 256
WARMUP = 5


def write_cifar_fixture(root: Path, images: int, seed: int = 0, test_images: int = 1000) -> None:
    """cifar-10-batches-py with 5 train batches, a test batch and batches.meta, as the real archive has."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    per_batch = images // 5
    for i in range(1, 6):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        entry = {"data": data, "labels": rng.integers(0, 10, per_batch).tolist(), "batch_label": f"batch {i}"}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(entry))
    test = {"data": rng.integers(0, 256, (test_images, 3072), dtype=np.uint8), "labels": [0] * test_images}
    (folder / "test_batch").write_bytes(pickle.dumps(test))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))


class FixtureCIFAR10(torchvision.datasets.CIFAR10):
    """torchvision's CIFAR10, unchanged except the md5 checks, which a generated fixture cannot pass."""

    def _check_integrity(self) -> bool:
        return True

    def _load_meta(self) -> None:  # torchvision's own, minus check_integrity(path, md5)
        path = Path(self.root) / self.base_folder / self.meta["filename"]
        self.classes = pickle.loads(path.read_bytes())[self.meta["key"]]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}


def torchvision_batches(root: Path, workers: int) -> Iterator[torch.Tensor]:
    transform = T.Compose(
        [
            T.RandomCrop(32, padding=4),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(CIFAR10_MEAN, CIFAR10_STD),
        ]
    )
    dataset = FixtureCIFAR10(str(root), train=True, transform=transform)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=BATCH, shuffle=True, num_workers=workers, persistent_workers=workers > 0
    )
    while True:
        for images, _labels in loader:
            yield images


def tensor_batches(loader: TensorLoader) -> Iterator[torch.Tensor]:
    epoch = 0
    while True:
        for images, _labels in loader.batches(epoch):
            yield images
        epoch += 1


def images_per_s(stream: Iterator[torch.Tensor], batches: int) -> float:
    for _ in range(WARMUP):
        next(stream)
    seen = 0
    start = time.perf_counter()
    for _ in range(batches):
        seen += next(stream).shape[0]
    return seen / (time.perf_counter() - start)


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50_000, help="training images in the fixture")
    parser.add_argument("--batches", type=int, default=60, help="timed batches per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (median reported)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        write_cifar_fixture(root, args.images)
        arrays = load_cifar(root, "cifar10")
        tensor_loader = TensorLoader(
            torch.from_numpy(np.ascontiguousarray(arrays.train_images)),
            torch.from_numpy(np.asarray(arrays.train_labels, dtype=np.int64)),
            batch_size=BATCH, device=torch.device("cpu"), train=True, seed=0,
            mean=CIFAR10_MEAN, std=CIFAR10_STD, pad=4, flip=True,
        )  # fmt: skip
        print(
            f"fixture: {args.images} images written and loaded in {time.perf_counter() - t0:.1f} s",
            flush=True,
        )

        streams = {
            "torchvision DataLoader, num_workers=0": torchvision_batches(root, 0),
            "torchvision DataLoader, num_workers=2": torchvision_batches(root, 2),
            "trainlab TensorLoader (CPU)": tensor_batches(tensor_loader),
        }
        results: dict[str, list[float]] = {name: [] for name in streams}
        for round_index in range(args.repeats):  # interleaved: machine load drifts hit all paths alike
            for name, stream in streams.items():
                results[name].append(images_per_s(stream, args.batches))
                print(f"round {round_index + 1}: {name}: {results[name][-1]:,.0f} images/s", flush=True)
        for stream in streams.values():
            stream.close()

    median = {name: statistics.median(values) for name, values in results.items()}
    tensor = median["trainlab TensorLoader (CPU)"]
    command = " ".join(["PYTHONPATH=src python bench/loader_cpu.py", *sys.argv[1:]])
    print()
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"- machine: {cpu_model()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
          f"{platform.platform()}; load average at the end {load}")  # fmt: skip
    print(f"- command: `{command}`")
    print(
        f"- date: {datetime.date.today().isoformat()}; torch {torch.__version__}, torchvision {torchvision.__version__}"
    )
    print(f"- {args.images} random 32x32 images (CIFAR-10 pickle format), batch {BATCH}, "
          f"{args.batches} timed batches after {WARMUP} warm-up, median of {args.repeats} interleaved rounds")  # fmt: skip
    print()
    print("| loader | images/s (median) | all rounds | tensor loader speed-up (median) | per round |")
    print("| --- | ---: | --- | ---: | --- |")
    tensor_rounds = results["trainlab TensorLoader (CPU)"]
    for name, value in median.items():
        rounds = ", ".join(f"{v:,.0f}" for v in results[name])
        per_round = ", ".join(f"{t / v:.1f}x" for t, v in zip(tensor_rounds, results[name]))
        print(f"| {name} | {value:,.0f} | {rounds} | {tensor / value:.1f}x | {per_round} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
