"""`trainlab data info | check`: what a dataset holds (counts, sizes, balance, duplicates) and what is wrong with it."""

from __future__ import annotations

import hashlib
import io
import os
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from trainlab.data.listing import FOLDER_LAYOUT_HINT, SPLITS
from trainlab.data.pack import (
    SHORT_SIDE_LAYOUT,
    SplitListing,
    describe_error,
    iter_chunks,
    list_split,
    parallel_map,
    progress_bar,
    read_packed_meta,
    require_dataset_root,
)
from trainlab.errors import DataError


def _inspect_file(task: tuple[str, bool, bool]) -> dict:
    """Header (size, mode), optional full decode, optional sha1 of the bytes, for one file."""
    path, decode, want_hash = task
    record: dict[str, Any] = {
        "path": path,
        "error": None,
        "width": None,
        "height": None,
        "mode": None,
        "sha1": None,
    }
    try:
        with open(path, "rb") as f:
            data = f.read()
        if want_hash:
            record["sha1"] = hashlib.sha1(data).hexdigest()
        with Image.open(io.BytesIO(data)) as img:
            record["width"], record["height"] = img.size
            record["mode"] = img.mode
            if decode:
                img.convert("RGB")  # a full decode: truncated data fails here, not in verify()
    except Exception as exc:
        record["error"] = describe_error(exc)
    return record


def _scan_splits(root: Path) -> dict[str, SplitListing]:
    present = [s for s in SPLITS if (root / s).is_dir()]
    if not present:
        raise DataError(f"{root} has neither train/ nor val/; {FOLDER_LAYOUT_HINT}, or pass a packed dir")
    return {split: list_split(root, split) for split in present}


def _inspect_all(
    listings: dict[str, SplitListing],
    decode: bool,
    want_hash: bool,
    workers: int,
    show_progress: bool | None,
    verb: str,
) -> dict[str, list[dict]]:
    records: dict[str, list[dict]] = {}
    total = sum(len(listing.files) for listing in listings.values())
    with progress_bar(verb, total, show_progress) as advance:
        for split, listing in listings.items():
            tasks = [(str(path), decode, want_hash) for path in listing.files]
            records[split] = []
            for record in parallel_map(_inspect_file, tasks, workers):
                records[split].append(record)
                advance(1)
    return records


def _range_summary(values: list[int]) -> dict | None:
    if not values:
        return None
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def _imbalance(per_class: dict[str, int]) -> float | None:
    counts = list(per_class.values())
    if not counts or min(counts) == 0:
        return None  # undefined with an empty class; the empty classes are listed instead
    return max(counts) / min(counts)


def folder_info(
    root: str | os.PathLike, *, decode: bool = True, workers: int = 1, show_progress: bool | None = None
) -> dict:
    """Classes, counts, image sizes and modes, unreadable files, train/val duplicates of a folder dataset."""
    root_path = require_dataset_root(root)
    meta = read_packed_meta(root_path)
    if meta is not None:
        return packed_info(root_path, meta, show_progress=show_progress)
    listings = _scan_splits(root_path)
    records = _inspect_all(listings, decode, True, workers, show_progress, "info")
    all_classes = sorted({c for listing in listings.values() for c in listing.classes})
    report: dict[str, Any] = {"root": str(root_path), "kind": "folder", "classes": all_classes, "splits": {}}
    unreadable: list[dict] = []
    hashes: dict[str, dict[str, list[str]]] = {}
    for split, listing in listings.items():
        split_records = records[split]
        per_class = {name: listing.labels.count(i) for i, name in enumerate(listing.classes)}
        readable = [r for r in split_records if r["error"] is None]
        unreadable += [
            {"path": r["path"], "error": r["error"]} for r in split_records if r["error"] is not None
        ]
        by_hash: dict[str, list[str]] = {}
        for r in split_records:
            if r["sha1"] is not None:
                by_hash.setdefault(r["sha1"], []).append(r["path"])
        hashes[split] = by_hash
        report["splits"][split] = {
            "images": len(listing.files),
            "per_class": per_class,
            "empty_classes": [name for name, n in per_class.items() if n == 0],
            "imbalance": _imbalance(per_class),
            "width": _range_summary([r["width"] for r in readable]),
            "height": _range_summary([r["height"] for r in readable]),
            "modes": dict(Counter(r["mode"] for r in readable).most_common()),
            "duplicates_within": sum(len(paths) - 1 for paths in by_hash.values()),
        }
    if len(listings) == 2:
        report["classes_only_in_train"] = sorted(
            set(listings["train"].classes) - set(listings["val"].classes)
        )
        report["classes_only_in_val"] = sorted(set(listings["val"].classes) - set(listings["train"].classes))
    report["unreadable"] = unreadable
    report["duplicates_train_val"] = _cross_duplicates(hashes)
    return report


