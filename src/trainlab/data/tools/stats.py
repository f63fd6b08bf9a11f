"""`trainlab data stats`: per-channel mean and std of a dataset's training images, as config lines."""

from __future__ import annotations

import math
import os
from fractions import Fraction

import numpy as np

from trainlab.data.listing import FOLDER_LAYOUT_HINT
from trainlab.data.pack import (
    describe_error,
    iter_chunks,
    list_split,
    load_rgb,
    parallel_map,
    progress_bar,
    read_packed_meta,
    require_dataset_root,
    resize_center_crop,
)
from trainlab.data.tools.check import _index_problems, _open_packed_split
from trainlab.errors import DataError, UsageError


def _pixel_sums(task: tuple[str, int | None]) -> tuple[str, str | None, list[int], list[int], int]:
    """Per-channel sum and sum of squares of one image's uint8 pixels, as exact integers."""
    path, size = task
    try:
        img = load_rgb(path, target_size=size)
        if size:
            img = resize_center_crop(img, size)
    except Exception as exc:
        return path, describe_error(exc), [0, 0, 0], [0, 0, 0], 0
    pixels = np.asarray(img, dtype=np.uint8).reshape(-1, 3)
    sums, squares = _channel_sums(pixels)
    return path, None, sums, squares, pixels.shape[0]


def _channel_sums(pixels: np.ndarray) -> tuple[list[int], list[int]]:
    sums, squares = [], []
    for channel in range(3):
        values = pixels[:, channel].astype(np.uint32)  # 255**2 fits; the sums go to uint64
        sums.append(int(values.sum(dtype=np.uint64)))
        squares.append(int((values * values).sum(dtype=np.uint64)))
    return sums, squares


def _mean_std(sums: list[int], squares: list[int], count: int) -> tuple[list[float], list[float]]:
    # Exact rational arithmetic, so constant-colour images give exact figures (no cancellation error).
    means, stds = [], []
    for total, total_sq in zip(sums, squares):
        mean = Fraction(total, count * 255)
        variance = Fraction(total_sq * count - total * total, count * count * 255 * 255)
        means.append(float(mean))
        stds.append(math.sqrt(variance))
    return means, stds


def channel_stats(
    root: str | os.PathLike,
    *,
    img_size: int | None = None,
    workers: int = 1,
    skip_bad: bool = False,
    show_progress: bool | None = None,
) -> dict:
    """Per-channel mean and std (0-1 scale) over the train split: the values for data.mean / data.std."""
    if img_size is not None and img_size < 1:
        raise UsageError(f"--img-size must be a positive number of pixels, got {img_size}")
    root_path = require_dataset_root(root)
    meta = read_packed_meta(root_path)
    sums, squares, count, images, skipped = [0, 0, 0], [0, 0, 0], 0, 0, []
    if meta is not None:
        if img_size is not None and img_size != int(meta["img_size"]):
            raise UsageError(
                f"{root_path} is packed at {meta['img_size']} px; drop --img-size or pass {meta['img_size']}"
            )
        train_images, _ = _open_packed_split(root_path, meta, "train")
        variable = getattr(train_images, "variable_size", False)  # keep-aspect: every image, whole
        problems = _index_problems(root_path, "train", train_images, len(train_images), int(meta["img_size"])) if variable else []
        if problems:
            raise DataError(f"{problems[0]['path']}: {problems[0]['error']}; run trainlab data check, then repack")
        chunk = 64 if variable else 256
        with progress_bar("stats train", len(train_images), show_progress) as advance:
            for part in iter_chunks(len(train_images), chunk):
                if variable:
                    block = np.concatenate([np.asarray(train_images[i]).reshape(-1, 3) for i in range(part.start, part.stop)])
                else:
                    block = np.asarray(train_images[part]).reshape(-1, 3)
                part_sums, part_squares = _channel_sums(block)
                sums = [a + b for a, b in zip(sums, part_sums)]
                squares = [a + b for a, b in zip(squares, part_squares)]
                count += block.shape[0]
                advance(part.stop - part.start)
        images = len(train_images)
    else:
        listing = list_split(root_path, "train")
        tasks = [(str(path), img_size) for path in listing.files]
        with progress_bar("stats train", len(tasks), show_progress) as advance:
            for path, error, part_sums, part_squares, pixels in parallel_map(_pixel_sums, tasks, workers):
                advance(1)
                if error is not None:
                    if not skip_bad:
                        raise DataError(
                            f"cannot decode {path} ({error}); remove or replace it, or pass --skip-bad"
                        )
                    skipped.append({"path": path, "error": error})
                    continue
                sums = [a + b for a, b in zip(sums, part_sums)]
                squares = [a + b for a, b in zip(squares, part_squares)]
                count += pixels
                images += 1
    if count == 0:
        raise DataError(f"no readable train image under {root_path}; {FOLDER_LAYOUT_HINT}")
    mean, std = _mean_std(sums, squares, count)
    return {
        "root": str(root_path),
        "split": "train",
        "images": images,
        "pixels": count,
        "img_size": img_size if meta is None else int(meta["img_size"]),
        "mean": mean,
        "std": std,
        "skipped": skipped,
    }


def config_syntax(stats: dict) -> str:
    def fmt(values: list[float]) -> str:
        return "[" + ",".join(f"{v:.4f}" for v in values) + "]"

    return f"data.mean={fmt(stats['mean'])} data.std={fmt(stats['std'])}"


