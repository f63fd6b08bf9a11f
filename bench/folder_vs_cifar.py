"""The same small images as a folder of PNGs and in CIFAR-10 format train to about the same accuracy with
default augmentation settings (aug.crop=auto picks the CIFAR pad-crop for the 32 px folder too).

    PYTHONPATH=src python bench/folder_vs_cifar.py [--images digits|shapes] [--epochs 12] [--seeds 0 1]

Images:
- digits (default): scikit-learn's bundled handwritten digits (1,797 real 8x8 scans, 16 grey levels; in the
  wheel, no download: `pip install scikit-learn`, or `pip install -e .[bench]`), upscaled to 32 px RGB
  (bilinear, PIL), split 1,397 train / 400 val, stratified by class, fixed seed;
- shapes: trainlab's synthetic `shapes` at 32 px (10 classes), --train / --val images.
Both are written once as ROOT/train|val/<class>/*.png and once as the CIFAR-10 python-pickle folder, and
`trainlab train` (resnet20, defaults otherwise) runs on: the CIFAR copy and the folder with defaults, the
folder with aug.crop=resized (what folders always got before aug.crop existed: RandomResizedCrop scale
0.08-1), and both copies with aug.hflip=0 (the defaults keep hflip 0.5; a mirrored digit is another digit).
`--only folder-cifarnorm` adds a control: the folder with CIFAR-10's mean/std (a folder defaults to
ImageNet's). Prints each run's final val top-1, its train+val seconds and the start line's augmentation,
then the mean over seeds. Each run is a `trainlab train` subprocess (same seed for every data copy).
"""

from __future__ import annotations

import argparse
import csv
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

DIGITS_VAL = 400  # of 1,797: 1,397 train / 400 val
CIFAR10_NORM = ["data.mean=[0.4914,0.4822,0.4465]", "data.std=[0.2470,0.2435,0.2616]"]  # transforms.CIFAR10_*


