"""The GPU JPEG decode path's host side, run on the CPU (decode_jpeg with device="cpu" is the same call):
when it is chosen and why not, which JPEGs nvjpeg would refuse, the batches it yields, and a corrupt JPEG
reported exactly as the CPU path reports it. The CUDA decode itself never ran here (no GPU)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainlab.config import load_config
from trainlab.data import build_data, load_raw
from trainlab.data.augment import AugPlan
from trainlab.data.gpu_decode import GpuJpegLoader, choose_gpu_decode, nvjpeg_supported
from trainlab.data.transforms import build_val_transform
from trainlab.errors import DataError

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")
CPU = torch.device("cpu")
CUDA = torch.device("cuda")


def jpeg_folder(root: Path, per_class: int = 5, extra: dict | None = None) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("a", "b"):
            folder = root / split / c
            folder.mkdir(parents=True)
            for i in range(per_class):
                h, w = (int(v) for v in rng.integers(24, 48, 2))
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.jpg", quality=90)
    for name, save in (extra or {}).items():
        save(root / "train" / "a" / name)
    return root


def cfg_for(root: Path, *extra: str):
    return load_config(None, ["data.name=folder", f"data.root={root}", "data.img_size=16", "data.batch_size=4", *extra])


def gpu_loader(root: Path, train: bool = True, **kw) -> GpuJpegLoader:
    raw = load_raw(cfg_for(root))
    return GpuJpegLoader(raw.train, 4, CPU, train, 3, (0.0,) * 3, (1.0,) * 3, AugPlan("resized", 16, 0.5), **kw)


def test_chosen_only_for_jpeg_folders_on_cuda_with_the_reason_printed(tmp_path):
    root = jpeg_folder(tmp_path / "d")
    files = load_raw(cfg_for(root)).train.files
    cfg = cfg_for(root)
    assert choose_gpu_decode(cfg, files, CPU) == (False, "no CUDA device")
    assert "GPU JPEG decode not used: no CUDA device" in build_data(cfg, CPU).summary
    use, why = choose_gpu_decode(cfg, [*files, str(tmp_path / "x.png")], CUDA)
    assert not use and "not JPEG (e.g." in why and "x.png" in why
    use, why = choose_gpu_decode(cfg_for(root, "aug.policy=randaugment"), files, CUDA)
    assert not use and "aug.policy=randaugment" in why


def test_header_check_tells_the_jpegs_nvjpeg_refuses(tmp_path):
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    cases = {"base.jpg": ({}, "RGB", True), "prog.jpg": ({"progressive": True}, "RGB", False),
             "cmyk.jpg": ({}, "CMYK", False), "grey.jpg": ({}, "L", True)}  # fmt: skip
    for name, (options, mode, expected) in cases.items():
        img.convert(mode).save(tmp_path / name, "JPEG", **options)
        assert nvjpeg_supported((tmp_path / name).read_bytes())[0] is expected, name
    assert nvjpeg_supported(b"\x89PNG\r\n\x1a\n....") == (False, "not a JPEG (no start-of-image marker)")


def test_batches_cover_the_split_deterministically_and_refused_jpegs_fall_back(tmp_path):
    img = Image.fromarray(np.random.default_rng(2).integers(0, 256, (30, 40, 3), dtype=np.uint8))
    extra = {"prog.jpg": lambda p: img.save(p, "JPEG", progressive=True),
             "cmyk.jpg": lambda p: img.convert("CMYK").save(p, "JPEG")}  # fmt: skip
    root = jpeg_folder(tmp_path / "d", extra=extra)
    ld = gpu_loader(root)
    batches = list(ld.batches(1))
    x = torch.cat([b for b, _ in batches])
    y = torch.cat([lab for _, lab in batches])
    raw = load_raw(cfg_for(root))
    assert x.shape == (12, 3, 16, 16) and len(ld) == 3
    assert torch.equal(y, torch.tensor([raw.train.labels[i] for i in ld.order.indices(1).tolist()]))
    assert sorted(Path(f).name for f, _ in ld.cpu_fallbacks) == ["cmyk.jpg", "prog.jpg"]
    again = torch.cat([b for b, _ in gpu_loader(root).batches(1, start=1)])
    assert torch.equal(again, x[4:])  # same (seed, epoch) and resumed at batch 1: the same pixels
    assert not torch.equal(torch.cat([b for b, _ in gpu_loader(root).batches(2)]), x)
    early = gpu_loader(root).batches(1)  # stopped after a batch: the read and decode threads end with it
    next(early)
    early.close()
    assert not any(t.name.startswith("trainlab-jpeg") for t in threading.enumerate())
    val = torch.cat([b for b, _ in gpu_loader(root, train=False).batches(0)])
    assert val.shape == (12, 3, 16, 16) and float(val.min()) >= 0 and float(val.max()) <= 1


def test_a_corrupt_jpeg_gets_the_cpu_paths_one_line_error(tmp_path):
    def zero_height(path: Path) -> None:  # passes the header check, fails in the decoder (batch fallback)
        Image.new("RGB", (32, 32), "red").save(path, "JPEG")
        data = bytearray(path.read_bytes())
        sof = data.find(b"\xff\xc0")
        data[sof + 5 : sof + 7] = b"\x00\x00"
        path.write_bytes(bytes(data))

    def truncated(path: Path) -> None:  # refused by the header check (CPU fallback)
        Image.new("RGB", (32, 32), "red").save(path, "JPEG")
        path.write_bytes(path.read_bytes()[:60])

    for name, damage in (("broken.jpg", zero_height), ("cut.jpg", truncated)):
        check_same_error(tmp_path / name, name, damage)


def check_same_error(where: Path, name: str, damage) -> None:
    root = jpeg_folder(where, per_class=2, extra={name: damage})
    with pytest.raises(DataError) as cpu_err:
        for _ in build_data(cfg_for(root, "data.loader=torch"), CPU).train.batches(1):
            pass
    with pytest.raises(DataError) as gpu_err:
        for _ in gpu_loader(root).batches(1):
            pass
    assert str(gpu_err.value) == str(cpu_err.value)
    assert name in str(gpu_err.value) and "\n" not in str(gpu_err.value)



def test_val_geometry_follows_the_plan_as_on_the_cpu_path(tmp_path):
    """A pad-crop plan validates on the whole image (transforms.val_geometry), resized crops on the ImageNet
    zoom: the same geometry as the CPU DataLoader's val transform, told apart on smooth ramps."""
    for i, (h, w) in enumerate(((18, 16), (16, 22), (20, 20))):
        folder = tmp_path / "d" / "val" / "a"
        folder.mkdir(parents=True, exist_ok=True)
        ramp = np.zeros((h, w, 3), dtype=np.uint8)
        ramp[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
        ramp[..., 1] = np.linspace(0, 255, h, dtype=np.uint8)[:, None]
        Image.fromarray(ramp).save(folder / f"{i}.jpg", quality=95)
    (tmp_path / "d" / "train").symlink_to(tmp_path / "d" / "val")
    raw = load_raw(cfg_for(tmp_path / "d"))
    cpu, gpu = {}, {}
    for crop in ("pad", "resized"):
        plan = AugPlan(crop, 16, 0.5)
        loader = GpuJpegLoader(raw.val, 3, CPU, False, 3, (0.0,) * 3, (1.0,) * 3, plan)
        gpu[crop] = torch.cat([b for b, _ in loader.batches(0)])
        tf = build_val_transform("folder", 16, (0.0,) * 3, (1.0,) * 3, plan)
        cpu[crop] = torch.stack([tf(raw.val.load(i)[0]) for i in range(len(raw.val))]).float() / 255  # uint8 from the worker
    for crop, other in (("pad", "resized"), ("resized", "pad")):
        same, wrong = (gpu[crop] - cpu[crop]).abs().mean(), (gpu[crop] - cpu[other]).abs().mean()
        assert same < 0.01 and wrong > 3 * same, (crop, float(same), float(wrong))


def test_val_crop_lands_where_the_dataloaders_does(tmp_path):
    """Issue 26 item 6: the centre box was rounded to whole source pixels and centred with floor division,
    where torchvision's Resize truncates the long side and CenterCrop rounds in resized pixels: a crop about a
    source pixel off. Ramps tell where each output pixel sampled (R = x, G = y, in source pixels x STEP)."""
    sizes = ((37, 53), (53, 37), (41, 43), (30, 61), (64, 45))
    step = 255 / 63
    folder = tmp_path / "d" / "val" / "a"
    folder.mkdir(parents=True)
    for i, (h, w) in enumerate(sizes):
        ramp = np.zeros((h, w, 3), dtype=np.uint8)
        ramp[..., 0] = np.round(np.arange(w) * step)[None, :]
        ramp[..., 1] = np.round(np.arange(h) * step)[:, None]
        Image.fromarray(ramp).save(folder / f"{i}.png")  # lossless: the pixels are the ramps
    (tmp_path / "d" / "train").symlink_to(folder.parent)
    raw = load_raw(cfg_for(tmp_path / "d"))
    decoded = [raw.val.load(i)[0] for i in range(len(sizes))]
    for crop in ("resized", "pad"):
        plan = AugPlan(crop, 16, 0.5)
        loader = GpuJpegLoader(raw.val, 8, CPU, False, 3, (0.0,) * 3, (1.0,) * 3, plan)
        ours = loader._augment(decoded, list(range(len(sizes))), 0) * 255
        tf = build_val_transform("folder", 16, (0.0,) * 3, (1.0,) * 3, plan)
        theirs = torch.stack([tf(image).float() for image in decoded])
        # interior pixels (the edge ones differ by the filters' footprint, not by the box), in source px
        offset = ((ours - theirs)[:, :2, 2:-2, 2:-2] / step).mean(dim=(2, 3)).abs()
        assert float(offset.max()) < 0.15, (crop, offset)
