"""What an ImageNet-style folder holds: its class folders and their image files.

The one definition that the folder reader (data/folder.py) and the tools that write and check data
(data/pack.py, data/tools/) share, so the reader never depends on the packer.
"""

from __future__ import annotations

import os
from pathlib import Path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SPLITS = ("train", "val")
FOLDER_LAYOUT_HINT = "an ImageNet-style folder holds train/<class>/*.jpg and val/<class>/*.jpg"


def list_classes(split_dir: Path) -> list[str]:
    """Class folder names, sorted by name (the label order of torchvision's ImageFolder)."""
    return sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))


def image_files(class_dir: Path) -> list[Path]:
    """The images of one class folder, sorted."""
    # Walk recursively and follow symlinked files (subsets made with --link sym), like ImageFolder.
    found = []
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                found.append(Path(dirpath) / name)
    return sorted(found)