def digits_images(val: int = DIGITS_VAL, seed: int = 0) -> tuple[dict, list[str]]:
    """{split: (uint8 N,32,32,3, int64 labels)} of sklearn's digits, upscaled bilinearly, stratified split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("--images digits needs scikit-learn: pip install scikit-learn") from None
    digits = load_digits()
    small = np.round(digits.images * (255 / 16)).astype(np.uint8)  # 0..16 grey levels -> 0..255
    big = np.stack([np.asarray(Image.fromarray(im).resize((32, 32), Image.BILINEAR)) for im in small])
    images = np.ascontiguousarray(np.repeat(big[..., None], 3, axis=3))
    labels = digits.target.astype(np.int64)
    # Stratified: each class gives its share of `val` (largest remainders), drawn with a fixed seed.
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    counts = np.array([(labels == c).sum() for c in classes])
    share = counts * val / len(labels)
    take = np.floor(share).astype(int)
    take[np.argsort(-(share - take), kind="stable")[: val - take.sum()]] += 1
    val_idx = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]))
    train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    splits = {"train": (images[train_idx], labels[train_idx]), "val": (images[val_idx], labels[val_idx])}
    return splits, [str(c) for c in classes]


def shapes_images(train: int, val: int) -> tuple[dict, list[str]]:
    from trainlab.data.shapes import CLASS_NAMES, generate_shapes

    return {"train": generate_shapes(train, 32, 0, "train"), "val": generate_shapes(val, 32, 0, "val")}, list(CLASS_NAMES)


def write_both(root: Path, splits: dict, class_names: list[str]) -> tuple[Path, Path]:
    """The same uint8 pixels as a PNG folder and as a CIFAR-10 python-pickle folder."""
    folder, cifar = root / "folder", root / "cifar" / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    for split, (images, labels) in splits.items():
        for i, (img, y) in enumerate(zip(images, labels)):
            d = folder / split / class_names[int(y)]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f"{i:05d}.png")
    images, labels = splits["train"]
    for b, part in enumerate(np.array_split(np.arange(len(images)), 5)):  # all images, batches may differ by 1
        rows = images[part].transpose(0, 3, 1, 2).reshape(len(part), -1)
        entry = {"data": rows, "labels": labels[part].tolist(), "batch_label": f"batch {b + 1}"}
        (cifar / f"data_batch_{b + 1}").write_bytes(pickle.dumps(entry))
    vi, vl = splits["val"]
    test = {"data": vi.transpose(0, 3, 1, 2).reshape(len(vi), -1), "labels": vl.tolist()}
    (cifar / "test_batch").write_bytes(pickle.dumps(test))
    (cifar / "batches.meta").write_bytes(pickle.dumps({"label_names": list(class_names)}))
    return folder, root / "cifar"


def train(run_dir: Path, epochs: int, seed: int, threads: int, *args: str) -> tuple[float, str, float]:
    cmd = [sys.executable, "-m", "trainlab", "train", "model.name=resnet20", f"train.epochs={epochs}",
           f"train.seed={seed}", "run.tensorboard=false", "run.progress=none", f"train.threads={threads}",
           f"run.dir={run_dir}", *args]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode != 0:
        raise SystemExit(proc.stdout[-2000:] + proc.stderr[-2000:])
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    line = next((ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("data: ")), "")
    aug = line[line.find("aug: "):] if "aug: " in line else line
    seconds = sum(float(r["epoch_time_s"]) + float(r["val_time_s"]) for r in rows)
    return float(rows[-1]["val_acc1"]), aug, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", choices=("digits", "shapes"), default="digits")
    parser.add_argument("--train", type=int, default=4000, help="shapes only (digits: 1,397)")
    parser.add_argument("--val", type=int, default=1000, help="shapes only (digits: 400)")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="+", help="run only these (cifar, folder, resized, cifar-noflip, folder-noflip, folder-cifarnorm)")
    args = parser.parse_args()
    if args.images == "digits":
        splits, class_names = digits_images()
    else:
        splits, class_names = shapes_images(args.train, args.val)
    work = Path(tempfile.mkdtemp(prefix="trainlab-folder-cifar-"))
    folder, cifar = write_both(work, splits, class_names)
    cifar_args = ["data.name=cifar10", f"data.root={cifar}"]
    folder_args = ["data.name=folder", f"data.root={folder}", "data.img_size=32"]
    runs = {
        "cifar": ("CIFAR-10 format, defaults", cifar_args),
        "folder": ("PNG folder, defaults", folder_args),
        "resized": ("PNG folder, aug.crop=resized (the old folder default)", [*folder_args, "aug.crop=resized"]),
        "cifar-noflip": ("CIFAR-10 format, aug.hflip=0", [*cifar_args, "aug.hflip=0"]),
        "folder-noflip": ("PNG folder, aug.hflip=0", [*folder_args, "aug.hflip=0"]),
        # A control, only with --only: the folder normalised like CIFAR-10 (folders default to ImageNet's
        # mean/std, cifar10 to CIFAR-10's: the one default that still differs between the two copies).
        "folder-cifarnorm": ("PNG folder, data.mean/std of CIFAR-10", [*folder_args, *CIFAR10_NORM]),
    }
    keys = args.only or [k for k in runs if k != "folder-cifarnorm"]
    n_train, n_val = len(splits["train"][1]), len(splits["val"][1])
    seeds = " ".join(map(str, args.seeds))
    print(f"\n### Folder vs CIFAR format, same images ({args.images} 32 px, {n_train} train / {n_val} val, "
          f"resnet20, {args.epochs} epochs, seeds {seeds}, CPU)\n")  # fmt: skip
    print(f"`PYTHONPATH=src python bench/folder_vs_cifar.py --images {args.images} --epochs {args.epochs} "
          f"--seeds {seeds}`\n")  # fmt: skip
    print("| data | seed | val top-1 | train+val s | start line |")
    print("| --- | ---: | ---: | ---: | --- |")
    means = {}
    for key in keys:
        name, extra = runs[key]
        accs = []
        for seed in args.seeds:
            acc, aug, seconds = train(work / f"{key}-s{seed}", args.epochs, seed, args.threads, *extra)
            accs.append(acc)
            print(f"| {name} | {seed} | {acc:.2f} | {seconds:.0f} | {aug} |", flush=True)
        means[name] = accs
    print("\n| data | mean val top-1 |")
    print("| --- | ---: |")
    for name, accs in means.items():
        print(f"| {name} | {np.mean(accs):.2f} ({', '.join(f'{a:.2f}' for a in accs)}) |")
    print(f"\n(data in {work})")


if __name__ == "__main__":
    main()
