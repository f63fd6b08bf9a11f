"""The streaming packed loader: each sample once per epoch (also sharded, uneven), the order a pure function
of (seed, epoch), resume at a batch, crops/flips as the reference ops, and never copying a set larger than
the memory budget."""

from __future__ import annotations

import gc
import threading

import numpy as np
import psutil
import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align
from torchvision.transforms.v2 import functional as TF

from tests.test_augment import write_packed
from trainlab.config import load_config
from trainlab.data import build_data
from trainlab.data.augment import AugPlan
from trainlab.data.stream import StreamLoader

CPU = torch.device("cpu")
IDENTITY = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


@pytest.fixture(scope="module")
def packed_file(tmp_path_factory):
    """101 random 12 px images in a real .npy file, opened as packed data is (a memory map)."""
    path = tmp_path_factory.mktemp("stream") / "images.npy"
    images = np.random.default_rng(0).integers(0, 256, (101, 12, 12, 3), dtype=np.uint8)
    np.save(path, images)
    return np.load(path, mmap_mode="r"), images


def stream(mm, plan=None, **kw) -> StreamLoader:
    args = dict(batch_size=16, device=CPU, train=True, seed=5, block_bytes=12 * 12 * 3 * 7, window_blocks=3)
    args.update(kw)
    plan = plan or AugPlan("none", 12, 0.0)
    return StreamLoader(mm, np.arange(len(mm)), plan=plan, **IDENTITY, **args)


def epoch(ld: StreamLoader, e: int, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*ld.batches(e, start))
    return torch.cat(xs), torch.cat(ys)


def pixels(x: torch.Tensor) -> torch.Tensor:
    return (x * 255).round().to(torch.uint8)


