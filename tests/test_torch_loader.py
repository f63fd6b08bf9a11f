"""The DataLoader path's bytes (issue 26 item 5): workers hand over uint8 batches (a quarter of float32's shared
memory and host-to-device bytes) and the loader normalises on the training device, to the values
torchvision's ToDtype + Normalize gave in the workers before (within float rounding). A user's float
tensors (its own transforms, or a Dataset of floats) go in as they are."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from trainlab.config import load_config
from trainlab.data import build_data
from trainlab.data.torch_loader import TorchLoader
from trainlab.data.user_data import DatasetSource

CPU = torch.device("cpu")
SHAPES = ["data.name=shapes", "data.train_size=24", "data.val_size=12", "data.img_size=16", "data.batch_size=8",
          "data.loader=torch", "data.num_workers=1"]  # fmt: skip


def worker_batch(loader: TorchLoader, epoch: int = 0) -> torch.Tensor:
    """The first batch as the DataLoader's worker made it, before the loader's own step."""
    loader._sampler.epoch, loader._sampler.start = epoch, 0
    return next(iter(loader._loader))[0]


def test_workers_hand_over_uint8_and_the_loader_normalises_as_torchvision_did():
    bundle = build_data(load_config(None, SHAPES), CPU)
    mean, std = bundle.mean, bundle.std
    for split in (bundle.train, bundle.val):
        raw = worker_batch(split)
        assert raw.dtype == torch.uint8, raw.dtype  # float32 before
        x, _ = next(iter(split.batches(0)))
        assert x.dtype == torch.float32 and x.device == CPU
        reference = v2.Normalize(list(mean), list(std))(v2.ToDtype(torch.float32, scale=True)(raw))
        torch.testing.assert_close(x, reference, atol=1e-5, rtol=0)
    # val pixels: the stored images, normalised as the old in-worker transform did
    source = bundle.val._loader.dataset.source
    old_val = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])
    expected = torch.stack([old_val(source.load(i)[0]) for i in range(8)])
    torch.testing.assert_close(next(iter(bundle.val.batches(0)))[0], expected, atol=1e-5, rtol=0)
    # random erasing fills with the mean colour (0 once normalised, as before), rounded to a uint8 value
    in_process = [*SHAPES, "data.num_workers=0", "aug.hflip=0"]  # the same samples without starting workers
    erased = build_data(load_config(None, [*in_process, "aug.random_erasing=1.0"]), CPU)
    assert worker_batch(erased.train).dtype == torch.uint8
    plain = build_data(load_config(None, in_process), CPU)
    with_erasing, without = next(iter(erased.train.batches(0)))[0], next(iter(plain.train.batches(0)))[0]
    changed = (with_erasing - without).abs() > 1e-6
    assert changed.any() and with_erasing[changed].abs().max() < 0.01


class FloatData(torch.utils.data.Dataset):
    def __init__(self):
        self.images = torch.randn(8, 3, 6, 6)

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return self.images[i], i % 2


@pytest.mark.parametrize("workers", [0, 1])
def test_a_users_float_tensors_pass_through_untouched(workers):
    data = FloatData()
    loader = TorchLoader(DatasetSource(data, "train_data"), lambda t: t, 4, False, 0, num_workers=workers,
                         mean=(0.5,) * 3, std=(0.25,) * 3)  # fmt: skip
    x, y = next(iter(loader.batches(0)))
    assert torch.equal(x, data.images[:4]) and y.tolist() == [0, 1, 0, 1]
    # and a user transform's uint8 output is normalised on the device with data.mean/data.std
    to_uint8 = TorchLoader(DatasetSource(data, "d"), lambda t: (t.abs() * 40).clamp(0, 255).to(torch.uint8), 4,
                           False, 0, mean=(0.5,) * 3, std=(0.25,) * 3)  # fmt: skip
    x = next(iter(to_uint8.batches(0)))[0]
    pixels = (data.images[:4].abs() * 40).clamp(0, 255).to(torch.uint8)
    torch.testing.assert_close(x, (pixels.float() / 255 - 0.5) / 0.25, atol=1e-5, rtol=0)
    assert np.isfinite(x.numpy()).all()
