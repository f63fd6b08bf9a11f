"""The same small images as a folder of PNGs and in CIFAR-10 format train to about the same accuracy with
default augmentation settings (aug.crop=auto picks the CIFAR pad-crop for the 32 px folder too).

    PYTHONPATH=src python bench/folder_vs_cifar.py [--train 4000] [--epochs 4]

Images: trainlab's `shapes` at 32 px (10 classes), written once as ROOT/train|val/<class>/*.png and once as
the CIFAR-10 python-pickle folder. Runs `trainlab train` (resnet20, defaults otherwise) on: the CIFAR
copy, the folder with defaults, and the folder with aug.crop=resized (what folders always got before
aug.crop existed: RandomResizedCrop scale 0.08-1). Prints final val top-1 of each.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

from trainlab.data.shapes import CLASS_NAMES, generate_shapes


def write_both(root: Path, train: int, val: int) -> tuple[Path, Path]:
    folder, cifar = root / "folder", root / "cifar" / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    splits = {"train": generate_shapes(train, 32, 0, "train"), "val": generate_shapes(val, 32, 0, "val")}
    for split, (images, labels) in splits.items():
        for i, (img, y) in enumerate(zip(images, labels)):
            d = folder / split / CLASS_NAMES[int(y)]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f"{i:05d}.png")
    images, labels = splits["train"]
    per = len(images) // 5
    for b in range(5):
        part = slice(b * per, (b + 1) * per)
        rows = images[part].transpose(0, 3, 1, 2).reshape(per, -1)
        entry = {"data": rows, "labels": labels[part].tolist(), "batch_label": f"batch {b + 1}"}
        (cifar / f"data_batch_{b + 1}").write_bytes(pickle.dumps(entry))
    vi, vl = splits["val"]
    test = {"data": vi.transpose(0, 3, 1, 2).reshape(len(vi), -1), "labels": vl.tolist()}
    (cifar / "test_batch").write_bytes(pickle.dumps(test))
    (cifar / "batches.meta").write_bytes(pickle.dumps({"label_names": list(CLASS_NAMES)}))
    return folder, root / "cifar"


def train(run_dir: Path, epochs: int, *args: str) -> tuple[float, str]:
    cmd = [sys.executable, "-m", "trainlab", "train", "model.name=resnet20", f"train.epochs={epochs}",
           "run.tensorboard=false", "run.progress=none", "train.threads=2", f"run.dir={run_dir}", *args]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode != 0:
        raise SystemExit(proc.stdout[-2000:] + proc.stderr[-2000:])
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    line = next((ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("data: ")), "")
    return float(rows[-1]["val_acc1"]), line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--val", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="trainlab-folder-cifar-"))
    folder, cifar = write_both(work, args.train, args.val)
    runs = {
        "CIFAR-10 format, defaults": ["data.name=cifar10", f"data.root={cifar}"],
        "PNG folder, defaults": ["data.name=folder", f"data.root={folder}", "data.img_size=32"],
        "PNG folder, aug.crop=resized (the old folder default)": [
            "data.name=folder", f"data.root={folder}", "data.img_size=32", "aug.crop=resized"],
    }  # fmt: skip
    print(f"\n### Folder vs CIFAR format, same images ({datetime.date.today()}; shapes 32 px, "
          f"{args.train} train / {args.val} val, resnet20, {args.epochs} epochs, CPU)\n")  # fmt: skip
    print(f"`PYTHONPATH=src python bench/folder_vs_cifar.py --train {args.train} --epochs {args.epochs}`\n")
    print("| data | val top-1 | start line |")
    print("| --- | ---: | --- |")
    for i, (name, extra) in enumerate(runs.items()):
        acc, line = train(work / f"run{i}", args.epochs, *extra)
        print(f"| {name} | {acc:.2f} | {line.split(';', 1)[-1].strip()} |", flush=True)


if __name__ == "__main__":
    main()
