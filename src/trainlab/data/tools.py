"""Dataset chores: ``trainlab data pack | subset | info | check | stats``.

Each command is a plain function returning a dict (what ``--json`` prints), wrapped by a thin CLI handler.
The packer itself lives in ``trainlab.data.pack``.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import io
import json
import math
import os
import random
import shutil
import statistics
import sys
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from trainlab.data.pack import (
    FOLDER_LAYOUT_HINT,
    SPLITS,
    SplitListing,
    building_dir,
    check_destination,
    default_workers,
    describe_error,
    iter_chunks,
    list_split,
    load_rgb,
    pack_folder,
    parallel_map,
    progress_bar,
    read_packed_meta,
    require_dataset_root,
    resize_center_crop,
)
from trainlab.errors import DataError, UsageError

LINK_MODES = ("hard", "sym", "copy")


# ---------------------------------------------------------------------------------------------- subset
def _subset_rng(seed: int, *parts: str) -> random.Random:
    # String seeds hash with SHA-512 inside random.Random: stable across runs and PYTHONHASHSEED.
    return random.Random(":".join(("trainlab-subset", str(seed), *parts)))


def choose_classes(
    all_classes: Sequence[str], num_classes: int | None, class_names: Sequence[str] | None, seed: int
) -> list[str]:
    if class_names:
        unknown = [c for c in class_names if c not in all_classes]
        if unknown:
            raise DataError(
                f"class {unknown[0]!r} is not in the source train/ folder "
                f"(it has {len(all_classes)} classes, e.g. {', '.join(all_classes[:3])}); check --class-names"
            )
        if len(set(class_names)) != len(class_names):
            raise UsageError("--class-names lists a class twice; name each class once")
        if num_classes is not None and num_classes != len(class_names):
            raise UsageError(
                f"--classes {num_classes} but --class-names names {len(class_names)}; drop one of them"
            )
        return sorted(class_names)
    if num_classes is None:
        raise UsageError("pass --classes K (chosen by --seed) or --class-names a,b,...")
    if not 1 <= num_classes <= len(all_classes):
        raise DataError(
            f"--classes {num_classes} but the source has {len(all_classes)} classes; ask for 1 to {len(all_classes)}"
        )
    return sorted(_subset_rng(seed, "classes").sample(list(all_classes), num_classes))


def _place(source: Path, target: Path, link: str) -> str:
    """Hard link, symlink or copy one file; a hard link across filesystems falls back to a copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if link == "hard":
        try:
            os.link(source, target)
            return "hard"
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
                raise
    elif link == "sym":
        os.symlink(source.resolve(), target)
        return "sym"
    shutil.copy2(source, target)
    return "copy"


def make_subset(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    train_per_class: int,
    val_per_class: int,
    seed: int,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    link: str = "hard",
    force: bool = False,
) -> dict:
    """Copy (or link) a reproducible class and image subset of SRC into DST/{train,val}/<class>/.

    Classes and files are drawn with RNGs derived from ``seed`` (files per class and split from their own
    stream), so the same seed always yields the same files."""
    if link not in LINK_MODES:
        raise UsageError(f"--link must be one of {', '.join(LINK_MODES)}, got {link!r}")
    if train_per_class < 0 or val_per_class < 0:
        raise UsageError("--train-per-class and --val-per-class must be 0 or more")
    src_path = require_dataset_root(src)
    dst_path = Path(dst).expanduser()
    listings = {"train": list_split(src_path, "train")}
    listings["val"] = list_split(src_path, "val", classes=listings["train"].classes)
    classes = choose_classes(listings["train"].classes, num_classes, class_names, seed)
    wanted = {"train": train_per_class, "val": val_per_class}

    picks: list[tuple[str, str, Path]] = []  # (split, class, source file)
    shortfalls: list[str] = []
    for split, listing in listings.items():
        for name in classes:
            files = listing.files_of(name)
            if len(files) < wanted[split]:
                shortfalls.append(
                    f"class {name!r} has {len(files)} {split} images in {listing.root}, fewer than "
                    f"--{split}-per-class {wanted[split]}"
                )
                continue
            chosen = _subset_rng(seed, split, name).sample(files, wanted[split])
            picks += [(split, name, f) for f in sorted(chosen)]
    if shortfalls:
        more = f" (and {len(shortfalls) - 1} more shortfalls)" if len(shortfalls) > 1 else ""
        raise DataError(f"{shortfalls[0]}{more}; ask for fewer images per class or pick other classes")
    check_destination(src_path, dst_path, force)

    methods: Counter[str] = Counter()
    with building_dir(dst_path) as tmp:
        for split, name, source in picks:
            relative = source.relative_to(listings[split].root / name)
            methods[_place(source, tmp / split / name / relative, link)] += 1
        for split in SPLITS:  # an empty class or split still gets its folder, so readers see the layout
            for name in classes:
                (tmp / split / name).mkdir(parents=True, exist_ok=True)
        recipe = {
            "source": str(src_path.resolve()),
            "seed": seed,
            "classes": classes,
            "train_per_class": train_per_class,
            "val_per_class": val_per_class,
            "link": link,
        }
        (tmp / "subset.json").write_text(json.dumps(recipe, indent=2) + "\n")
    return {
        "dst": str(dst_path),
        "classes": classes,
        "splits": {split: sum(1 for s, _, _ in picks if s == split) for split in SPLITS},
        "link": link,
        "files_by_method": dict(methods),
        "copied_instead_of_hard_linked": methods["copy"] if link == "hard" else 0,
    }


