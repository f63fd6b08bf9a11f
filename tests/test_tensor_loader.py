"""The in-memory tensor loader: same images as the dataset, torchvision's crop/flip semantics, order a pure
function of (seed, epoch), resumable at a batch, DDP shards that cover the set."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from trainlab.data.tensor_loader import TensorLoader

MEAN = (0.4, 0.5, 0.6)
STD = (0.2, 0.25, 0.3)
CPU = torch.device("cpu")


def dataset(n: int = 90, size: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=g)
    return images, torch.arange(n)  # label = index: tells which source image a sample came from


def loader(images, labels, **kw) -> TensorLoader:
    args = dict(batch_size=16, device=CPU, train=True, seed=7, mean=MEAN, std=STD)
    args.update(kw)
    return TensorLoader(images, labels, **args)


def epoch(ld: TensorLoader, e: int, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*ld.batches(e, start))
    return torch.cat(xs), torch.cat(ys)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Undo the normalisation: back to the uint8 pixels (NCHW)."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return ((x * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)


def test_epoch_is_a_permutation_of_the_dataset_with_labels_following_images():
    images, _ = dataset()
    labels = torch.randint(0, 10, (len(images),), generator=torch.Generator().manual_seed(1))
    ld = loader(images, labels, pad=0, flip=False)
    x, y = epoch(ld, 0)
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (90, 3, 12, 12)
    source = {bytes(images[i].permute(2, 0, 1).contiguous().numpy()): i for i in range(len(images))}
    seen = [source[bytes(img.numpy())] for img in to_uint8(x)]  # KeyError: an image not in the dataset
    assert sorted(seen) == list(range(len(images)))  # each exactly once
    assert torch.equal(y, labels[torch.tensor(seen)])
    assert seen != list(range(len(images)))  # shuffled


def test_normalisation_matches_torchvision():
    images, labels = dataset(n=20)
    x, y = epoch(loader(images, labels, train=False), 0)
    ref = TF.normalize(
        TF.to_dtype(images.permute(0, 3, 1, 2), torch.float32, scale=True), list(MEAN), list(STD)
    )
    torch.testing.assert_close(x, ref[y], atol=1e-5, rtol=0)


def test_every_sample_is_a_crop_of_the_zero_padded_image_or_its_mirror():
    images, labels = dataset(n=40)
    x, y = epoch(loader(images, labels, pad=3, flip=True), 0)
    padded = F.pad(images.permute(0, 3, 1, 2), (3, 3, 3, 3))
    pixels = to_uint8(x)
    offsets, flipped = set(), 0
    for out, i in zip(pixels, y.tolist()):
        crops = [(oy, ox, padded[i, :, oy : oy + 12, ox : ox + 12]) for oy in range(7) for ox in range(7)]
        matches = [
            (oy, ox, f)
            for oy, ox, c in crops
            for f in (False, True)
            if torch.equal(c.flip(2) if f else c, out)
        ]
        assert matches, f"sample of image {i} is not a (flipped) crop of its padded image"
        offsets.add(matches[0][:2])
        flipped += matches[0][2]
    assert len(offsets) > 10  # offsets drawn per sample, not one per batch
    assert 5 < flipped < 35  # about half mirrored


def test_crop_and_flip_match_torchvision_for_the_drawn_offsets():
    images, labels = dataset(n=48)
    ld = loader(images, labels, pad=4, flip=True)
    indices, crop_y, crop_x, flips = ld.epoch_plan(3)
    x, y = epoch(ld, 3)
    assert torch.equal(y, labels[indices])
    for out, i, oy, ox, f in zip(x, indices.tolist(), crop_y.tolist(), crop_x.tolist(), flips.tolist()):
        img = images[i].permute(2, 0, 1)
        ref = TF.crop(img, oy - 4, ox - 4, 12, 12)  # torchvision zero-fills outside the image
        if f:
            ref = TF.horizontal_flip(ref)
        ref = TF.normalize(TF.to_dtype(ref, torch.float32, scale=True), list(MEAN), list(STD))
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    assert flips.any() and not flips.all() and len(set(zip(crop_y.tolist(), crop_x.tolist()))) > 10


def test_order_and_augmentation_are_a_function_of_seed_and_epoch():
    images, labels = dataset()
    a, b = loader(images, labels), loader(images, labels)
    xa, ya = epoch(a, 2)
    xb, yb = epoch(b, 2)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    x_next, y_next = epoch(a, 3)
    assert not torch.equal(ya, y_next)
    x_other, y_other = epoch(loader(images, labels, seed=8), 2)
    assert not torch.equal(ya, y_other)


@pytest.mark.parametrize("start", [0, 1, 4, 5, 6])
def test_batches_from_k_are_the_tail_of_the_epoch(start):
    images, labels = dataset()  # 90 samples, batch 16: 6 batches, last one 10
    ld = loader(images, labels)
    full = list(ld.batches(5))
    tail = list(ld.batches(5, start))
    assert len(full) == 6 and len(tail) == 6 - start
    for (xf, yf), (xt, yt) in zip(full[start:], tail):
        assert torch.equal(xf, xt) and torch.equal(yf, yt)


def test_eval_keeps_order_and_the_tail_batch():
    images, labels = dataset(n=50)
    ld = loader(images, labels, train=False, batch_size=16)
    assert len(ld) == 4 and ld.num_samples == 50
    sizes = [len(y) for _, y in ld.batches(0)]
    assert sizes == [16, 16, 16, 2]
    x, y = epoch(ld, 9)
    assert torch.equal(y, torch.arange(50))
    assert torch.equal(to_uint8(x), images.permute(0, 3, 1, 2))  # no augmentation


def test_drop_last_applies_to_training_only():
    images, labels = dataset(n=50)
    assert len(loader(images, labels, drop_last=True)) == 3
    assert sum(len(y) for _, y in loader(images, labels, drop_last=True).batches(0)) == 48
    assert len(loader(images, labels, drop_last=True, train=False)) == 4


def test_ddp_shards_cover_the_dataset():
    images, labels = dataset(n=50)
    ws = 3
    train = [loader(images, labels, rank=r, world_size=ws, batch_size=8) for r in range(ws)]
    assert len({len(ld) for ld in train}) == 1  # equal step counts per rank, or DDP hangs
    assert all(ld.num_samples == math.ceil(50 / ws) for ld in train)
    got = torch.cat([epoch(ld, 1)[1] for ld in train])
    assert len(got) == 51 and set(got.tolist()) == set(
        range(50)
    )  # one sample repeated, as DistributedSampler
    val = [loader(images, labels, rank=r, world_size=ws, batch_size=8, train=False) for r in range(ws)]
    shards = [epoch(ld, 0)[1] for ld in val]
    assert torch.equal(shards[1], torch.arange(1, 50, 3))
    assert sorted(torch.cat(shards).tolist()) == list(range(50))  # each exactly once, no padding


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_matches_cpu_bitwise_order_and_close_values():
    images, labels = dataset()
    x_cpu, y_cpu = epoch(loader(images, labels), 4)
    x_gpu, y_gpu = epoch(loader(images, labels, device=torch.device("cuda")), 4)
    assert torch.equal(y_cpu, y_gpu.cpu())
    torch.testing.assert_close(x_cpu, x_gpu.cpu(), atol=1e-5, rtol=0)


def test_the_start_line_says_num_workers_is_unused_without_the_dataloader(tmp_path):
    """The README's sweep over data.num_workers=0,2 ran the tensor loader, which has no worker processes, and
    said nothing. A run on in-memory data with workers set says on its start line that they are unused and
    which loader uses them; the DataLoader path takes them and says nothing of the kind."""
    from tests.cli_checks import TINY_RUN, run_in_process
    from tests.conftest import TINY
    from trainlab.config import load_config
    from trainlab.data import build_data

    result = run_in_process(["train", *TINY_RUN, "train.max_steps_per_epoch=1", "data.num_workers=2", "run.dir=run"],
                            tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    start = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("data: tensor loader")]
    assert start and ("data.num_workers=2 is unused by the tensor loader (it has no worker processes); "
                      "data.loader=torch runs the DataLoader with them") in start[0], result.stdout[:2000]
    torch_path = build_data(load_config(None, [*TINY, "data.loader=torch", "data.num_workers=2"]), CPU)
    assert torch_path.loader_kind == "torch" and "unused" not in torch_path.summary
