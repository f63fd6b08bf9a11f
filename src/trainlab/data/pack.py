"""Pack an ImageNet-style folder once into memory-mapped uint8 arrays (format ``trainlab-packed-v1``).

Layout of DST (the packed reader depends on it exactly)::

    meta.json          {"format": "trainlab-packed-v1", "classes": [...], "img_size": S,
                        "splits": {"train": N, "val": M}, "source": "<absolute SRC>"}
    train_images.npy   uint8 (N, S, S, 3), RGB, written with numpy.lib.format.open_memmap
    train_labels.npy   int64 (N,), index into "classes"
    val_images.npy     uint8 (M, S, S, 3)
    val_labels.npy     int64 (M,)

With ``--keep-aspect`` (meta.json adds ``"layout": "short-side"`` and ``"max_aspect": R``) the images keep
their aspect ratio and vary in size, so each split is stored flat instead::

    train_pixels.npy   uint8 (total bytes,): every image's HWC RGB bytes back to back, in label order
    train_index.npy    int64 (N, 3): (byte offset into train_pixels, height, width) per image
    train_labels.npy   int64 (N,)

Each image's short side is S (the arithmetic of torchvision's ``Resize(S)`` on the file's own size), the
long side keeps the aspect and is centre-cropped only beyond int(R * S) (default R = 2: one panorama would
otherwise widen every batch buffer it lands in). The streaming loader draws random resized crops in each
image's own bounds; validation takes the centre square, which is what the square layout stores.

Every image (square layout) is resized so its shorter side is S (bilinear, antialiased, the arithmetic of torchvision's
``Resize(S)``) and then centre-cropped to S x S (``CenterCrop(S)``). JPEGs at least 4 S on both sides are decoded at
a reduced DCT scale (PIL's ``draft``) that keeps them at least 2 S, so the final resize still downsamples 2x
or more: about 1.5x faster at small S, and within rounding of a full-resolution resize.

This module also holds what the other dataset tools share: listing a folder split, decoding, a process pool
map, and a progress bar.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.format import open_memmap
from PIL import Image

from trainlab.data.listing import FOLDER_LAYOUT_HINT, IMAGE_EXTENSIONS, image_files, list_classes
from trainlab.errors import DataError, UsageError
from trainlab.paths import check_output_dir, require_space, writing

PACKED_FORMAT = "trainlab-packed-v1"
SHORT_SIDE_LAYOUT = "short-side"  # meta.json "layout" of --keep-aspect packs (absent: square)
DEFAULT_MAX_ASPECT = 2.0


# --------------------------------------------------------------------------------------------- listing
@dataclass
class SplitListing:
    """The image files of one split of a folder dataset, in a deterministic order."""

    split: str
    root: Path  # the split directory, e.g. SRC/train
    classes: list[str]  # the class names the labels index into
    files: list[Path]
    labels: list[int]

    def files_of(self, class_name: str) -> list[Path]:
        index = self.classes.index(class_name)
        return [f for f, label in zip(self.files, self.labels) if label == index]


def require_dataset_root(root: str | os.PathLike) -> Path:
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(f"dataset folder {path} does not exist; pass the folder that holds train/ and val/")
    if not path.is_dir():
        raise DataError(f"{path} is a file, not a dataset folder; {FOLDER_LAYOUT_HINT}")
    return path


def list_split(root: Path, split: str, classes: Sequence[str] | None = None) -> SplitListing:
    """List ROOT/<split>/<class>/*; with ``classes`` given, the split must use only those classes."""
    split_dir = root / split
    if not split_dir.is_dir():
        raise DataError(f"{split_dir} is missing; {FOLDER_LAYOUT_HINT}")
    found_classes = list_classes(split_dir)
    if classes is None:
        classes = found_classes
    else:
        unknown = [c for c in found_classes if c not in classes]
        if unknown:
            raise DataError(
                f"{split_dir} has classes not in train/: {', '.join(unknown[:5])}"
                f"{' ...' if len(unknown) > 5 else ''}; use the same class folders in every split"
            )
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        class_dir = split_dir / name
        class_files = image_files(class_dir) if class_dir.is_dir() else []
        files += class_files
        labels += [label] * len(class_files)
    return SplitListing(split, split_dir, list(classes), files, labels)


# -------------------------------------------------------------------------------------------- decoding
def describe_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip().rstrip(":")


def load_rgb(path: str | os.PathLike, target_size: int | None = None) -> Image.Image:
    """Fully decode an image to RGB. With ``target_size`` (the side it will be resized to), a JPEG may be
    decoded at 1/2, 1/4 or 1/8 scale, never below 2 x target_size on either side: decoding straight down to
    target_size would alias sharp edges (up to 7/255 mean error measured on 16 px crops), 2x keeps rounding."""
    with Image.open(path) as img:
        if target_size:
            img.draft("RGB", (2 * target_size, 2 * target_size))
        # convert() loads every pixel, so a truncated file fails here, not later in training.
        return img.convert("RGB")


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Shorter side to ``size`` then centre crop ``size`` x ``size``, with torchvision's rounding."""
    width, height = img.size
    if width <= height:
        new_width, new_height = size, int(size * height / width)
    else:
        new_width, new_height = int(size * width / height), size
    if (new_width, new_height) != (width, height):
        img = img.resize((new_width, new_height), Image.Resampling.BILINEAR)
    top = int(round((new_height - size) / 2.0))
    left = int(round((new_width - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def short_side_dims(width: int, height: int, size: int, max_aspect: float) -> tuple[int, int, int, int]:
    """(resized width, height, stored width, height) of a keep-aspect pack: short side to ``size`` with
    torchvision's Resize rounding, then the long side centre-cropped to int(max_aspect * size) if longer."""
    if width <= height:
        new_width, new_height = size, int(size * height / width)
    else:
        new_width, new_height = int(size * width / height), size
    cap = max(size, int(math.floor(max_aspect * size)))
    return new_width, new_height, min(new_width, cap), min(new_height, cap)


def resize_short_side(img: Image.Image, dims: tuple[int, int, int, int]) -> Image.Image:
    """Resize to dims[:2] (from the file's own size, see short_side_dims: a JPEG decoded at a reduced DCT
    scale still gets the full-resolution arithmetic) and centre-crop to dims[2:]."""
    new_width, new_height, width, height = dims
    if img.size != (new_width, new_height):
        img = img.resize((new_width, new_height), Image.Resampling.BILINEAR)
    if (width, height) == (new_width, new_height):
        return img
    top = int(round((new_height - height) / 2.0))
    left = int(round((new_width - width) / 2.0))
    return img.crop((left, top, left + width, top + height))


# ----------------------------------------------------------------------------------- pool and progress
def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def parallel_map(
    func: Callable[[Any], Any],
    items: Sequence[Any],
    workers: int,
    initializer: Callable[..., None] | None = None,
    initargs: tuple = (),
) -> Iterator[Any]:
    """``map`` in order, in ``workers`` processes when more than one (fork where the OS has it: the workers
    only decode images, and fork saves re-importing the package in each)."""
    if workers <= 1 or len(items) <= 1:
        if initializer is not None:
            initializer(*initargs)
        for item in items:
            yield func(item)
        return
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    chunksize = max(1, min(64, len(items) // (workers * 8)))
    # Leaving the with block (also on an exception in the consumer) terminates the workers.
    with context.Pool(workers, initializer, initargs) as pool:
        yield from pool.imap(func, items, chunksize)


def progress_enabled(show: bool | None) -> bool:
    return sys.stderr.isatty() if show is None else show


@contextmanager
def progress_bar(description: str, total: int, show: bool | None = None) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``. A rich bar on stderr when it is a terminal (stdout stays clean for --json)."""
    if not progress_enabled(show) or total == 0:
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)


# --------------------------------------------------------------------------------------------- packing
_PACK_TARGET: tuple[np.ndarray, int] | None = None  # per process: (images memmap, img_size)


def _open_pack_target(images_path: str, img_size: int) -> None:
    global _PACK_TARGET
    _PACK_TARGET = (np.load(images_path, mmap_mode="r+"), img_size)


def _pack_one(task: tuple[int, str]) -> tuple[int, str | None]:
    """Decode one file into its row of the memmap; the worker writes directly so no pixels are pickled."""
    index, path = task
    assert _PACK_TARGET is not None
    images, size = _PACK_TARGET
    try:
        img = resize_center_crop(load_rgb(path, target_size=size), size)
    except Exception as exc:  # any decoder failure is a bad file, reported with its name
        return index, describe_error(exc)
    images[index] = np.asarray(img, dtype=np.uint8)
    return index, None


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pack_split(
    listing: SplitListing,
    out_dir: Path,
    img_size: int,
    workers: int,
    skip_bad: bool,
    show_progress: bool | None,
) -> tuple[int, list[dict]]:
    images_path = out_dir / f"{listing.split}_images.npy"
    count = len(listing.files)
    open_memmap(images_path, mode="w+", dtype=np.uint8, shape=(count, img_size, img_size, 3)).flush()
    bad: list[dict] = []
    tasks = [(i, str(path)) for i, path in enumerate(listing.files)]
    try:
        with progress_bar(f"pack {listing.split}", count, show_progress) as advance:
            for index, error in parallel_map(
                _pack_one, tasks, workers, _open_pack_target, (str(images_path), img_size)
            ):
                advance(1)
                if error is None:
                    continue
                if not skip_bad:
                    raise DataError(
                        f"cannot decode {listing.files[index]} ({error}); remove or replace it, "
                        "or pass --skip-bad to leave unreadable images out"
                    )
                bad.append({"path": str(listing.files[index]), "error": error})
    finally:
        global _PACK_TARGET
        _PACK_TARGET = None  # drop the in-process memmap before the file is compacted or renamed

    labels = np.asarray(listing.labels, dtype=np.int64)
    if bad:
        bad_paths = {entry["path"] for entry in bad}
        keep = np.asarray([i for i, p in enumerate(listing.files) if str(p) not in bad_paths], dtype=np.int64)
        if listing.split == "train" and keep.size == 0:
            raise DataError(f"no readable image in {listing.root}; every file failed to decode")
        _compact(images_path, keep)
        labels = labels[keep]
    np.save(out_dir / f"{listing.split}_labels.npy", labels)
    _fsync_path(images_path)
    _fsync_path(out_dir / f"{listing.split}_labels.npy")
    return int(labels.shape[0]), bad


def _probe_one(task: tuple[int, str, int, float]) -> tuple[int, tuple[int, int, int, int] | None, str | None]:
    """The stored dims of one file from its header alone (no decode): the size pass of a keep-aspect pack."""
    index, path, size, max_aspect = task
    try:
        with Image.open(path) as img:
            width, height = img.size
    except Exception as exc:  # an unreadable header is a bad file, reported like a decode failure
        return index, None, describe_error(exc)
    if width < 1 or height < 1:
        return index, None, f"image has no pixels ({width}x{height})"
    return index, short_side_dims(width, height, size, max_aspect), None


def _pack_one_flat(task: tuple[int, str, int, tuple[int, int, int, int]]) -> tuple[int, str | None]:
    """Decode one file into its byte range of the flat pixels memmap (keep-aspect layout)."""
    index, path, offset, dims = task
    assert _PACK_TARGET is not None
    pixels, size = _PACK_TARGET
    try:
        img = resize_short_side(load_rgb(path, target_size=size), dims)
        data = np.asarray(img, dtype=np.uint8).reshape(-1)
        if data.size != dims[2] * dims[3] * 3:  # the header lied about the size (never seen; cheap to check)
            raise ValueError(f"decoded {img.size}, header promised {dims[2]}x{dims[3]}")
    except Exception as exc:
        return index, describe_error(exc)
    pixels[offset : offset + data.size] = data
    return index, None


def _fail_or_skip(listing: SplitListing, index: int, error: str, skip_bad: bool, bad: list[dict]) -> None:
    if not skip_bad:
        raise DataError(
            f"cannot decode {listing.files[index]} ({error}); remove or replace it, "
            "or pass --skip-bad to leave unreadable images out"
        )
    bad.append({"path": str(listing.files[index]), "error": error})


def probe_split(
    listing: SplitListing, img_size: int, max_aspect: float, workers: int, skip_bad: bool, show_progress: bool | None
) -> tuple[list[tuple[int, int, int, int] | None], list[dict]]:
    """Stored dims per file of a keep-aspect pack (None for a file whose header cannot be read, with
    --skip-bad), read from the headers before any pixel is written: the flat file's size is then exact."""
    dims: list[tuple[int, int, int, int] | None] = [None] * len(listing.files)
    bad: list[dict] = []
    tasks = [(i, str(path), img_size, max_aspect) for i, path in enumerate(listing.files)]
    with progress_bar(f"sizes {listing.split}", len(tasks), show_progress) as advance:
        for index, found, error in parallel_map(_probe_one, tasks, workers):
            advance(1)
            if error is not None:
                _fail_or_skip(listing, index, error, skip_bad, bad)
            dims[index] = found
    return dims, bad


def _pack_split_flat(
    listing: SplitListing,
    out_dir: Path,
    img_size: int,
    dims: list[tuple[int, int, int, int] | None],
    bad: list[dict],
    workers: int,
    skip_bad: bool,
    show_progress: bool | None,
) -> tuple[int, list[dict]]:
    """The keep-aspect layout of one split: <split>_pixels.npy, <split>_index.npy, <split>_labels.npy."""
    pixels_path = out_dir / f"{listing.split}_pixels.npy"
    present = [i for i, d in enumerate(dims) if d is not None]
    nbytes = np.asarray([dims[i][2] * dims[i][3] * 3 for i in present], dtype=np.int64)  # type: ignore[index]
    offsets = np.concatenate([[0], np.cumsum(nbytes)[:-1]]).astype(np.int64) if present else nbytes
    total = int(nbytes.sum())
    if total:
        open_memmap(pixels_path, mode="w+", dtype=np.uint8, shape=(total,)).flush()
    else:
        np.save(pixels_path, np.zeros(0, dtype=np.uint8))
    tasks = [(i, str(listing.files[i]), int(offsets[k]), dims[i]) for k, i in enumerate(present)]
    failed: set[int] = set()
    try:
        with progress_bar(f"pack {listing.split}", len(tasks), show_progress) as advance:
            for index, error in parallel_map(
                _pack_one_flat, tasks, workers, _open_pack_target, (str(pixels_path), img_size)
            ):
                advance(1)
                if error is not None:
                    _fail_or_skip(listing, index, error, skip_bad, bad)
                    failed.add(index)
    finally:
        global _PACK_TARGET
        _PACK_TARGET = None

    keep = [k for k, i in enumerate(present) if i not in failed]
    if listing.split == "train" and not keep:
        raise DataError(f"no readable image in {listing.root}; every file failed to decode")
    index = np.stack(
        [offsets, [dims[i][3] for i in present], [dims[i][2] for i in present]], axis=1  # type: ignore[index]
    ).astype(np.int64).reshape(-1, 3)
    if failed:
        index = _compact_flat(pixels_path, index, np.asarray(keep, dtype=np.int64))
    labels = np.asarray([listing.labels[present[k]] for k in keep], dtype=np.int64)
    np.save(out_dir / f"{listing.split}_index.npy", index)
    np.save(out_dir / f"{listing.split}_labels.npy", labels)
    for name in ("pixels", "index", "labels"):
        _fsync_path(out_dir / f"{listing.split}_{name}.npy")
    return int(labels.shape[0]), bad


def _compact_flat(pixels_path: Path, index: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Rewrite the flat pixels with only the images in ``keep``; returns their new index."""
    source = np.load(pixels_path, mmap_mode="r")
    kept = index[keep]
    nbytes = kept[:, 1] * kept[:, 2] * 3
    new_offsets = np.concatenate([[0], np.cumsum(nbytes)[:-1]]).astype(np.int64)
    compact_path = pixels_path.with_name(pixels_path.stem + ".compact.npy")
    total = int(nbytes.sum())
    if total:
        target = open_memmap(compact_path, mode="w+", dtype=np.uint8, shape=(total,))
        for (offset, _, _), new, n in zip(kept.tolist(), new_offsets.tolist(), nbytes.tolist()):
            target[new : new + n] = source[offset : offset + n]
        target.flush()
        del target
    else:
        np.save(compact_path, np.zeros(0, dtype=np.uint8))
    del source
    os.replace(compact_path, pixels_path)
    kept = kept.copy()
    kept[:, 0] = new_offsets
    return kept


def _compact(images_path: Path, keep: np.ndarray, chunk: int = 1024) -> None:
    """Rewrite the images array with only the rows in ``keep`` (the skipped images leave no gap)."""
    source = np.load(images_path, mmap_mode="r")
    compact_path = images_path.with_name(images_path.stem + ".compact.npy")
    target = open_memmap(compact_path, mode="w+", dtype=np.uint8, shape=(keep.size, *source.shape[1:]))
    for start in range(0, keep.size, chunk):
        target[start : start + chunk] = source[keep[start : start + chunk]]
    target.flush()
    del source, target
    os.replace(compact_path, images_path)


def _replace_dir(tmp: Path, dst: Path) -> None:
    """Move the finished tmp dir to dst; an existing dst (--force) is removed only once tmp is complete."""
    if not dst.exists() and not dst.is_symlink():
        os.rename(tmp, dst)
        return
    old = dst.with_name(f"{dst.name}.old-{os.getpid()}")
    os.rename(dst, old)
    os.rename(tmp, dst)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    else:
        old.unlink()


def check_destination(src: Path, dst: Path, force: bool) -> None:
    """Refuse to overwrite DST without --force, never let DST be (or contain) SRC, and make sure DST can be
    created (a file in its path, /proc, a read-only mount) before any work is done."""
    if not (dst.exists() or dst.is_symlink()):
        check_output_dir(dst, "DST", UsageError)
    if dst.exists() or dst.is_symlink():
        if not force:
            raise UsageError(f"{dst} already exists; pass --force to replace it, or choose another DST")
        if src.resolve() == dst.resolve() or dst.resolve() in src.resolve().parents:
            raise UsageError(f"DST {dst} is or contains SRC {src}; choose a DST outside the source dataset")
        if not _replaceable(dst):  # --force replaces a pack; it never deletes a folder of something else
            raise UsageError(
                f"DST {dst} exists and is not a packed dataset (no {PACKED_FORMAT} meta.json); --force replaces "
                "only an earlier pack or an empty folder: choose another DST"
            )


def _replaceable(dst: Path) -> bool:
    """An empty folder, or one `trainlab data pack` wrote (its meta.json says so)."""
    if dst.is_symlink() or not dst.is_dir():
        return False
    if not any(dst.iterdir()):
        return True
    try:
        meta = json.loads((dst / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == PACKED_FORMAT


@contextmanager
def building_dir(dst: Path) -> Iterator[Path]:
    """A fresh `DST.tmp-<pid>` to fill: renamed over DST when the block ends, removed if it raises, so a
    failure (or Ctrl-C) never leaves a half-written DST behind."""
    tmp = temporary_sibling(dst)
    try:
        yield tmp
        _replace_dir(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def temporary_sibling(dst: Path) -> Path:
    tmp = dst.with_name(f"{dst.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def pack_folder(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    img_size: int,
    workers: int = 1,
    skip_bad: bool = False,
    force: bool = False,
    show_progress: bool | None = None,
    keep_aspect: bool = False,
    max_aspect: float | None = None,
) -> dict:
    """Pack SRC/{train,val}/<class>/* into DST (see the module docstring). Atomic: built in DST.tmp-<pid>,
    renamed at the end, removed on any failure. Returns counts and the skipped files.

    ``keep_aspect``: the short-side layout (short side ``img_size``, long side at most ``max_aspect`` times
    that, default 2); its sizes come from a header pass first, so the disk-space check is exact."""
    if img_size < 1:
        raise UsageError(f"--img-size must be a positive number of pixels, got {img_size}")
    if max_aspect is not None and not keep_aspect:
        raise UsageError("--max-aspect applies to --keep-aspect packs only; add --keep-aspect or drop it")
    max_aspect = DEFAULT_MAX_ASPECT if max_aspect is None else float(max_aspect)
    if not max_aspect >= 1.0:  # also refuses NaN
        raise UsageError(f"--max-aspect must be at least 1 (long side / short side), got {max_aspect}")
    src_path = require_dataset_root(src)
    dst_path = Path(dst).expanduser()
    train = list_split(src_path, "train")
    if not train.files:
        raise DataError(f"{train.root} has no images ({'/'.join(IMAGE_EXTENSIONS)}); {FOLDER_LAYOUT_HINT}")
    val = list_split(src_path, "val", classes=train.classes)
    check_destination(src_path, dst_path, force)
    # The arrays are written through memory maps, where a full disk is a SIGBUS: check the space first.
    probed: dict[str, tuple[list, list[dict]]] = {}
    if keep_aspect:
        for listing in (train, val):
            probed[listing.split] = probe_split(listing, img_size, max_aspect, workers, skip_bad, show_progress)
        pixel_bytes = sum(d[2] * d[3] * 3 + 32 for dims, _ in probed.values() for d in dims if d is not None)
        needed = pixel_bytes + 64 * 1024
    else:
        needed = (len(train.files) + len(val.files)) * (img_size * img_size * 3 + 8) + 64 * 1024
    require_space(dst_path, needed, "packed dataset")

    with writing(dst_path, needed, "packed dataset"), building_dir(dst_path) as tmp:
        counts: dict[str, int] = {}
        skipped: dict[str, list[dict]] = {}
        for listing in (train, val):
            if keep_aspect:
                dims, bad = probed[listing.split]
                counts[listing.split], skipped[listing.split] = _pack_split_flat(
                    listing, tmp, img_size, dims, bad, workers, skip_bad, show_progress
                )
            else:
                counts[listing.split], skipped[listing.split] = _pack_split(
                    listing, tmp, img_size, workers, skip_bad, show_progress
                )
        meta: dict[str, Any] = {
            "format": PACKED_FORMAT,
            "classes": train.classes,
            "img_size": img_size,
            "splits": counts,
            "source": str(src_path.resolve()),
        }
        if keep_aspect:
            meta["layout"] = SHORT_SIDE_LAYOUT
            meta["max_aspect"] = max_aspect
        meta_path = tmp / "meta.json"
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
        _fsync_path(meta_path)
    return {
        "dst": str(dst_path),
        "classes": len(train.classes),
        "img_size": img_size,
        "layout": SHORT_SIDE_LAYOUT if keep_aspect else "square",
        "max_aspect": max_aspect if keep_aspect else None,
        "splits": counts,
        "skipped": {split: len(entries) for split, entries in skipped.items()},
        "skipped_files": [entry for entries in skipped.values() for entry in entries],
        "bytes": sum(f.stat().st_size for f in dst_path.iterdir()),
    }


def read_packed_meta(root: Path) -> dict | None:
    """The meta of a packed dir, or None when ROOT is not one."""
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(
            f"cannot read {meta_path} ({describe_error(exc)}); re-run trainlab data pack"
        ) from exc
    if not isinstance(meta, dict) or meta.get("format") != PACKED_FORMAT:
        raise DataError(f"{meta_path} is not a {PACKED_FORMAT} meta file; re-run trainlab data pack")
    return meta


def iter_chunks(count: int, chunk: int) -> Iterable[slice]:
    for start in range(0, count, chunk):
        yield slice(start, min(count, start + chunk))
