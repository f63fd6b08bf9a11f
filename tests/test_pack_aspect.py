"""`trainlab data pack --keep-aspect` (issue 12): images stored with their short side at S and their aspect
kept, read back as variable-size images, streamed with each sample's crop drawn in its own bounds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import roi_align

from tests.cli_checks import run_in_process, run_subprocess
from tests.test_data_tools import plant_truncated_jpeg, run_data, smooth_image
from trainlab.config import load_config
from trainlab.data import build_data
from trainlab.data.augment import AugPlan
from trainlab.data.packed import VariableImages, load_packed
from trainlab.data.stream import StreamLoader
from trainlab.errors import ConfigError, DataError

CPU = torch.device("cpu")
IDENTITY = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
S = 16
# (width, height): landscape, portrait, square, a 3:1 panorama (cut to 2:1), odd aspects, one smaller than S
SIZES = [(40, 20), (20, 40), (30, 30), (90, 30), (25, 33), (61, 47), (12, 20), (33, 70), (50, 23)]


def make_aspect_folder(root: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    k = 0
    for split, count in per_class.items():
        for name in ("a", "b"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                width, height = SIZES[k % len(SIZES)]
                k += 1
                fmt, ext = ("PNG", ".png") if i % 2 else ("JPEG", ".jpg")
                Image.fromarray(smooth_image(rng, width, height)).save(folder / f"{i:02d}{ext}", fmt, quality=95)
    return root


@pytest.fixture(scope="module")
def packs(tmp_path_factory):
    """One folder (11 + 11 train, 4 + 4 val images of varied sizes) packed both ways at S = 16."""
    base = tmp_path_factory.mktemp("aspect")
    src = make_aspect_folder(base / "src", {"train": 11, "val": 4})
    assert run_data("pack", str(src), str(base / "ka"), "--img-size", str(S), "--keep-aspect", "--workers", "2") == 0
    assert run_data("pack", str(src), str(base / "sq"), "--img-size", str(S), "--workers", "1") == 0
    return src, base / "ka", base / "sq"


def files_of(src: Path, split: str) -> list[Path]:
    return sorted((p for p in (src / split).rglob("*") if p.is_file()), key=lambda p: (p.parent.name, p))


def stream(images, plan, **kw) -> StreamLoader:
    args = dict(batch_size=4, device=CPU, train=True, seed=3, block_bytes=4000, window_blocks=2)
    args.update(kw)
    return StreamLoader(images, np.arange(len(images)), plan=plan, **IDENTITY, **args)


def epoch(ld: StreamLoader, e: int, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*ld.batches(e, start))
    return torch.cat(xs), torch.cat(ys)


# ------------------------------------------------------------------------------------------------ pack
def test_keep_aspect_pack_stores_torchvision_resize_sizes_and_pixels(packs):
    from torchvision.transforms.v2 import functional as F

    src, ka, _ = packs
    meta = json.loads((ka / "meta.json").read_text())
    assert meta["layout"] == "short-side" and meta["max_aspect"] == 2.0 and meta["img_size"] == S
    assert meta["splits"] == {"train": 22, "val": 8}
    arrays = load_packed(ka)
    assert arrays.layout == "short-side"
    for split, images in (("train", arrays.train_images), ("val", arrays.val_images)):
        files = files_of(src, split)
        assert len(images) == len(files)
        for i, path in enumerate(files):
            ref = F.resize(Image.open(path).convert("RGB"), S)  # torchvision's Resize(S) arithmetic
            ref_w, ref_h = ref.size
            cap = 2 * S
            want = (min(ref_h, cap), min(ref_w, cap))
            assert images[i].shape == (*want, 3), (path, ref.size)
            assert min(images[i].shape[:2]) == S
            ref = np.asarray(F.center_crop(ref, list(want)))  # only a long side over 2 S is cut
            assert np.abs(images[i].astype(int) - ref).mean() < 2.5, path
    # the 90x30 panorama: resized to 48x16, centre-cropped to 32x16; --max-aspect 4 keeps it whole
    assert arrays.train_images[3].shape == (16, 32, 3)


def test_max_aspect_and_its_checks(tmp_path):
    src = make_aspect_folder(tmp_path / "src", {"train": 4, "val": 1})
    assert run_data("pack", str(src), str(tmp_path / "wide"), "--img-size", "8", "--keep-aspect", "--max-aspect", "4", "--workers", "1") == 0  # fmt: skip
    shapes = [VariableImages.__getitem__(load_packed(tmp_path / "wide").train_images, i).shape for i in range(4)]
    assert (8, 24, 3) in shapes  # 90x30 -> 24x8, within 4 x 8
    from trainlab.errors import UsageError

    with pytest.raises(UsageError, match="--keep-aspect"):
        run_data("pack", str(src), str(tmp_path / "x"), "--img-size", "8", "--max-aspect", "3")
    with pytest.raises(UsageError, match="at least 1"):
        run_data("pack", str(src), str(tmp_path / "x"), "--img-size", "8", "--keep-aspect", "--max-aspect", "0.5")
    assert not (tmp_path / "x").exists()


def test_interrupted_keep_aspect_pack_leaves_nothing_and_skip_bad_compacts(tmp_path):
    src = make_aspect_folder(tmp_path / "src", {"train": 3, "val": 1})
    (src / "val" / "b" / "noise.jpg").write_bytes(np.random.default_rng(1).bytes(300))  # header unreadable
    with pytest.raises(DataError, match="noise.jpg.*--skip-bad"):  # found by the size pass, before DST exists
        run_data("pack", str(src), str(tmp_path / "dst"), "--img-size", "8", "--keep-aspect", "--workers", "1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    plant_truncated_jpeg(src / "train" / "a" / "01b.jpg")  # header fine: fails while decoding, mid-pack
    (src / "val" / "b" / "noise.jpg").rename(tmp_path / "noise.jpg")
    with pytest.raises(DataError, match="01b.jpg.*--skip-bad"):
        run_data("pack", str(src), str(tmp_path / "dst"), "--img-size", "8", "--keep-aspect", "--workers", "2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["noise.jpg", "src"]  # no DST, no DST.tmp-<pid>
    (tmp_path / "noise.jpg").rename(src / "val" / "b" / "noise.jpg")

    good = run_data("pack", str(src), str(tmp_path / "dst"), "--img-size", "8", "--keep-aspect", "--skip-bad", "--workers", "1")  # fmt: skip
    assert good == 0
    arrays = load_packed(tmp_path / "dst")
    assert len(arrays.train_images) == 6 and len(arrays.val_images) == 2
    # the compacted pixels: image after the skipped one is the next file, and the offsets are back to back
    index = arrays.train_images.index
    assert index[0, 0] == 0 and (index[1:, 0] == index[:-1, 0] + index[:-1, 1] * index[:-1, 2] * 3).all()
    assert len(arrays.train_images.pixels) == arrays.train_images.nbytes
    from torchvision.transforms.v2 import functional as F

    after = [p for p in sorted((src / "train" / "a").iterdir()) if p.name != "01b.jpg"][2]  # 02.jpg
    ref = np.asarray(F.resize(Image.open(after).convert("RGB"), 8))
    got = arrays.train_images[2]
    assert got.shape == ref.shape and np.abs(got.astype(int) - ref).mean() < 3


# ---------------------------------------------------------------------------------------------- reader
def test_damaged_pack_is_a_one_line_error(packs, tmp_path):
    _, ka, _ = packs
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in ka.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    index = np.load(bad / "train_index.npy")
    index[5, 0] = 10**9  # points past the pixel file
    np.save(bad / "train_index.npy", index)
    with pytest.raises(DataError, match="image 5 .* outside train_pixels.npy"):
        load_packed(bad)
    np.save(bad / "train_index.npy", np.load(ka / "train_index.npy"))
    np.save(bad / "val_labels.npy", np.load(ka / "val_labels.npy") + 5)
    with pytest.raises(DataError, match="labels range"):
        load_packed(bad)


def test_truncated_pixel_file_exits_2_with_one_line(packs, tmp_path):
    _, ka, _ = packs
    bad = tmp_path / "cut"
    bad.mkdir()
    for f in ka.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    data = (bad / "train_pixels.npy").read_bytes()
    (bad / "train_pixels.npy").write_bytes(data[: len(data) - 500])
    result = run_in_process(["train", "data.name=packed", f"data.root={bad}", "model.name=resnet8",
                             "train.epochs=1", "run.tensorboard=false", "run.progress=none"], tmp_path)  # fmt: skip
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "train_pixels.npy" in lines[0] and "pack" in lines[0]
    assert run_in_process(["data", "check", str(bad)], tmp_path).returncode == 2


def test_info_check_stats_read_the_layout(packs, capsys):
    _, ka, _ = packs
    assert run_data("info", str(ka), "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["layout"] == "short-side"
    train = report["splits"]["train"]
    assert train["images"] == 22 and train["width"]["min"] == 16 and train["width"]["max"] == 32
    assert run_data("check", str(ka), "--json") == 0
    assert json.loads(capsys.readouterr().out)["unreadable"] == []
    assert run_data("stats", str(ka), "--json") == 0
    stats = json.loads(capsys.readouterr().out)
    arrays = load_packed(ka)
    pixels = np.concatenate([arrays.train_images[i].reshape(-1, 3) for i in range(22)]) / 255
    assert stats["pixels"] == len(pixels)
    assert np.allclose(stats["mean"], pixels.mean(0)) and np.allclose(stats["std"], pixels.std(0))


# ---------------------------------------------------------------------------------------------- loader
def constant_images(tmp_path: Path, sizes: list[tuple[int, int]]) -> tuple[VariableImages, np.ndarray]:
    """Images of the given (h, w), each one constant colour, as a real flat .npy (read with pread)."""
    colours = np.random.default_rng(2).integers(20, 236, (len(sizes), 3)).astype(np.uint8)
    parts, index, offset = [], [], 0
    for (h, w), colour in zip(sizes, colours):
        parts.append(np.broadcast_to(colour, (h, w, 3)).reshape(-1))
        index.append((offset, h, w))
        offset += h * w * 3
    np.save(tmp_path / "pixels.npy", np.concatenate(parts))
    pixels = np.load(tmp_path / "pixels.npy", mmap_mode="r")
    return VariableImages(pixels, np.asarray(index, dtype=np.int64)), colours


def test_resized_crops_stay_inside_each_sample_and_match_per_image_roi_align(tmp_path, packs):
    rng = np.random.default_rng(0)
    sizes = [(int(rng.integers(8, 40)), int(rng.integers(8, 40))) for _ in range(37)]
    images, colours = constant_images(tmp_path, sizes)
    plan = AugPlan("resized", 10, 0.5, scale=(0.05, 1.0), ratio=(0.3, 3.0))
    ld = stream(images, plan)
    idx, params = ld._epoch(0)
    h, w = torch.tensor(sizes)[idx].unbind(1)
    assert (params.y >= 0).all() and (params.x >= 0).all()
    assert (params.y + params.h <= h).all() and (params.x + params.w <= w).all()
    assert ((params.h < h) | (params.w < w)).any()  # real crops, not just whole images
    x, y = epoch(ld, 0)
    assert torch.equal(y, idx)
    # a constant image gives its colour everywhere: nothing of the padding or of a neighbour leaks in
    want = torch.from_numpy(colours[y.numpy()]).float().view(-1, 3, 1, 1)
    assert (x * 255 - want).abs().max() < 1e-3

    # on real content, each crop is the same roi_align as on the image alone (edges included)
    _, ka, _ = packs
    real = load_packed(ka).train_images
    ld = stream(real, AugPlan("resized", 12, 0.0, scale=(0.2, 1.0)))
    idx, params = ld._epoch(1)
    x, y = epoch(ld, 1)
    for k in range(len(y)):
        image = torch.from_numpy(np.array(real[int(y[k])])).permute(2, 0, 1)[None].float()
        top, left, bh, bw = (int(v) for v in (params.y[k], params.x[k], params.h[k], params.w[k]))
        box = torch.tensor([[0.0, left, top, left + bw, top + bh]])
        ref = roi_align(image, box, 12, 1.0, -1, True)[0]
        assert torch.allclose(x[k] * 255, ref, atol=1e-3), k


@pytest.mark.parametrize("world_size", [1, 2])
def test_each_sample_once_sharded_with_padding(packs, world_size):
    _, ka, _ = packs
    images = load_packed(ka).train_images  # 22 images; 3 ranks would pad, 2 do not: use 21 of them
    sub = VariableImages(images.pixels, images.index[:21])
    plan = AugPlan("resized", 8, 0.5)
    per_rank = [epoch(stream(sub, plan, rank=r, world_size=world_size), 4)[1] for r in range(world_size)]
    assert {len(y) for y in per_rank} == {-(-21 // world_size)}
    seen = torch.cat(per_rank)
    assert set(seen.tolist()) == set(range(21))
    assert len(seen) == -(-21 // world_size) * world_size  # only DistributedSampler's padding repeats
    val = torch.cat([epoch(stream(sub, plan, rank=r, world_size=world_size, train=False), 0)[1] for r in range(world_size)])
    assert sorted(val.tolist()) == list(range(21))
    ld = stream(sub, plan)
    assert len(ld._bounds) - 1 > 3  # several byte-sized blocks, so the order is really quasi-random


def test_deterministic_and_resumes_at_a_batch(packs):
    _, ka, _ = packs
    images = load_packed(ka).train_images
    plan = AugPlan("resized", 12, 0.5, scale=(0.3, 1.0))
    x0, y0 = epoch(stream(images, plan), 2)
    x1, y1 = epoch(stream(images, plan), 2)
    assert torch.equal(x0, x1) and torch.equal(y0, y1)
    assert not torch.equal(epoch(stream(images, plan), 3)[1], y0)
    xr, yr = epoch(stream(images, plan), 2, start=3)
    assert torch.equal(yr, y0[12:]) and torch.equal(xr, x0[12:])


def test_pad_and_none_crops_take_the_centre_square(packs):
    _, ka, sq = packs
    ka_images, sq_images = load_packed(ka).train_images, load_packed(sq).train_images
    square = torch.from_numpy(np.array(sq_images)).permute(0, 3, 1, 2).float()
    x, y = epoch(stream(ka_images, AugPlan("none", S, 0.0)), 0)
    assert torch.allclose(x * 255, square[y], atol=1e-3)  # the centre square at the stored size: exact
    ld = stream(ka_images, AugPlan("pad", S, 0.0, pad=2))
    idx, params = ld._epoch(0)
    x, y = epoch(ld, 0)
    padded = torch.nn.functional.pad(square, (2, 2, 2, 2))
    for k in range(len(y)):
        ref = padded[y[k], :, params.y[k] : params.y[k] + S, params.x[k] : params.x[k] + S]
        assert torch.allclose(x[k] * 255, ref, atol=1e-3)


def val_pixels(root: Path, size: int) -> torch.Tensor:
    cfg = load_config(None, ["data.name=packed", f"data.root={root}", "data.loader=stream", f"data.img_size={size}",
                             "data.batch_size=4", "data.mean=[0,0,0]", "data.std=[1,1,1]"])  # fmt: skip
    return torch.cat([x for x, _ in build_data(cfg, CPU).val.batches(0)]) * 255


@pytest.mark.parametrize("size", [S, 12])
def test_val_matches_the_square_pack(packs, size):
    _, ka, sq = packs
    ours, square = val_pixels(ka, size), val_pixels(sq, size)
    assert ours.shape == square.shape == (8, 3, size, size)
    if size == S:
        assert torch.allclose(ours, square, atol=1e-3)
    else:  # roi_align vs antialiased interpolate of the same square: interpolation rounding only
        assert (ours - square).abs().mean() < 2.0, (ours - square).abs().mean()


def test_loader_choice(packs):
    _, ka, _ = packs
    base = ["data.name=packed", f"data.root={ka}", "data.batch_size=4"]
    bundle = build_data(load_config(None, base), CPU)
    assert bundle.loader_kind == "stream" and "variable-size images: stream" in bundle.summary
    # a keep-aspect pack is stored for random resized crops: auto gives them, even at the packed size
    assert "resized crop scale 0.08-1" in bundle.summary and "keep-aspect pack" in bundle.summary
    pad = build_data(load_config(None, [*base, "aug.crop=pad"]), CPU)
    assert "pad-crop" in pad.summary
    with pytest.raises(ConfigError, match="data.loader=stream"):
        build_data(load_config(None, [*base, "data.loader=tensor"]), CPU)
    torch_bundle = build_data(load_config(None, [*base, "data.loader=torch", "data.img_size=12"]), CPU)
    x, y = next(iter(torch_bundle.train.batches(0)))
    assert x.shape == (4, 3, 12, 12)
    xv, _ = next(iter(torch_bundle.val.batches(0)))
    assert xv.shape == (4, 3, 12, 12)


def test_train_end_to_end_from_a_keep_aspect_pack(packs, tmp_path):
    _, ka, _ = packs
    result = run_subprocess(["train", "data.name=packed", f"data.root={ka}", "model.name=resnet8",
                             "train.epochs=1", "data.batch_size=8", "train.threads=1", "run.tensorboard=false",
                             "run.progress=none"], tmp_path, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("data: "))
    assert "stream loader (variable-size images: stream)" in line


def test_keep_aspect_pack_shows_progress_with_eta(tmp_path, capsys):
    from trainlab.data.pack import pack_folder

    src = make_aspect_folder(tmp_path / "src", {"train": 2, "val": 1})
    result = pack_folder(src, tmp_path / "dst", 8, show_progress=True, keep_aspect=True)
    assert result["layout"] == "short-side" and result["splits"] == {"train": 4, "val": 2}
    err = capsys.readouterr().err
    for phase in ("sizes train", "pack train", "sizes val", "pack val"):
        assert phase in err, err
    assert "0:00:00" in err or "-:--:--" in err  # rich's time-remaining column