def test_each_sample_once_with_its_own_image_and_shuffled(packed_file):
    mm, images = packed_file
    x, y = epoch(stream(mm), 0)
    assert sorted(y.tolist()) == list(range(101))
    assert torch.equal(pixels(x), torch.from_numpy(images[y.numpy()]).permute(0, 3, 1, 2))
    assert y.tolist() != list(range(101))
    # quasi-random, not just block order: consecutive samples are rarely consecutive in the file
    assert (y[1:] - y[:-1] == 1).float().mean() < 0.2


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_cover_the_set_once_padded_like_distributed_sampler(packed_file, world_size):
    mm, _ = packed_file
    per_rank = [epoch(stream(mm, rank=r, world_size=world_size), 1)[1] for r in range(world_size)]
    counts = {len(y) for y in per_rank}
    assert counts == {-(-101 // world_size)}  # same count on every rank (101 is uneven for both)
    seen = torch.cat(per_rank)
    assert set(seen.tolist()) == set(range(101))
    assert len(seen) - 101 == -(-101 // world_size) * world_size - 101  # only the padding repeats
    # val: every sample exactly once over the ranks, no padding
    val = torch.cat([epoch(stream(mm, rank=r, world_size=world_size, train=False), 0)[1] for r in range(world_size)])
    assert sorted(val.tolist()) == list(range(101))


def test_order_is_a_function_of_seed_and_epoch_and_resumes_at_a_batch(packed_file):
    mm, _ = packed_file
    plan = AugPlan("resized", 10, 0.5, scale=(0.3, 1.0))
    x0, y0 = epoch(stream(mm, plan), 2)
    x1, y1 = epoch(stream(mm, plan), 2)
    assert torch.equal(x0, x1) and torch.equal(y0, y1)
    assert not torch.equal(epoch(stream(mm, plan), 3)[1], y0)
    assert not torch.equal(epoch(stream(mm, plan, seed=6), 2)[1], y0)
    xr, yr = epoch(stream(mm, plan), 2, start=3)  # resume at batch 3: the same batches as uninterrupted
    assert torch.equal(yr, y0[48:]) and torch.equal(xr, x0[48:])


def test_crops_and_flips_match_the_reference_ops(packed_file):
    mm, images = packed_file
    src = torch.from_numpy(images).permute(0, 3, 1, 2)
    # pad-crop: the window of the zero-padded image at the drawn offset, mirrored when drawn
    ld = stream(mm, AugPlan("pad", 12, 0.5, pad=2))
    idx, params = ld._epoch(0)
    x, y = epoch(ld, 0)
    padded = F.pad(src, (2, 2, 2, 2))
    assert torch.equal(y, idx)
    assert 0.3 < params.flip.float().mean() < 0.7
    for k in range(len(y)):
        ref = padded[y[k], :, params.y[k] : params.y[k] + 12, params.x[k] : params.x[k] + 12]
        assert torch.equal(pixels(x[k]), ref.flip(2) if params.flip[k] else ref)
    # resized crop: torchvision's resized_crop of the drawn box (bilinear, antialiased), within rounding
    ld = stream(mm, AugPlan("resized", 8, 0.0, scale=(0.4, 1.0)))
    idx, params = ld._epoch(0)
    x, y = epoch(ld, 0)
    smooth = TF.gaussian_blur(src.float(), [5, 5], [2.0, 2.0])  # random pixels alias; smooth ones compare
    for k in range(0, len(y), 5):
        i, top, left, h, w = int(y[k]), int(params.y[k]), int(params.x[k]), int(params.h[k]), int(params.w[k])
        box = torch.tensor([[0.0, left, top, left + w, top + h]])
        # the loader yields exactly this box of its image at 8 px ...
        assert torch.allclose(x[k] * 255, roi_align(src[i][None].float(), box, 8, 1.0, -1, True)[0], atol=1e-3)
        # ... and that resampling is torchvision's resized_crop up to interpolation detail
        ref = TF.resized_crop(smooth[i], top, left, h, w, [8, 8], antialias=True)
        ours = roi_align(smooth[i][None], box, 8, 1.0, -1, True)[0]
        assert (ours - ref).abs().mean() < 4, (k, (ours - ref).abs().mean())


def test_a_packed_set_larger_than_the_budget_streams_and_keeps_memory_bounded(tmp_path):
    """61 MB of training images, data.memory_budget_gb=0.012: auto streams, and a whole epoch raises the
    process's resident memory by far less than the data (a copy would add all 61 MB, and more). What it
    does add is the batch pipeline's working set (~15 MB here: buffers and augmentation temporaries)."""
    n, size = 5000, 64
    root = tmp_path / "big"
    root.mkdir()
    out = np.lib.format.open_memmap(root / "train_images.npy", mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
    for first in range(0, n, 500):  # written in chunks; the map is dropped before measuring
        out[first : first + 500] = np.random.default_rng(first).integers(0, 256, (min(500, n - first), size, size, 3), dtype=np.uint8)  # fmt: skip
    out.flush()
    del out
    small = np.random.default_rng(1).integers(0, 256, (8, size, size, 3), dtype=np.uint8)
    write_packed(tmp_path / "small", small, np.arange(8) % 4)  # val split and metadata from a small set
    for name in ("val_images.npy", "val_labels.npy"):
        (root / name).write_bytes((tmp_path / "small" / name).read_bytes())
    np.save(root / "train_labels.npy", np.arange(n) % 4)
    meta = (tmp_path / "small" / "meta.json").read_text().replace('"train": 8', f'"train": {n}')
    (root / "meta.json").write_text(meta)
    gc.collect()

    cfg = load_config(None, ["data.name=packed", f"data.root={root}", "data.memory_budget_gb=0.012",
                             "data.batch_size=32", "data.img_size=64"])  # fmt: skip
    bundle = build_data(cfg, CPU)
    assert bundle.loader_kind == "stream", bundle.summary
    assert "exceed data.memory_budget_gb=0.012: streaming" in bundle.summary
    process = psutil.Process()
    batches = bundle.train.batches(0)
    next(batches)  # the first batch maps code and warms allocators; the growth that matters comes after
    before = process.memory_info().rss
    peak, seen = before, 32
    for x, y in batches:
        peak = max(peak, process.memory_info().rss)
        seen += len(y)
        assert x.shape[1:] == (3, 64, 64)
    assert seen == n
    grew_mb = (peak - before) / 2**20
    assert grew_mb < 25, f"resident memory grew {grew_mb:.1f} MB streaming a 61 MB set"
    # and the same set with room to spare is copied (the tensor loader), so the choice is the budget's
    roomy = load_config(None, ["data.name=packed", f"data.root={root}", "data.memory_budget_gb=1"])
    assert build_data(roomy, CPU).loader_kind == "tensor"


def test_stopping_early_ends_the_reader_thread(packed_file):
    mm, _ = packed_file
    ld = stream(mm, batch_size=4)
    it = ld.batches(0)
    next(it)
    it.close()
    assert not any(t.name == "trainlab-stream" for t in threading.enumerate())

