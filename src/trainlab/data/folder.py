"""`folder`: the ImageNet layout `root/train/<class>/*` and `root/val/<class>/*`, decoded per sample.

Classes are the sorted train sub-folders; val must use a subset of them. Decoding uses torchvision.io
(libjpeg-turbo / libpng / libwebp, faster than PIL) and falls back to PIL for formats it lacks (BMP).
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image

from trainlab.data.listing import IMAGE_EXTENSIONS, image_files, list_classes
from trainlab.errors import DataError
from trainlab.paths import check_input_dir

# torchvision 0.29 deprecates its decoders in favour of TorchCodec (not a dependency); they still are the
# fastest decoders installed, so silence only that notice.
warnings.filterwarnings(
    "ignore",
    message="The image decoding and encoding capabilities of TorchVision",
    category=DeprecationWarning,
)

def _bad_image_hint(path: Path, root: Path | None) -> str:
    where = root if root is not None else path.parent.parent.parent
    return f"set data.skip_bad_images=true to skip unreadable files, or run `trainlab data check {where}` to list them"


def decode_file(path: str | Path) -> torch.Tensor:
    """uint8 CHW RGB tensor of an image file; raises ValueError/OSError if it cannot be decoded."""
    path = str(path)
    try:
        return decode_image(path, mode=ImageReadMode.RGB)
    except Exception:  # noqa: BLE001 - torchvision lacks some formats (BMP); PIL decides
        from PIL import Image

        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"))
        return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def scan_split(
    root: Path, split: str, classes: list[str] | None = None
) -> tuple[list[Path], list[int], list[str]]:
    """Image files and labels of `root/split`; with `classes` (from train), val is checked against them."""
    split_dir = root / split
    if not split_dir.is_dir():
        raise DataError(
            f"missing split folder {split_dir}; the folder layout is ROOT/train/<class>/*.jpg and ROOT/val/<class>/*.jpg"
        )
    found = list_classes(split_dir)
    if not found:
        raise DataError(
            f"empty split {split_dir}: no class folders in it; put images in {split_dir}/<class>/"
        )
    if classes is None:
        classes = found
    else:
        unknown = [c for c in found if c not in classes]
        if unknown:
            raise DataError(
                f"val class folder {split_dir / unknown[0]} has no train counterpart in {root / 'train'}; "
                f"rename or remove it ({len(unknown)} such folder(s))"
            )
    index = {name: i for i, name in enumerate(classes)}
    files: list[Path] = []
    labels: list[int] = []
    for name in found:
        class_dir = split_dir / name
        images = image_files(class_dir)
        if not images:
            raise DataError(
                f"empty class folder {class_dir}: no images with extensions {', '.join(IMAGE_EXTENSIONS)}; "
                "add images or remove the folder"
            )
        files += images
        labels += [index[name]] * len(images)
    return files, labels, classes


def _readable(path: Path) -> bool:
    try:
        decode_file(path)
        return True
    except Exception:  # noqa: BLE001 - any decode failure makes the file unusable
        return False


def drop_unreadable(
    files: list[Path], labels: list[int], workers: int = 4
) -> tuple[list[Path], list[int], list[Path]]:
    """Decode every file once (threads: decoders release the GIL) and keep the readable ones."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        ok = list(pool.map(_readable, files))
    bad = [f for f, good in zip(files, ok) if not good]
    kept = [(f, y) for f, y, good in zip(files, labels, ok) if good]
    return [f for f, _ in kept], [y for _, y in kept], bad


class FolderDataset:
    """Files and labels; `load(i)` decodes one image (a SampleSource for the torch loader)."""

    def __init__(self, files: list[Path], labels: list[int], root: Path | None = None):
        self.files = [str(f) for f in files]  # plain strings pickle cheaply to workers
        self.labels = labels
        self.root = root

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> tuple[torch.Tensor, int]:
        path = self.files[index]
        try:
            image = decode_file(path)
        except Exception as err:  # noqa: BLE001
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise DataError(
                f"cannot decode image {path} ({reason}); {_bad_image_hint(Path(path), self.root)}"
            ) from None
        return image, self.labels[index]


def load_folder(
    root: str | Path, skip_bad_images: bool = False
) -> tuple[FolderDataset, FolderDataset, list[str]]:
    """(train, val, class names) of an ImageNet-style folder."""
    root_path = check_input_dir(root, "data.root", "point data.root at a folder with train/ and val/ inside", DataError)
    train_files, train_labels, classes = scan_split(root_path, "train")
    val_files, val_labels, _ = scan_split(root_path, "val", classes)
    if skip_bad_images:
        train_files, train_labels, bad_train = drop_unreadable(train_files, train_labels)
        val_files, val_labels, bad_val = drop_unreadable(val_files, val_labels)
        bad = bad_train + bad_val
        if bad:
            warnings.warn(
                f"data.skip_bad_images: skipped {len(bad)} unreadable image(s) under {root_path} "
                f"(first: {bad[0]}); run `trainlab data check {root_path}` for the list",
                stacklevel=2,
            )
        for split, files in (("train", train_files), ("val", val_files)):
            if not files:
                raise DataError(
                    f"no readable images left in {root_path / split} after skipping unreadable ones"
                )
    return (
        FolderDataset(train_files, train_labels, root_path),
        FolderDataset(val_files, val_labels, root_path),
        classes,
    )
