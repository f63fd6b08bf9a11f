"""`trainlab data subset`: a smaller copy of an image folder (N classes, K images each), linked or copied."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from trainlab.data.listing import SPLITS
from trainlab.data.pack import (
    building_dir,
    check_destination,
    list_split,
    require_dataset_root,
)
from trainlab.errors import DataError, UsageError

LINK_MODES = ("hard", "sym", "copy")


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


