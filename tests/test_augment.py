"""aug.crop / aug.scale / aug.ratio / aug.hflip mean the same on every loader (tensor, torch DataLoader,
stream), measured from what the loaders yield: the stored images encode their own pixel coordinates,
so each output tells which box it was cut from and whether it was mirrored."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainlab.config import load_config
from trainlab.data import build_data
from trainlab.data.augment import AugPlan

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

CPU = torch.device("cpu")
LOADERS = ("tensor", "torch", "stream")
STEP = 6  # pixel value per pixel of position


def write_packed(root: Path, images: np.ndarray, labels: np.ndarray, val: int = 8) -> Path:
    """A packed folder as `trainlab data pack` writes it (meta.json + .npy arrays)."""
    root.mkdir(parents=True, exist_ok=True)
    classes = [f"c{i}" for i in range(int(labels.max()) + 1)]
    np.save(root / "train_images.npy", images)
    np.save(root / "train_labels.npy", labels.astype(np.int64))
    np.save(root / "val_images.npy", images[:val])
    np.save(root / "val_labels.npy", labels[:val].astype(np.int64))
    meta = {"format": "trainlab-packed-v1", "classes": classes, "img_size": images.shape[1],
            "splits": {"train": len(images), "val": val}}  # fmt: skip
    (root / "meta.json").write_text(json.dumps(meta))
    return root


def coordinate_images(n: int, size: int, offset: int = 0) -> np.ndarray:
    """R = (x + offset) * STEP, G = (y + offset) * STEP: a crop's pixels name its source position."""
    ramp = (np.arange(size) + offset) * STEP
    image = np.zeros((size, size, 3), dtype=np.uint8)
    image[..., 0] = ramp[None, :]
    image[..., 1] = ramp[:, None]
    image[..., 2] = 100
    return np.repeat(image[None], n, axis=0)


def epoch_pixels(root: Path, loader: str, *overrides: str) -> torch.Tensor:
    """One training epoch through build_data, as pixel values (normalisation set to the identity)."""
    cfg = load_config(None, [
        "data.name=packed", f"data.root={root}", f"data.loader={loader}", "data.batch_size=50",
        "data.mean=[0,0,0]", "data.std=[1,1,1]", "train.seed=3", *overrides,
    ])  # fmt: skip
    bundle = build_data(cfg, CPU)
    assert bundle.loader_kind == loader
    return torch.cat([x for x, _ in bundle.train.batches(0)]) * 255


