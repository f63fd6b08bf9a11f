"""`trainlab data pack | subset | info | check | stats` on real image files made in tmp_path."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainlab.commands.data import register_cli
from trainlab.data.pack import PACKED_FORMAT
from trainlab.errors import DataError, UsageError

CLASSES = ("cat", "dog", "frog")


def run_data(*argv: str) -> int:
    """Parse and run `trainlab data ...` through register_cli on a fresh parser, in this process."""
    parser = argparse.ArgumentParser(prog="trainlab")
    register_cli(parser.add_subparsers())
    args = parser.parse_args(["data", *argv])
    return args.func(args)


def smooth_image(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    # Gradients and a block: smooth enough that resampling choices change pixels by rounding only.
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack(
        [x * 255 // width, y * 255 // height, np.full((height, width), int(rng.integers(0, 256)))], -1
    )
    top, left = height // 4, width // 3
    img[top : top + height // 3, left : left + width // 3] = rng.integers(0, 256, 3)
    return img.astype(np.uint8)


def make_folder(root: Path, train_per_class: int = 6, val_per_class: int = 3, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for name in CLASSES:
            class_dir = root / split / name
            class_dir.mkdir(parents=True)
            for i in range(count):
                width, height = int(rng.integers(18, 90)), int(rng.integers(18, 90))
                ext = (".jpg", ".png", ".JPEG")[i % 3]
                fmt = "JPEG" if ext.lower() in (".jpg", ".jpeg") else "PNG"
                Image.fromarray(smooth_image(rng, width, height)).save(
                    class_dir / f"{name}_{i}{ext}", fmt, quality=95
                )
    return root


def reference_resize_crop(path: Path, size: int) -> np.ndarray:
    """torchvision's Resize(size) + CenterCrop(size), the transform the packer promises to match."""
    from torchvision.transforms.v2 import functional as F

    img = Image.open(path).convert("RGB")
    return np.asarray(F.center_crop(F.resize(img, size), size))


def plant_truncated_jpeg(path: Path) -> None:
    rng = np.random.default_rng(7)
    Image.fromarray(smooth_image(rng, 40, 40)).save(path, "JPEG")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # header intact, scan data cut: only a full decode fails


# ------------------------------------------------------------------------------------------------ pack
def test_pack_round_trips_images_labels_and_meta(tmp_path):
    src = make_folder(tmp_path / "src")
    dst = tmp_path / "packed"
    assert run_data("pack", str(src), str(dst), "--img-size", "16", "--workers", "2") == 0

    meta = json.loads((dst / "meta.json").read_text())
    assert meta == {
        "format": PACKED_FORMAT,
        "classes": list(CLASSES),
        "img_size": 16,
        "splits": {"train": 18, "val": 9},
        "source": str(src.resolve()),
    }
    for split in ("train", "val"):
        images = np.load(dst / f"{split}_images.npy", mmap_mode="r")
        labels = np.load(dst / f"{split}_labels.npy")
        assert images.dtype == np.uint8 and images.shape == (meta["splits"][split], 16, 16, 3)
        assert labels.dtype == np.int64
        files = sorted((p for p in (src / split).rglob("*") if p.is_file()), key=lambda p: (p.parent.name, p))
        assert labels.tolist() == [CLASSES.index(p.parent.name) for p in files]
        diffs = [
            np.abs(images[i].astype(int) - reference_resize_crop(p, 16)).mean() for i, p in enumerate(files)
        ]
        # Reduced-scale JPEG decode and resampling differ from a full-size resize by rounding only.
        assert max(diffs) < 2.5, diffs
        assert np.mean(diffs) < 0.5

    # The packed reader reads what the packer wrote.
    from trainlab.data.packed import load_packed

    arrays = load_packed(dst)
    assert arrays.classes == list(CLASSES) and arrays.img_size == 16
    np.testing.assert_array_equal(arrays.val_images, np.load(dst / "val_images.npy"))


