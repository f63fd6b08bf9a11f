"""`packed`: the reader for folders written by `trainlab data pack` (see tools.py for the writer).

Layout: `root/meta.json` {"classes": [...], "img_size": S, "splits": {"train": N, "val": M}} and, per
split, `<split>_images.npy` (uint8 N,S,S,3) and `<split>_labels.npy` (int64 N). Images are opened as
memory maps, so nothing is read until a loader asks for it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainlab.errors import DataError
from trainlab.paths import check_input_dir

_PACK_HINT = "write it with `trainlab data pack SRC DST --img-size S`"


@dataclass
class PackedArrays:
    train_images: np.ndarray  # uint8 N,S,S,3 (np.memmap)
    train_labels: np.ndarray  # int64 N
    val_images: np.ndarray
    val_labels: np.ndarray
    classes: list[str]
    img_size: int


def _read_meta(root: Path) -> dict:
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        raise DataError(f"{meta_path} not found: {root} is not a packed dataset; {_PACK_HINT}")
    try:
        meta = json.loads(meta_path.read_text())
        classes, img_size, splits = list(meta["classes"]), int(meta["img_size"]), dict(meta["splits"])
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(
            f"{meta_path} is not valid packed metadata ({type(err).__name__}: {err}); {_PACK_HINT}"
        ) from None
    return {"classes": [str(c) for c in classes], "img_size": img_size, "splits": splits}


def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"packed file missing: {path}; {_PACK_HINT}")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as err:  # noqa: BLE001 - truncated header, wrong magic ...
        raise DataError(
            f"cannot read packed file {path} ({type(err).__name__}: {err}); repack: {_PACK_HINT}"
        ) from None


def _load_split(root: Path, split: str, meta: dict) -> tuple[np.ndarray, np.ndarray]:
    images = _load_npy(root / f"{split}_images.npy", mmap=True)
    labels = _load_npy(root / f"{split}_labels.npy", mmap=False).astype(np.int64, copy=False)
    size = meta["img_size"]
    expected_n = meta["splits"].get(split)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (size, size, 3):
        raise DataError(
            f"{root / f'{split}_images.npy'} holds {images.dtype} {tuple(images.shape)}, "
            f"expected uint8 (N, {size}, {size}, 3) per meta.json; {_PACK_HINT}"
        )
    if len(labels) != len(images) or (expected_n is not None and len(images) != int(expected_n)):
        raise DataError(
            f"{root}: {split} has {len(images)} images and {len(labels)} labels, meta.json says {expected_n}; repack"
        )
    if len(images) == 0:
        raise DataError(f"{root}: the {split} split is empty; repack with images in SRC/{split}/<class>/")
    n_classes = len(meta["classes"])
    if labels.min() < 0 or labels.max() >= n_classes:
        raise DataError(
            f"{root / f'{split}_labels.npy'}: labels range {labels.min()}..{labels.max()} "
            f"but meta.json names {n_classes} classes; repack"
        )
    return images, labels


def load_packed(root: str | Path) -> PackedArrays:
    root_path = check_input_dir(root, "data.root", f"{_PACK_HINT} and point data.root at DST", DataError)
    meta = _read_meta(root_path)
    train_images, train_labels = _load_split(root_path, "train", meta)
    val_images, val_labels = _load_split(root_path, "val", meta)
    return PackedArrays(train_images, train_labels, val_images, val_labels, meta["classes"], meta["img_size"])
