"""`packed`: the reader for folders written by `trainlab data pack` (see pack.py for the writer).

Layout: `root/meta.json` {"classes": [...], "img_size": S, "splits": {"train": N, "val": M}} and, per
split, `<split>_images.npy` (uint8 N,S,S,3) and `<split>_labels.npy` (int64 N). A `--keep-aspect` pack
(meta "layout": "short-side") has `<split>_pixels.npy` (uint8, all images' HWC bytes back to back) and
`<split>_index.npy` (int64 N,3: byte offset, height, width) instead of the images array; it is read as a
VariableImages. Arrays are opened as memory maps, so nothing is read until a loader asks for it, and
never with pickle (allow_pickle=False: loading a packed dir runs no code).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainlab.errors import DataError
from trainlab.paths import check_input_dir

_PACK_HINT = "write it with `trainlab data pack SRC DST --img-size S`"
SHORT_SIDE = "short-side"


class VariableImages:
    """uint8 HWC images of varying sizes stored back to back in one flat array (`pixels`, a memmap of the
    packed file) and located by `index` (int64 N,3: byte offset, height, width). `images[i]` is image i as
    an (h, w, 3) view, so per-sample code (ArraySource.load, the DataLoader path) takes it like an array."""

    variable_size = True
    dtype = np.dtype(np.uint8)

    def __init__(self, pixels: np.ndarray, index: np.ndarray):
        self.pixels, self.index = pixels, np.ascontiguousarray(index, dtype=np.int64)
        self.offsets, self.heights, self.widths = (self.index[:, k] for k in range(3))

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> np.ndarray:
        offset, height, width = (int(v) for v in self.index[int(i)])
        return self.pixels[offset : offset + height * width * 3].reshape(height, width, 3)

    @property
    def short_side(self) -> int:
        """The typical (median) short side: every image's, for a keep-aspect pack."""
        return int(np.median(np.minimum(self.heights, self.widths))) if len(self) else 0

    @property
    def max_height(self) -> int:
        return int(self.heights.max()) if len(self) else 0

    @property
    def max_width(self) -> int:
        return int(self.widths.max()) if len(self) else 0

    @property
    def nbytes(self) -> int:
        return int((self.heights * self.widths).sum() * 3)


@dataclass
class PackedArrays:
    train_images: np.ndarray | VariableImages  # uint8 N,S,S,3 (np.memmap), or VariableImages (short-side)
    train_labels: np.ndarray  # int64 N
    val_images: np.ndarray | VariableImages
    val_labels: np.ndarray
    classes: list[str]
    img_size: int
    layout: str = "square"


def _read_meta(root: Path) -> dict:
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        raise DataError(f"{meta_path} not found: {root} is not a packed dataset; {_PACK_HINT}")
    try:
        meta = json.loads(meta_path.read_text())
        classes, img_size, splits = list(meta["classes"]), int(meta["img_size"]), dict(meta["splits"])
        layout = str(meta.get("layout", "square"))
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as err:  # Overflow: "img_size": 1e400
        raise DataError(
            f"{meta_path} is not valid packed metadata ({type(err).__name__}: {err}); {_PACK_HINT}"
        ) from None
    if layout not in ("square", SHORT_SIDE):
        raise DataError(
            f'{meta_path} names layout {layout!r}, which this trainlab does not read ("square" or '
            f'"{SHORT_SIDE}"); upgrade trainlab or repack'
        )
    return {"classes": [str(c) for c in classes], "img_size": img_size, "splits": splits, "layout": layout}


def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"packed file missing: {path}; {_PACK_HINT}")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as err:  # noqa: BLE001 - truncated header, wrong magic ...
        raise DataError(
            f"cannot read packed file {path} ({type(err).__name__}: {err}); repack: {_PACK_HINT}"
        ) from None


def _load_variable(root: Path, split: str, size: int) -> VariableImages:
    """The short-side layout's flat pixels + index, every index row checked against the pixel file."""
    pixels_path, index_path = root / f"{split}_pixels.npy", root / f"{split}_index.npy"
    pixels = _load_npy(pixels_path, mmap=True)
    index = _load_npy(index_path, mmap=False)
    hint = f"repack with `trainlab data pack SRC DST --img-size {size} --keep-aspect`"
    if pixels.dtype != np.uint8 or pixels.ndim != 1:
        raise DataError(f"{pixels_path} holds {pixels.dtype} {tuple(pixels.shape)}, expected flat uint8; {hint}")
    if index.dtype != np.int64 or index.ndim != 2 or index.shape[1] != 3:
        raise DataError(
            f"{index_path} holds {index.dtype} {tuple(index.shape)}, expected int64 (N, 3) = offset, height, width; {hint}"
        )
    if len(index):
        offsets, heights, widths = index[:, 0], index[:, 1], index[:, 2]
        ends = offsets + heights * widths * 3
        bad = np.nonzero((offsets < 0) | (heights < 1) | (widths < 1) | (ends > len(pixels)))[0]
        if len(bad):
            i = int(bad[0])
            raise DataError(
                f"{index_path}: image {i} (offset {int(offsets[i])}, {int(heights[i])}x{int(widths[i])}) lies "
                f"outside {pixels_path.name}'s {len(pixels)} bytes ({len(bad)} such images); the pack is damaged: {hint}"
            )
        off_size = np.nonzero(np.minimum(heights, widths) != size)[0]
        if len(off_size):
            i = int(off_size[0])
            raise DataError(
                f"{index_path}: image {i} is {int(heights[i])}x{int(widths[i])}, but meta.json says the short "
                f"side is {size}; {hint}"
            )
    return VariableImages(pixels, index)


def _load_split(root: Path, split: str, meta: dict) -> tuple[np.ndarray | VariableImages, np.ndarray]:
    size = meta["img_size"]
    if meta["layout"] == SHORT_SIDE:
        images: np.ndarray | VariableImages = _load_variable(root, split, size)
    else:
        images = _load_npy(root / f"{split}_images.npy", mmap=True)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (size, size, 3):
            raise DataError(
                f"{root / f'{split}_images.npy'} holds {images.dtype} {tuple(images.shape)}, "
                f"expected uint8 (N, {size}, {size}, 3) per meta.json; {_PACK_HINT}"
            )
    labels = _load_npy(root / f"{split}_labels.npy", mmap=False).astype(np.int64, copy=False)
    expected_n = meta["splits"].get(split)
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
    return PackedArrays(
        train_images, train_labels, val_images, val_labels, meta["classes"], meta["img_size"], meta["layout"]
    )