def test_pack_unreadable_image_fails_and_leaves_nothing(tmp_path):
    src = make_folder(tmp_path / "src", train_per_class=2, val_per_class=1)
    bad = src / "train" / "dog" / "noise.jpg"
    bad.write_bytes(np.random.default_rng(1).bytes(500))
    dst = tmp_path / "packed"
    with pytest.raises(DataError, match="noise.jpg.*--skip-bad"):
        run_data("pack", str(src), str(dst), "--img-size", "8", "--workers", "1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no DST, no DST.tmp-<pid>


def test_pack_skip_bad_leaves_out_and_counts(tmp_path, capsys):
    src = make_folder(tmp_path / "src", train_per_class=3, val_per_class=1)
    plant_truncated_jpeg(src / "train" / "cat" / "cut.jpg")
    dst = tmp_path / "packed"
    assert (
        run_data("pack", str(src), str(dst), "--img-size", "8", "--skip-bad", "--workers", "1", "--json") == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["skipped"] == {"train": 1, "val": 0}
    assert result["skipped_files"][0]["path"].endswith("cut.jpg")
    labels = np.load(dst / "train_labels.npy")
    images = np.load(dst / "train_images.npy")
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # the good cat images stay, in order
    assert images.shape == (9, 8, 8, 3)
    # The row after the skipped file holds the next file, not a gap of zeros.
    good_cat = sorted(p for p in (src / "train" / "cat").iterdir() if p.name != "cut.jpg")
    for row, path in zip(images[:3], good_cat):
        assert np.abs(row.astype(int) - reference_resize_crop(path, 8)).mean() < 6
    assert json.loads((dst / "meta.json").read_text())["splits"] == {"train": 9, "val": 3}


def test_pack_refuses_existing_dst_and_missing_split(tmp_path):
    src = make_folder(tmp_path / "src", train_per_class=1, val_per_class=1)
    dst = tmp_path / "packed"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="already exists.*--force"):
        run_data("pack", str(src), str(dst), "--img-size", "8", "--workers", "1")
    assert (dst / "keep.txt").exists()
    # --force replaces a pack, never a folder of something else (issue 24: nothing deleted trainlab did not make)
    with pytest.raises(UsageError, match="is not a packed dataset"):
        run_data("pack", str(src), str(dst), "--img-size", "8", "--workers", "1", "--force")
    assert (dst / "keep.txt").read_text() == "mine"
    (dst / "keep.txt").unlink()
    assert run_data("pack", str(src), str(dst), "--img-size", "8", "--workers", "1", "--force") == 0  # empty
    assert run_data("pack", str(src), str(dst), "--img-size", "8", "--workers", "1", "--force") == 0  # a pack
    assert (dst / "meta.json").exists()

    with pytest.raises(DataError, match="does not exist"):
        run_data("pack", str(tmp_path / "nowhere"), str(tmp_path / "p2"), "--img-size", "8")
    for child in (src / "val").iterdir():
        for f in child.iterdir():
            f.unlink()
        child.rmdir()
    (src / "val").rmdir()
    with pytest.raises(DataError, match=r"val is missing"):
        run_data("pack", str(src), str(tmp_path / "p3"), "--img-size", "8")


# ---------------------------------------------------------------------------------------------- subset
def subset_files(root: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != "subset.json"
    )


def test_subset_counts_reproducible_by_seed_and_hard_linked(tmp_path):
    src = make_folder(tmp_path / "src", train_per_class=8, val_per_class=4)
    common = ["--classes", "2", "--train-per-class", "3", "--val-per-class", "2"]
    assert run_data("subset", str(src), str(tmp_path / "a"), *common, "--seed", "1") == 0
    assert run_data("subset", str(src), str(tmp_path / "b"), *common, "--seed", "1") == 0
    assert run_data("subset", str(src), str(tmp_path / "c"), *common, "--seed", "2") == 0

    a = tmp_path / "a"
    classes = sorted(p.name for p in (a / "train").iterdir())
    assert len(classes) == 2 and set(classes) <= set(CLASSES)
    for name in classes:
        assert len(list((a / "train" / name).iterdir())) == 3
        assert len(list((a / "val" / name).iterdir())) == 2
    assert subset_files(a) == subset_files(tmp_path / "b")
    assert subset_files(a) != subset_files(tmp_path / "c")
    for path in (a / "train").rglob("*.*"):
        source = src / path.relative_to(a)
        assert os.stat(path).st_ino == os.stat(source).st_ino  # a hard link, not a copy
    recipe = json.loads((a / "subset.json").read_text())
    assert recipe["seed"] == 1 and recipe["classes"] == classes


def test_subset_named_classes_symlink_copy_and_shortfall(tmp_path):
    src = make_folder(tmp_path / "src", train_per_class=4, val_per_class=2)
    args = ["--class-names", "frog,cat", "--train-per-class", "2", "--val-per-class", "1", "--seed", "0"]
    assert run_data("subset", str(src), str(tmp_path / "sym"), *args, "--link", "sym") == 0
    assert run_data("subset", str(src), str(tmp_path / "copy"), *args, "--link", "copy") == 0
    assert sorted(p.name for p in (tmp_path / "sym" / "train").iterdir()) == ["cat", "frog"]
    linked = [p for p in (tmp_path / "sym").rglob("*.*") if p.name != "subset.json"]
    assert len(linked) == 6 and all(
        p.is_symlink() and p.resolve().is_relative_to(src.resolve()) for p in linked
    )
    copied = [p for p in (tmp_path / "copy").rglob("*.*") if p.name != "subset.json"]
    assert all(
        not p.is_symlink() and os.stat(p).st_ino != os.stat(src / p.relative_to(tmp_path / "copy")).st_ino
        for p in copied
    )
    assert subset_files(tmp_path / "sym") == subset_files(
        tmp_path / "copy"
    )  # link mode does not change the draw

    with pytest.raises(DataError, match=r"class 'cat' has 2 val images .* fewer than --val-per-class 3"):
        run_data(
            "subset",
            str(src),
            str(tmp_path / "short"),
            "--class-names",
            "cat",
            "--train-per-class",
            "1",
            "--val-per-class",
            "3",
        )
    with pytest.raises(DataError, match="'horse' is not in"):
        run_data(
            "subset",
            str(src),
            str(tmp_path / "x"),
            "--class-names",
            "horse",
            "--train-per-class",
            "1",
            "--val-per-class",
            "1",
        )
    assert not (tmp_path / "short").exists() and not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------------ info/check
def test_info_and_check_find_corrupt_file_and_train_val_duplicate(tmp_path, capsys):
    src = make_folder(tmp_path / "src", train_per_class=3, val_per_class=2)
    assert run_data("check", str(src), "--workers", "1") == 0
    capsys.readouterr()

    truncated = src / "train" / "dog" / "cut.jpg"
    plant_truncated_jpeg(truncated)
    noise = src / "val" / "frog" / "noise.jpg"
    noise.write_bytes(np.random.default_rng(3).bytes(300))
    leaked = src / "train" / "cat" / "cat_1.png"
    (src / "val" / "cat" / "copy_of_train.png").write_bytes(leaked.read_bytes())

    assert run_data("info", str(src), "--json", "--workers", "2") == 0
    report = json.loads(capsys.readouterr().out)
    assert sorted(Path(e["path"]).name for e in report["unreadable"]) == ["cut.jpg", "noise.jpg"]
    assert [(Path(d["train"]).name, Path(d["val"]).name) for d in report["duplicates_train_val"]] == [
        ("cat_1.png", "copy_of_train.png")
    ]
    assert report["splits"]["train"]["per_class"] == {"cat": 3, "dog": 4, "frog": 3}
    assert report["splits"]["val"]["per_class"] == {"cat": 3, "dog": 2, "frog": 3}
    assert report["splits"]["train"]["imbalance"] == pytest.approx(4 / 3)
    widths = report["splits"]["train"]["width"]
    assert 18 <= widths["min"] <= widths["median"] <= widths["max"] < 90
    assert report["splits"]["train"]["modes"] == {"RGB": 9}  # sizes and modes of decodable images

    assert run_data("info", str(src)) == 0  # the plain-text report names both findings
    text = capsys.readouterr().out
    assert (
        "cut.jpg" in text and "copy_of_train.png" in text and "2 unreadable, 1 train/val duplicates" in text
    )

    assert run_data("check", str(src), "--workers", "1") == 2
    out = capsys.readouterr().out
    assert "cut.jpg" in out and "noise.jpg" in out
    assert out.strip().splitlines()[-1].startswith("2 of 18 images unreadable")


def test_packed_info_and_check(tmp_path, capsys):
    src = make_folder(tmp_path / "src", train_per_class=2, val_per_class=1)
    leaked = src / "train" / "frog" / "frog_0.jpg"
    (src / "val" / "frog" / "dup.jpg").write_bytes(leaked.read_bytes())
    dst = tmp_path / "packed"
    assert run_data("pack", str(src), str(dst), "--img-size", "8", "--workers", "1") == 0
    capsys.readouterr()
    assert run_data("info", str(dst), "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "packed" and report["splits"]["val"]["per_class"] == {
        "cat": 1,
        "dog": 1,
        "frog": 2,
    }
    assert len(report["duplicates_train_val"]) == 1  # same source bytes -> identical packed rows
    assert run_data("check", str(dst)) == 0
    capsys.readouterr()

    images = dst / "train_images.npy"
    images.write_bytes(images.read_bytes()[:-100])  # a pack cut short by a full disk
    assert run_data("check", str(dst), "--json") == 2
    assert json.loads(capsys.readouterr().out)["unreadable"][0]["path"].endswith("train_images.npy")


# ----------------------------------------------------------------------------------------------- stats
def test_stats_exact_on_constant_colours(tmp_path, capsys):
    root = tmp_path / "flat"
    colours = {"a": [((255, 0, 0), (8, 8)), ((51, 102, 204), (4, 6))], "b": [((0, 0, 255), (8, 8))]}
    pixels = []
    for name, images in colours.items():
        (root / "train" / name).mkdir(parents=True)
        (root / "val" / name).mkdir(parents=True)
        for i, (colour, (w, h)) in enumerate(images):
            Image.new("RGB", (w, h), colour).save(root / "train" / name / f"{i}.png")
            pixels += [colour] * (w * h)
    expected = np.asarray(pixels, dtype=np.float64) / 255
    assert run_data("stats", str(root), "--json", "--workers", "1") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["mean"] == pytest.approx(expected.mean(0).tolist(), abs=1e-12)
    assert result["std"] == pytest.approx(expected.std(0).tolist(), abs=1e-12)
    assert result["pixels"] == len(pixels) and result["images"] == 3

    # Two equal-size images of 0 and 255 in each channel: mean and std are exactly 0.5.
    half = tmp_path / "half"
    for name, colour in (("black", (0, 0, 0)), ("white", (255, 255, 255))):
        (half / "train" / name).mkdir(parents=True)
        Image.new("RGB", (5, 7), colour).save(half / "train" / name / "x.png")
    assert run_data("stats", str(half), "--img-size", "4", "--workers", "1") == 0
    assert (
        capsys.readouterr().out.strip().splitlines()[-1]
        == "data.mean=[0.5000,0.5000,0.5000] data.std=[0.5000,0.5000,0.5000]"
    )


def test_stats_of_packed_dir_matches_folder_at_same_size(tmp_path, capsys):
    src = make_folder(tmp_path / "src", train_per_class=2, val_per_class=1)
    assert run_data("pack", str(src), str(tmp_path / "p"), "--img-size", "12", "--workers", "1") == 0
    capsys.readouterr()
    assert run_data("stats", str(src), "--img-size", "12", "--json", "--workers", "1") == 0
    folder = json.loads(capsys.readouterr().out)
    assert run_data("stats", str(tmp_path / "p"), "--json") == 0
    packed = json.loads(capsys.readouterr().out)
    assert packed["mean"] == pytest.approx(folder["mean"], abs=1e-12)
    assert packed["std"] == pytest.approx(folder["std"], abs=1e-12)


def test_cli_maps_missing_root_to_exit_2(tmp_path, capsys):
    from trainlab.commands.cli import main

    assert main(["data", "info", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and len(err.strip().splitlines()) == 1
