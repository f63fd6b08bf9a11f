"""`trainlab data pack | subset | info | check | stats`: the thin CLI over the dataset chores.

Each chore is a plain function returning a dict (what ``--json`` prints), in its own module of
``trainlab.data.tools`` (subset, check for info and check, stats); the packer is ``trainlab.data.pack``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from trainlab.commands.argtypes import positive_int
from trainlab.data.pack import (
    default_workers,
    pack_folder,
)
from trainlab.data.tools.check import check_dataset, folder_info
from trainlab.data.tools.stats import channel_stats, config_syntax
from trainlab.data.tools.subset import LINK_MODES, make_subset


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
        args.src, args.dst, args.img_size, workers=args.workers, skip_bad=args.skip_bad, force=args.force,
        keep_aspect=args.keep_aspect, max_aspect=args.max_aspect,
    )  # fmt: skip
    if args.json:
        _print_json(result)
        return 0
    for entry in result["skipped_files"]:
        print(f"skipped: {entry['path']}: {entry['error']}")
    splits = result["splits"]
    skipped = sum(result["skipped"].values())
    size = result["img_size"]
    geometry = (
        f"short side {size} (aspect kept, long side at most {int(result['max_aspect'] * size)})"
        if result["layout"] == "short-side" else f"{size}x{size}"
    )  # fmt: skip
    print(
        f"packed {splits['train']} train + {splits['val']} val images of {result['classes']} classes at "
        f"{geometry} into {result['dst']} ({result['bytes'] / 2**20:.1f} MiB)"
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


def _add_workers(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers",
        type=positive_int,
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
        "decoded at a reduced DCT scale (at least 2 S) first. With --keep-aspect, images keep their aspect "
        "(short side S, for random resized crops in training; the streaming loader reads them). Classes are the "
        "folder names, sorted. Written to DST.tmp-<pid> and renamed, so a failure leaves no DST.",
    )
    pack.add_argument("src", metavar="SRC", help="folder with train/<class>/* and val/<class>/*")
    pack.add_argument("dst", metavar="DST", help="packed dir to create")
    pack.add_argument(
        "--img-size", type=positive_int, required=True, metavar="S",
        help="side of the square images (with --keep-aspect: the short side)",
    )  # fmt: skip
    pack.add_argument(
        "--keep-aspect", action="store_true",
        help="store each image with its short side at S and its aspect kept (variable sizes) instead of "
        "centre-cropping S x S: keeps the whole picture for random resized crops",
    )  # fmt: skip
    pack.add_argument(
        "--max-aspect", type=float, default=None, metavar="R",
        help="with --keep-aspect: centre-crop the long side to at most R x S (default 2.0), so one "
        "panorama cannot widen a batch buffer",
    )  # fmt: skip
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
        "--classes", type=positive_int, metavar="K", help="number of classes, chosen by --seed"
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
    stats.add_argument("--img-size", type=positive_int, metavar="S", help="resize+centre-crop to S first")
    _add_workers(stats)
    stats.add_argument(
        "--skip-bad", action="store_true", help="leave unreadable images out instead of failing"
    )
    stats.add_argument("--json", action="store_true", help="print the result as JSON")
    stats.set_defaults(func=_cmd_stats)
