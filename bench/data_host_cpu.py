"""Host CPU seconds per training image: JPEG folder through the DataLoader vs the streaming packed loader
vs reading JPEG bytes only (the host side of GPU decoding); and peak RSS streaming a packed set several
times larger than data.memory_budget_gb.

    PYTHONPATH=src python bench/data_host_cpu.py [--images 2000] [--repeats 3] [--workdir DIR]

Generates a JPEG folder (train: --images files of 256-500 px per side, smooth content plus noise, quality
90; val: 100) and packs it with `trainlab data pack --img-size 160`. Then, interleaved and repeated, one
epoch of each at 128 px training size with random resized crops and flips (the default ImageNet geometry):
  (a) folder, data.loader=torch, num_workers=0: decode (torchvision.io / libjpeg-turbo) + RandomResizedCrop
      + flip + normalise per sample, in this process;
  (b) packed, data.loader=stream: block reads + batch roi_align crops on the (CPU) device;
  (b') (b)'s host side alone: block reads and batch gathers (StreamLoader.host_batches), which is all the
      host does per image when the device is a GPU (the crops then run there);
  (k), (k') as (b), (b'), from a `--keep-aspect` pack of the same folder (short side 160, aspect kept, long
      side at most 320): byte-sized block reads, gather into a padded batch buffer, crops drawn in each
      image's own size;
  (c) the same JPEG files read into memory by 4 threads (what the GPU-decode path leaves to the host).
CPU time is this process's (all threads; torch at 1 intra-op thread) per image. On a GPU, (b)'s crop work
moves to the device, so (b) here is an upper bound on its host cost.
Last, `trainlab train` from the packed set with data.memory_budget_gb a fifth of its size (streams) and
with data.loader=tensor (copies), peak RSS of each (psutil, polled); --no-rss skips that part.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import torch
from PIL import Image

from trainlab.config import load_config
from trainlab.data import build_data
from trainlab.data.pack import pack_folder

CPU = torch.device("cpu")
CLASSES = 10


def write_jpeg_folder(root: Path, train: int, val: int = 100, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        for i in range(count):
            h, w = (int(v) for v in rng.integers(256, 501, 2))
            coarse = rng.integers(0, 256, (h // 32 + 2, w // 32 + 2, 3), dtype=np.uint8)
            img = Image.fromarray(coarse).resize((w, h), Image.BICUBIC)
            pixels = np.asarray(img, dtype=np.int16) + rng.integers(-12, 13, (h, w, 3), dtype=np.int16)
            folder = root / split / f"c{i % CLASSES}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)


def epoch_cpu(cfg_args: list[str]) -> tuple[float, int, str]:
    bundle = build_data(load_config(None, cfg_args), CPU)
    start, images = time.process_time(), 0
    for x, _ in bundle.train.batches(1):
        images += len(x)
    return (time.process_time() - start) / images, images, bundle.summary


def stream_host_cpu(cfg_args: list[str]) -> float:
    """CPU per image of the streaming loader's host side only (reads + gather into the batch buffers):
    all the host does per batch when the device is a GPU, besides launching the device work."""
    loader = build_data(load_config(None, cfg_args), CPU).train
    start, images = time.process_time(), 0
    for buf in loader.host_batches(1):
        images += len(buf)
    return (time.process_time() - start) / images


def read_bytes_cpu(files: list[Path]) -> float:
    def read(path: Path) -> int:
        with open(path, "rb") as f:
            return len(f.read())

    start = time.process_time()
    with ThreadPoolExecutor(4) as pool:
        total = sum(pool.map(read, files))
    assert total > 0
    return (time.process_time() - start) / len(files)


def peak_rss_of_training(args: list[str]) -> tuple[float, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "trainlab", "train", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    ps, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    out = proc.stdout.read() if proc.stdout else ""
    if proc.returncode != 0:
        raise SystemExit(f"trainlab train failed ({proc.returncode}):\n{out[-3000:]}")
    line = next((ln for ln in out.splitlines() if ln.startswith("data: ")), "")
    return peak / 2**20, line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-RSS training runs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="trainlab-bench-data-"))
    folder, packed, packed_ka = work / "jpeg", work / "packed160", work / "packed160-keep-aspect"
    if not (folder / "val").is_dir():
        t = time.time()
        write_jpeg_folder(folder, args.images)
        print(f"wrote {args.images} JPEGs in {time.time() - t:.0f}s", file=sys.stderr)
    if not (packed / "meta.json").is_file():
        pack_folder(folder, packed, 160, workers=2, show_progress=False)
    if not (packed_ka / "meta.json").is_file():
        pack_folder(folder, packed_ka, 160, workers=2, show_progress=False, keep_aspect=True)
    files = sorted((folder / "train").rglob("*.jpg"))
    common = ["data.img_size=128", "aug.crop=resized", "data.batch_size=64", "data.num_workers=0", "train.seed=0"]
    runs = {
        "a": ["data.name=folder", f"data.root={folder}", "data.loader=torch", *common],
        "b": ["data.name=packed", f"data.root={packed}", "data.loader=stream", *common],
        "k": ["data.name=packed", f"data.root={packed_ka}", "data.loader=stream", *common],
    }
    results: dict[str, list[float]] = {"a": [], "b": [], "h": [], "k": [], "hk": [], "c": []}
    summaries = {}
    for _ in range(args.repeats):
        for key, cfg_args in runs.items():
            per_image, _, summaries[key] = epoch_cpu(cfg_args)
            results[key].append(per_image)
        results["h"].append(stream_host_cpu(runs["b"]))
        results["hk"].append(stream_host_cpu(runs["k"]))
        results["c"].append(read_bytes_cpu(files))
    med = {k: statistics.median(v) for k, v in results.items()}

    data_mb = (packed / "train_images.npy").stat().st_size / 2**20
    ka_mb = (packed_ka / "train_pixels.npy").stat().st_size / 2**20
    if args.no_rss:
        print_table(args, med, data_mb, ka_mb, None)
        return
    budget_gb = round(data_mb / 5 / 1024, 4)
    train_args = ["data.name=packed", f"data.root={packed}", "model.name=resnet8", "data.img_size=64",
                  "data.batch_size=64", "train.epochs=1", "train.threads=1", "run.tensorboard=false",
                  "run.progress=none"]  # fmt: skip
    rss_stream, stream_line = peak_rss_of_training(
        [*train_args, f"data.memory_budget_gb={budget_gb}", f"run.dir={work / 'run-stream'}"]
    )
    rss_copy, copy_line = peak_rss_of_training([*train_args, "data.loader=tensor", f"run.dir={work / 'run-copy'}"])
    print_table(args, med, data_mb, ka_mb, (budget_gb, rss_stream, stream_line, rss_copy, copy_line))


def print_table(args: argparse.Namespace, med: dict, data_mb: float, ka_mb: float, rss: tuple | None) -> None:

    cpu = platform.processor() or platform.machine()
    print(f"\n### Data host CPU per image ({datetime.date.today()}, {os.cpu_count()} cores {cpu}, "
          f"torch {torch.__version__}; other agents were loading the machine)\n")  # fmt: skip
    flags = " --no-rss" if args.no_rss else ""
    print(f"`PYTHONPATH=src python bench/data_host_cpu.py --images {args.images} --repeats {args.repeats}{flags}`; "
          f"median of {args.repeats}, one epoch each, 128 px random resized crops + flips\n")  # fmt: skip
    print("| path | host CPU ms / image | vs (a) |")
    print("| --- | ---: | ---: |")
    names = {
        "a": "(a) JPEG folder, DataLoader: decode + RandomResizedCrop (per sample)",
        "b": "(b) packed 160 px, streaming loader, device=CPU (block reads + batch roi_align crops on the host)",
        "h": "(b') the same, host side only (block reads + gather; what stays on the host with a GPU)",
        "k": "(k) keep-aspect packed (short side 160, long <= 320), streaming loader, device=CPU",
        "hk": "(k') the same, host side only (byte-sized block reads + gather into the padded batch buffer)",
        "c": "(c) JPEG bytes read only (GPU-decode host side)",
    }
    for key in ("a", "b", "h", "k", "hk", "c"):
        print(f"| {names[key]} | {med[key] * 1e3:.3f} | {med['a'] / med[key]:.1f}x less |")
    print(f"\nTrain pixels on disk: square pack {data_mb:.0f} MB, keep-aspect pack {ka_mb:.0f} MB.")
    if rss is None:
        return
    budget_gb, rss_stream, stream_line, rss_copy, copy_line = rss
    print(f"\nPeak RSS, `trainlab train` resnet8 64 px 1 epoch from the packed set ({data_mb:.0f} MB of train "
          f"images): streaming with data.memory_budget_gb={budget_gb} {rss_stream:.0f} MB; "
          f"copied (data.loader=tensor) {rss_copy:.0f} MB.")  # fmt: skip
    print(f"\n{stream_line}\n{copy_line}")


if __name__ == "__main__":
    main()