# ------------------------------------------------------------------------------------------ info/check
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


def _open_packed_split(root: Path, meta: dict, split: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        images = np.load(root / f"{split}_images.npy", mmap_mode="r")
        labels = np.load(root / f"{split}_labels.npy", mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise DataError(
            f"cannot open the {split} arrays of {root} ({describe_error(exc)}); re-run trainlab data pack"
        ) from exc
    return images, labels


def _row_hashes(images: np.ndarray, advance) -> list[str]:
    digests = []
    for part in iter_chunks(len(images), 256):
        block = np.ascontiguousarray(images[part])
        digests += [hashlib.sha1(row.tobytes()).hexdigest() for row in block]
        advance(part.stop - part.start)
    return digests


def packed_info(root: Path, meta: dict, show_progress: bool | None = None) -> dict:
    classes = list(meta["classes"])
    size = int(meta["img_size"])
    report: dict[str, Any] = {
        "root": str(root),
        "kind": "packed",
        "classes": classes,
        "img_size": size,
        "splits": {},
    }
    hashes: dict[str, dict[str, list[str]]] = {}
    splits = {split: _open_packed_split(root, meta, split) for split in meta["splits"]}
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
                "width": {"min": size, "median": size, "max": size} if len(images) else None,
                "height": {"min": size, "median": size, "max": size} if len(images) else None,
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
        if images.dtype != np.uint8 or images.shape != (expected, size, size, 3):
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
        with progress_bar(f"check {split}", len(images), show_progress) as advance:
            try:
                for part in iter_chunks(len(images), 1024):
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


# ----------------------------------------------------------------------------------------------- stats
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
        with progress_bar("stats train", len(train_images), show_progress) as advance:
            for part in iter_chunks(len(train_images), 256):
                part_sums, part_squares = _channel_sums(np.asarray(train_images[part]).reshape(-1, 3))
                sums = [a + b for a, b in zip(sums, part_sums)]
                squares = [a + b for a, b in zip(squares, part_squares)]
                advance(part.stop - part.start)
        images = len(train_images)
        count = images * int(meta["img_size"]) ** 2
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


# ------------------------------------------------------------------------------------------------- CLI
def _print_json(payload: dict) -> None:
    sys.stdout.write(json.dumps(payload, indent=2) + "\n")


def _print_table(title: str, headers: list[str], rows: list[list[Any]]) -> None:
    """A rich table on a terminal, plain aligned lines otherwise (for grep and logs)."""
    cells = [[str(c) for c in row] for row in rows]
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        print(title)  # above the table, not squeezed into its width
        table = Table()
        for i, header in enumerate(headers):
            table.add_column(header, justify="left" if i == 0 else "right")
        for row in cells:
            table.add_row(*row)
        Console(markup=False, highlight=False).print(table)
        return
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    print(title)
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def _fmt_range(summary: dict | None) -> str:
    if summary is None:
        return "-"
    return f"{summary['min']}/{summary['median']:g}/{summary['max']}"


def _print_unreadable(unreadable: list[dict], limit: int = 20) -> None:
    for entry in unreadable[:limit]:
        print(f"unreadable: {entry['path']}: {entry['error']}")
    if len(unreadable) > limit:
        print(f"... and {len(unreadable) - limit} more unreadable (see --json)")


def _cmd_pack(args: argparse.Namespace) -> int:
    result = pack_folder(
        args.src, args.dst, args.img_size, workers=args.workers, skip_bad=args.skip_bad, force=args.force
    )
    if args.json:
        _print_json(result)
        return 0
    for entry in result["skipped_files"]:
        print(f"skipped: {entry['path']}: {entry['error']}")
    splits = result["splits"]
    skipped = sum(result["skipped"].values())
    print(
        f"packed {splits['train']} train + {splits['val']} val images of {result['classes']} classes at "
        f"{result['img_size']}x{result['img_size']} into {result['dst']} ({result['bytes'] / 2**20:.1f} MiB)"
        + (f"; skipped {skipped} unreadable" if skipped else "")
    )
    print(f"train from it with: data.name=packed data.root={result['dst']}")
    return 0


def _cmd_subset(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.class_names.split(",") if n.strip()] if args.class_names else None
    result = make_subset(
        args.src,
        args.dst,
        num_classes=args.classes,
        class_names=names,
        train_per_class=args.train_per_class,
        val_per_class=args.val_per_class,
        seed=args.seed,
        link=args.link,
        force=args.force,
    )
    if args.json:
        _print_json(result)
        return 0
    fallback = result["copied_instead_of_hard_linked"]
    print(
        f"subset of {len(result['classes'])} classes, {result['splits']['train']} train + "
        f"{result['splits']['val']} val images in {result['dst']} (link={result['link']}"
        + (f", {fallback} copied: hard links cannot cross filesystems" if fallback else "")
        + ")"
    )
    print("classes: " + ", ".join(result["classes"]))
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    report = folder_info(args.root, decode=not args.fast, workers=args.workers)
    if args.json:
        _print_json(report)
        return 0
    splits = report["splits"]
    names = list(splits)
    rows = [[name] + [splits[s]["per_class"].get(name, 0) for s in names] for name in report["classes"]]
    if len(rows) > 30:  # a 1000-class table helps nobody; show the extremes
        rows.sort(key=lambda r: sum(r[1:]))
        rows = rows[:10] + [["...", *["" for _ in names]]] + rows[-10:]
    _print_table(
        f"{report['root']} ({report['kind']}, {len(report['classes'])} classes)", ["class", *names], rows
    )
    size_rows = []
    for split, s in splits.items():
        modes = " ".join(f"{mode}:{n}" for mode, n in s["modes"].items())
        imbalance = "-" if s["imbalance"] is None else f"{s['imbalance']:.2f}"
        size_rows.append(
            [
                split,
                s["images"],
                _fmt_range(s["width"]),
                _fmt_range(s["height"]),
                modes,
                imbalance,
                s["duplicates_within"],
            ]
        )
    _print_table(
        "images",
        ["split", "images", "width min/med/max", "height min/med/max", "modes", "max/min", "dup within"],
        size_rows,
    )
    for split, s in splits.items():
        if s["empty_classes"]:
            print(f"empty classes in {split}: {', '.join(s['empty_classes'][:10])}")
    for key in ("classes_only_in_train", "classes_only_in_val"):
        if report.get(key):
            print(f"{key.replace('_', ' ')}: {', '.join(report[key][:10])}")
    _print_unreadable(report["unreadable"])
    duplicates = report["duplicates_train_val"]
    for pair in duplicates[:20]:
        print(f"duplicate: {pair['val']} == {pair['train']}")
    print(f"{len(report['unreadable'])} unreadable, {len(duplicates)} train/val duplicates")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    result = check_dataset(args.root, workers=args.workers)
    unreadable = result["unreadable"]
    if args.json:
        _print_json(result)
    else:
        _print_unreadable(unreadable, limit=1000)
    if unreadable:
        summary = (
            f"{len(unreadable)} of {result['checked']} images unreadable under {result['root']}; "
            "remove or replace them, or train with data.skip_bad_images=true"
        )
        print(summary, file=sys.stderr if args.json else sys.stdout)
        return 2
    if not args.json:
        print(f"all {result['checked']} images of {result['root']} decode")
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    result = channel_stats(args.root, img_size=args.img_size, workers=args.workers, skip_bad=args.skip_bad)
    result["config"] = config_syntax(result)
    if args.json:
        _print_json(result)
        return 0
    size = f" at {result['img_size']} px" if result["img_size"] else " at native size"
    print(f"{result['images']} train images{size}, {result['pixels']} pixels per channel")
    if result["skipped"]:
        print(f"skipped {len(result['skipped'])} unreadable images")
    print(result["config"])
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, got {value}")
    return value


def _add_workers(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=default_workers(),
        help="decode processes (default: CPU count, at most 8; 1 decodes in this process)",
    )


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``data`` with its sub-commands to the trainlab CLI; each sets ``func(args) -> exit code``."""
    data = subparsers.add_parser(
        "data",
        help="dataset chores: pack, subset, info, check, stats",
        description="Dataset chores for ImageNet-style folders (ROOT/train/<class>/*, ROOT/val/<class>/*) "
        "and packed dirs.",
    )
    commands = data.add_subparsers(dest="data_command", metavar="COMMAND", required=True)

    pack = commands.add_parser(
        "pack",
        help="decode a folder once into memory-mapped uint8 arrays (data.name=packed)",
        description="Decode SRC/train and SRC/val once into memory-mapped uint8 arrays in DST, so training skips "
        "JPEG decoding. Each image is resized so its shorter side is S (bilinear, antialiased) and then "
        "centre-cropped to S x S, as torchvision's Resize(S) + CenterCrop(S); JPEGs over 4 S a side are "
        "decoded at a reduced DCT scale (at least 2 S) first. Classes are the folder names, sorted. Written to DST.tmp-<pid> and renamed, so a failure leaves no DST.",
    )
    pack.add_argument("src", metavar="SRC", help="folder with train/<class>/* and val/<class>/*")
    pack.add_argument("dst", metavar="DST", help="packed dir to create")
    pack.add_argument(
        "--img-size", type=_positive_int, required=True, metavar="S", help="side of the square images"
    )
    _add_workers(pack)
    pack.add_argument(
        "--skip-bad", action="store_true", help="leave unreadable images out (counted) instead of failing"
    )
    pack.add_argument("--force", action="store_true", help="replace DST if it exists")
    pack.add_argument("--json", action="store_true", help="print the result as JSON")
    pack.set_defaults(func=_cmd_pack)

    subset = commands.add_parser(
        "subset",
        help="a reproducible small class/image subset (seed 004's tiny ImageNet)",
        description="Pick classes and images of SRC reproducibly by --seed (same seed, same files) and link or "
        "copy them to DST/train/<class>/ and DST/val/<class>/. Hard links share the file with SRC: edit "
        "a copy, not the subset, if you change images. Hard links fall back to copies across filesystems.",
    )
    subset.add_argument("src", metavar="SRC")
    subset.add_argument("dst", metavar="DST")
    subset.add_argument(
        "--classes", type=_positive_int, metavar="K", help="number of classes, chosen by --seed"
    )
    subset.add_argument(
        "--class-names", metavar="A,B,...", help="comma-separated classes to take instead of a draw"
    )
    subset.add_argument("--train-per-class", type=int, required=True, metavar="N")
    subset.add_argument("--val-per-class", type=int, required=True, metavar="M")
    subset.add_argument("--seed", type=int, default=0, help="RNG seed for classes and files (default 0)")
    subset.add_argument(
        "--link", choices=LINK_MODES, default="hard", help="hard link (default), symlink or copy"
    )
    subset.add_argument("--force", action="store_true", help="replace DST if it exists")
    subset.add_argument("--json", action="store_true", help="print the result as JSON")
    subset.set_defaults(func=_cmd_subset)

    info = commands.add_parser(
        "info",
        help="classes, counts, image sizes, unreadable files, train/val duplicates, imbalance",
        description="Describe a folder dataset or packed dir: images per class and split, width/height "
        "min/median/max, colour modes, unreadable files (full decode), train/val duplicates by sha1 of the "
        "file bytes, and the max/min class count ratio.",
    )
    info.add_argument("root", metavar="ROOT")
    _add_workers(info)
    info.add_argument(
        "--fast", action="store_true", help="read headers only; truncated files are not noticed"
    )
    info.add_argument("--json", action="store_true", help="print the report as JSON")
    info.set_defaults(func=_cmd_info)

    check = commands.add_parser(
        "check",
        help="decode every image; exit 2 if any is unreadable",
        description="Fully decode every image of ROOT (PIL convert('RGB')), or read every array of a packed "
        "dir, and list the failures. Exit 0 when all decode, 2 otherwise.",
    )
    check.add_argument("root", metavar="ROOT")
    _add_workers(check)
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    check.set_defaults(func=_cmd_check)

    stats = commands.add_parser(
        "stats",
        help="per-channel mean/std of the train split, for data.mean / data.std",
        description="Per-channel mean and std (0-1 scale) over every pixel of the train split, printed as "
        "config overrides. With --img-size, images are first resized and centre-cropped as in data pack.",
    )
    stats.add_argument("root", metavar="ROOT")
    stats.add_argument("--img-size", type=_positive_int, metavar="S", help="resize+centre-crop to S first")
    _add_workers(stats)
    stats.add_argument(
        "--skip-bad", action="store_true", help="leave unreadable images out instead of failing"
    )
    stats.add_argument("--json", action="store_true", help="print the result as JSON")
    stats.set_defaults(func=_cmd_stats)