def boxes_and_flips(px: torch.Tensor, src: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(area fraction, log aspect, flipped) of each output, from the slopes of its coordinate ramps."""
    out = px.shape[-1]
    r = px[:, 0].mean(dim=1)  # mean over rows: R along x
    g = px[:, 1].mean(dim=2)  # mean over columns: G along y
    slope_x = (r[:, -2] - r[:, 1]) / (out - 3)  # inner columns: no edge effects of the resampling
    slope_y = (g[:, -2] - g[:, 1]) / (out - 3)
    w = slope_x.abs() / STEP * out
    h = slope_y.abs() / STEP * out
    return w * h / src**2, torch.log(w / h), slope_x < 0


@pytest.fixture(scope="module")
def big_packed(tmp_path_factory) -> Path:  # 40 px stored, trained at 20 px: resized crops
    return write_packed(tmp_path_factory.mktemp("big") / "p", coordinate_images(120, 40), np.arange(120) % 2)


@pytest.fixture(scope="module")
def small_packed(tmp_path_factory) -> Path:  # 16 px stored and trained: pad-crops
    return write_packed(tmp_path_factory.mktemp("small") / "p", coordinate_images(120, 16, 1), np.arange(120) % 2)


def test_resized_crop_scale_ratio_and_flip_rate_agree_across_loaders(big_packed):
    stats = {}
    for loader in LOADERS:
        px = epoch_pixels(big_packed, loader, "data.img_size=20", "aug.crop=resized", "aug.scale=[0.25,0.5]",
                          "aug.ratio=[0.8,1.25]", "aug.hflip=0.3")  # fmt: skip
        assert px.shape == (120, 3, 20, 20)
        area, log_aspect, flipped = boxes_and_flips(px, 40)
        # Every box honours aug.scale and aug.ratio (a little slack for rounding box sides to pixels).
        assert area.min() > 0.2 and area.max() < 0.56, (loader, area.min(), area.max())
        assert log_aspect.abs().max() < math.log(1.25) + 0.12, loader
        stats[loader] = (area.mean().item(), flipped.float().mean().item())
    for mean_area, flip_rate in stats.values():
        assert abs(mean_area - 0.375) < 0.03, stats  # uniform in [0.25, 0.5]
        assert abs(flip_rate - 0.3) < 0.1, stats


def test_pad_crop_offsets_and_hflip_zero_agree_across_loaders(small_packed):
    for loader in LOADERS:
        px = epoch_pixels(small_packed, loader, "data.img_size=16", "aug.crop=pad", "aug.hflip=0")
        flipped = px[:, 0, 8, 9] < px[:, 0, 8, 7]  # centre pixels are never padding (pad 4)
        assert not flipped.any(), loader  # hflip=0 never flips
        # Centre pixel's R names its source column: offset = source - 8, uniform in [-pad, pad], pad 4.
        shift = (px[:, 0, 8, 8] / STEP).round() - 1 - 8
        counts = torch.bincount((shift + 4).long(), minlength=9)
        assert len(counts) == 9 and (counts > 3).all(), (loader, counts)  # every offset in -4..4, none beyond


def test_auto_crop_and_policy_none_compat(small_packed, big_packed):
    for loader in LOADERS:  # stored at the training size: auto picks pad-crop, and says so
        cfg = load_config(None, ["data.name=packed", f"data.root={small_packed}", f"data.loader={loader}"])
        assert "pad-crop 4 px" in build_data(cfg, CPU).summary
        # aug.policy=none still means the stored images untouched (no crop, no flip) on every loader
        px = epoch_pixels(small_packed, loader, "aug.policy=none")
        src = torch.from_numpy(coordinate_images(1, 16, 1)[0]).permute(2, 0, 1).float()
        assert torch.allclose(px, src.expand_as(px), atol=1e-3), loader
    cfg = load_config(None, ["data.name=packed", f"data.root={big_packed}", "data.img_size=20"])
    summary = build_data(cfg, CPU).summary
    assert "resized crop scale 0.08-1" in summary and "images are 40 px" in summary


def test_auto_crop_on_a_folder_of_small_images_is_a_pad_crop(tmp_path):
    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(coordinate_images(1, 32)[0]).save(tmp_path / split / c / f"{i}.png")
    cfg = load_config(None, ["data.name=folder", f"data.root={tmp_path}", "data.img_size=32", "data.batch_size=6"])
    bundle = build_data(cfg, CPU)
    assert "pad-crop 4 px to 32 px" in bundle.summary and "images are 32 px" in bundle.summary
    x, _ = next(bundle.train.batches(0))
    assert x.shape == (6, 3, 32, 32)


def test_a_folder_of_training_size_images_validates_on_the_whole_image_like_cifar(tmp_path):
    """With the pad-crop plan (images about data.img_size) val sees the stored pixels, as CIFAR/packed val
    does, not the ImageNet zoom (resize to 256/224 of the size, centre crop) that goes with resized crops."""
    image = coordinate_images(1, 32)[0]
    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            Image.fromarray(image).save(tmp_path / split / c / "0.png")
    common = ["data.name=folder", f"data.root={tmp_path}", "data.img_size=32", "data.batch_size=2",
              "data.mean=[0,0,0]", "data.std=[1,1,1]"]  # fmt: skip
    src = torch.from_numpy(image).permute(2, 0, 1).float()
    x, _ = next(build_data(load_config(None, common), CPU).val.batches(0))
    assert torch.allclose(x * 255, src.expand_as(x), atol=1e-3)
    x, _ = next(build_data(load_config(None, [*common, "aug.crop=resized"]), CPU).val.batches(0))
    assert not torch.allclose(x * 255, src.expand_as(x), atol=1e-3)  # resized crops keep the ImageNet val


def test_loaders_lay_batches_out_as_train_channels_last_says(tmp_path):
    """Issue 26 item 7: the batch loaders chose channels_last on CUDA (and plain NCHW on the CPU) whatever
    train.channels_last said. The decision, for a CUDA device too (only its type is read: no GPU needed) ..."""
    from tests.test_gpu_decode import jpeg_folder
    from trainlab.data import input_channels_last, load_raw
    from trainlab.data.gpu_decode import GpuJpegLoader

    for value, on_cuda, on_cpu in (("false", False, False), ("true", True, True), ("null", True, False)):
        cfg = load_config(None, [f"train.channels_last={value}"])
        assert (input_channels_last(cfg, torch.device("cuda")), input_channels_last(cfg, CPU)) == (on_cuda, on_cpu)
    # ... and every loader that lays batches out follows it, train and val (the torch loader's workers
    # make plain NCHW tensors; the Step lays them out)
    shapes = ["data.name=shapes", "data.train_size=32", "data.val_size=16", "data.img_size=16", "data.batch_size=8"]
    for loader, extra in (("tensor", []), ("tensor", ["aug.crop=resized"]), ("stream", [])):
        for on in (True, False):
            bundle = build_data(load_config(None, [*shapes, f"data.loader={loader}", f"train.channels_last={on}", *extra]), CPU)
            for split in (bundle.train, bundle.val):
                x, _ = next(iter(split.batches(0)))
                assert x.is_contiguous(memory_format=torch.channels_last) is on, (loader, extra, on)
                assert x.is_contiguous() is not on
            bundle.use_channels_last(not on)  # the run's model-aware answer, once the model is built
            assert next(iter(bundle.train.batches(0)))[0].is_contiguous(memory_format=torch.channels_last) is not on
    raw = load_raw(load_config(None, ["data.name=folder", f"data.root={jpeg_folder(tmp_path / 'jpeg', 2)}"]))
    for on in (True, False):
        gpu = GpuJpegLoader(raw.train, 2, CPU, True, 0, (0.0,) * 3, (1.0,) * 3, AugPlan("resized", 16, 0.5),
                            channels_last=on)  # fmt: skip
        assert next(iter(gpu.batches(0)))[0].is_contiguous(memory_format=torch.channels_last) is on