def _cross_duplicates(hashes: dict[str, dict[str, list[str]]]) -> list[dict]:
    if "train" not in hashes or "val" not in hashes:
        return []
    pairs = []
    for digest, val_paths in hashes["val"].items():
        for train_path in hashes["train"].get(digest, []):
            pairs += [{"train": train_path, "val": val_path, "sha1": digest} for val_path in val_paths]
    return sorted(pairs, key=lambda p: (p["val"], p["train"]))


def is_short_side(meta: dict) -> bool:
    return meta.get("layout") == SHORT_SIDE_LAYOUT


def _open_packed_split(root: Path, meta: dict, split: str) -> tuple[Any, np.ndarray]:
    """(images, labels) of a split as stored: an (N, S, S, 3) memmap, or for a keep-aspect pack a
    VariableImages over the flat pixels (its index is not validated here: packed_problems reports it)."""
    from trainlab.data.packed import VariableImages

    try:
        if is_short_side(meta):
            pixels = np.load(root / f"{split}_pixels.npy", mmap_mode="r", allow_pickle=False)
            index = np.load(root / f"{split}_index.npy", allow_pickle=False)
            if index.ndim != 2 or index.shape[1] != 3:
                raise ValueError(f"{split}_index.npy has shape {index.shape}, expected (N, 3)")
            images: Any = VariableImages(pixels, index)
        else:
            images = np.load(root / f"{split}_images.npy", mmap_mode="r", allow_pickle=False)
        labels = np.load(root / f"{split}_labels.npy", mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(
            f"cannot open the {split} arrays of {root} ({describe_error(exc)}); re-run trainlab data pack"
        ) from exc
    return images, labels


def _row_hashes(images: Any, advance) -> list[str]:
    digests = []
    if getattr(images, "variable_size", False):  # the size is part of what makes two images equal
        for i in range(len(images)):
            image = np.ascontiguousarray(images[i])
            digests.append(hashlib.sha1(repr(image.shape).encode() + image.tobytes()).hexdigest())
            advance(1)
        return digests
    for part in iter_chunks(len(images), 256):
        block = np.ascontiguousarray(images[part])
        digests += [hashlib.sha1(row.tobytes()).hexdigest() for row in block]
        advance(part.stop - part.start)
    return digests


def _index_problems(root: Path, split: str, images: Any, expected: int, size: int) -> list[dict]:
    """What is wrong with a keep-aspect split's index: count, images outside the pixel file, short sides."""
    path = str(root / f"{split}_index.npy")
    index, pixels = images.index, images.pixels
    if pixels.dtype != np.uint8 or pixels.ndim != 1:
        return [{"path": str(root / f"{split}_pixels.npy"), "error": f"shape {pixels.shape} dtype {pixels.dtype}, expected flat uint8"}]
    if len(index) != expected:
        return [{"path": path, "error": f"{len(index)} images indexed, meta.json says {expected}"}]
    ends = images.offsets + images.heights * images.widths * 3
    outside = np.nonzero((images.offsets < 0) | (images.heights < 1) | (images.widths < 1) | (ends > len(pixels)))[0]
    if len(outside):
        return [{"path": path, "error": f"{len(outside)} images lie outside the {len(pixels)} pixel bytes (first: image {int(outside[0])}); the pixel file is truncated or the index damaged"}]
    off = np.nonzero(np.minimum(images.heights, images.widths) != size)[0]
    if len(off):
        return [{"path": path, "error": f"{len(off)} images have a short side other than {size} (first: image {int(off[0])})"}]
    return []


def _size_summary(values: np.ndarray) -> dict | None:
    if not len(values):
        return None
    return {"min": int(values.min()), "median": float(np.median(values)), "max": int(values.max())}


def packed_info(root: Path, meta: dict, show_progress: bool | None = None) -> dict:
    classes = list(meta["classes"])
    size = int(meta["img_size"])
    report: dict[str, Any] = {
        "root": str(root),
        "kind": "packed",
        "classes": classes,
        "img_size": size,
        "layout": meta.get("layout", "square"),
        "splits": {},
    }
    if is_short_side(meta):
        report["max_aspect"] = meta.get("max_aspect")
    hashes: dict[str, dict[str, list[str]]] = {}
    splits = {split: _open_packed_split(root, meta, split) for split in meta["splits"]}
    if is_short_side(meta):  # hashing reads every image: refuse an index that points outside its file
        for split, (images, _) in splits.items():
            problems = _index_problems(root, split, images, int(meta["splits"][split]), size)
            if problems:
                raise DataError(f"{problems[0]['path']}: {problems[0]['error']}; run trainlab data check, then repack")
    total = sum(len(images) for images, _ in splits.values())
    with progress_bar("info", total, show_progress) as advance:
        for split, (images, labels) in splits.items():
            counts = np.bincount(np.asarray(labels), minlength=len(classes))
            per_class = {name: int(counts[i]) for i, name in enumerate(classes)}
            by_hash: dict[str, list[str]] = {}
            for index, digest in enumerate(_row_hashes(images, advance)):
                by_hash.setdefault(digest, []).append(f"{split}[{index}]")
            hashes[split] = by_hash
            report["splits"][split] = {
                "images": int(len(images)),
                "per_class": per_class,
                "empty_classes": [name for name, n in per_class.items() if n == 0],
                "imbalance": _imbalance(per_class),
                "width": _size_summary(images.widths) if is_short_side(meta) else (
                    {"min": size, "median": size, "max": size} if len(images) else None
                ),
                "height": _size_summary(images.heights) if is_short_side(meta) else (
                    {"min": size, "median": size, "max": size} if len(images) else None
                ),
                "modes": {"RGB": int(len(images))},
                "duplicates_within": sum(len(paths) - 1 for paths in by_hash.values()),
            }
    report["unreadable"] = packed_problems(root, meta)
    report["duplicates_train_val"] = _cross_duplicates(hashes)
    return report


def packed_problems(root: Path, meta: dict, show_progress: bool | None = None) -> list[dict]:
    """Mismatches between meta.json and the arrays, labels out of range, and unreadable array data."""
    problems: list[dict] = []
    size, num_classes = int(meta["img_size"]), len(meta["classes"])
    for split, expected in meta["splits"].items():
        try:
            images, labels = _open_packed_split(root, meta, split)
        except DataError as exc:
            problems.append({"path": str(root / f"{split}_images.npy"), "error": str(exc)})
            continue
        if is_short_side(meta):
            index_problems = _index_problems(root, split, images, expected, size)
            problems += index_problems
            images = images.pixels  # the pages to touch below
            if index_problems:
                continue
        elif images.dtype != np.uint8 or images.shape != (expected, size, size, 3):
            problems.append(
                {
                    "path": str(root / f"{split}_images.npy"),
                    "error": f"shape {images.shape} dtype {images.dtype}, meta.json says uint8 {(expected, size, size, 3)}",
                }
            )
        if labels.dtype != np.int64 or labels.shape != (expected,):
            problems.append(
                {
                    "path": str(root / f"{split}_labels.npy"),
                    "error": f"shape {labels.shape} dtype {labels.dtype}, meta.json says int64 ({expected},)",
                }
            )
        elif expected and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            problems.append(
                {
                    "path": str(root / f"{split}_labels.npy"),
                    "error": f"labels span {int(labels.min())}..{int(labels.max())}, outside 0..{num_classes - 1}",
                }
            )
        chunk = 1 << 24 if is_short_side(meta) else 1024  # 16 MB of flat pixels, or 1024 square images
        with progress_bar(f"check {split}", len(images), show_progress) as advance:
            try:
                for part in iter_chunks(len(images), chunk):
                    np.asarray(images[part]).max()  # touch every page: a short file fails here
                    advance(part.stop - part.start)
            except (OSError, ValueError) as exc:
                problems.append({"path": str(root / f"{split}_images.npy"), "error": describe_error(exc)})
    return problems


def check_dataset(root: str | os.PathLike, *, workers: int = 1, show_progress: bool | None = None) -> dict:
    """Fully decode every image (folder) or read every array (packed); list what fails."""
    root_path = require_dataset_root(root)
    meta = read_packed_meta(root_path)
    if meta is not None:
        problems = packed_problems(root_path, meta, show_progress)
        checked = sum(int(n) for n in meta["splits"].values())
        return {"root": str(root_path), "kind": "packed", "checked": checked, "unreadable": problems}
    listings = _scan_splits(root_path)
    records = _inspect_all(listings, True, False, workers, show_progress, "check")
    unreadable = [
        {"path": r["path"], "error": r["error"]} for rs in records.values() for r in rs if r["error"]
    ]
    checked = sum(len(rs) for rs in records.values())
    return {"root": str(root_path), "kind": "folder", "checked": checked, "unreadable": unreadable}


