"""Datasets and the classic DataLoader path: real files in their real formats, written here in tmp_path."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from trainlab.config import load_config
from trainlab.data import build_data, choose_loader_kind
from trainlab.data.shapes import CLASS_NAMES, generate_shapes
from trainlab.data.torch_loader import TorchLoader
from trainlab.errors import ConfigError

pytestmark = pytest.mark.filterwarnings(
    "ignore:The image decoding and encoding capabilities:DeprecationWarning"
)

CPU = torch.device("cpu")
HAS_TENSOR_LOADER = importlib.util.find_spec("trainlab.data.tensor_loader") is not None
needs_tensor_loader = pytest.mark.skipif(
    not HAS_TENSOR_LOADER, reason="trainlab.data.tensor_loader (another engineer's module) has not landed yet"
)


def cfg_of(*overrides: str):
    return load_config(None, list(overrides))


def shapes_cfg(*overrides: str):
    return cfg_of(
        "data.train_size=120", "data.val_size=50", "data.img_size=16", "data.batch_size=16", *overrides
    )


# ------------------------------------------------------------------------------------------ fixtures
def write_cifar10(root: Path, per_batch: int = 12, seed: int = 0) -> Path:
    """The torchvision/Toronto layout: latin1-readable pickles of dicts with uint8 N x 3072 rows."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]
    for name in names:
        entry = {
            "batch_label": name,
            "labels": rng.integers(0, 10, per_batch).tolist(),
            "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            "filenames": [f"{name}_{i}.png" for i in range(per_batch)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
    meta = {
        "label_names": [f"class{i}" for i in range(10)],
        "num_cases_per_batch": per_batch,
        "num_vis": 3072,
    }
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return folder


def write_cifar100(root: Path, n_train: int = 40, n_test: int = 20, seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, n in (("train", n_train), ("test", n_test)):
        entry = {
            "filenames": [f"{name}_{i}.png" for i in range(n)],
            "batch_label": name,
            "fine_labels": rng.integers(0, 100, n).tolist(),
            "coarse_labels": rng.integers(0, 20, n).tolist(),
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        }
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
    meta = {
        "fine_label_names": [f"fine{i}" for i in range(100)],
        "coarse_label_names": [f"c{i}" for i in range(20)],
    }
    with open(folder / "meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return folder


CLASS_COLOURS = {"apple": (220, 30, 30), "grass": (30, 200, 40), "sky": (40, 60, 230)}


def write_folder(root: Path, train_per_class: int = 4, val_per_class: int = 2) -> Path:
    """root/{train,val}/<class>/ with solid-colour JPEG and PNG images of varied sizes (colour = class)."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for name, colour in CLASS_COLOURS.items():
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(count):
                w, h = int(rng.integers(20, 48)), int(rng.integers(20, 48))
                img = Image.new("RGB", (w, h), colour)
                ext = [".jpg", ".PNG", ".jpeg"][i % 3]
                img.save(d / f"{i}{ext}", format="PNG" if ext == ".PNG" else "JPEG", quality=95)
    (root / "train" / "apple" / "notes.txt").write_text("not an image: ignored")
    return root


def write_packed(root: Path, n_train: int = 30, n_val: int = 12, size: int = 16, classes: int = 3) -> Path:
    """The `trainlab data pack` output format, written directly with numpy."""
    rng = np.random.default_rng(2)
    root.mkdir(parents=True)
    for split, n in (("train", n_train), ("val", n_val)):
        np.save(root / f"{split}_images.npy", rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8))
        np.save(root / f"{split}_labels.npy", rng.integers(0, classes, n).astype(np.int64))
    meta = {
        "classes": [f"k{i}" for i in range(classes)],
        "img_size": size,
        "splits": {"train": n_train, "val": n_val},
    }
    (root / "meta.json").write_text(json.dumps(meta))
    return root


def all_batches(loader, epoch: int = 0, start: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(loader.batches(epoch, start))


def assert_same_batches(a, b) -> None:
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def normalised(images_nhwc: np.ndarray, mean, std) -> torch.Tensor:
    x = torch.from_numpy(np.array(images_nhwc)).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


# ------------------------------------------------------------------------------------------ shapes
def test_shapes_deterministic_balanced_and_in_range():
    x1, y1 = generate_shapes.__wrapped__(500, 32, 7, "train")  # uncached: really generated twice
    x2, y2 = generate_shapes.__wrapped__(500, 32, 7, "train")
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    x3, _ = generate_shapes.__wrapped__(500, 32, 8, "train")
    xv, _ = generate_shapes.__wrapped__(500, 32, 7, "val")
    assert not np.array_equal(x1, x3) and not np.array_equal(x1, xv)
    assert x1.shape == (500, 32, 32, 3) and x1.dtype == np.uint8 and y1.dtype == np.int64
    counts = np.bincount(y1, minlength=10)
    assert counts.min() == counts.max() == 50
    assert x1.min() < 30 and x1.max() > 225 and 60 < x1.mean() < 120  # light shapes on dark backgrounds
    assert len(CLASS_NAMES) == 10 and len(set(CLASS_NAMES)) == 10


def test_shapes_bundle_shapes_names_and_normalisation():
    bundle = build_data(shapes_cfg("data.loader=torch"), CPU)
    assert bundle.num_classes == 10 and bundle.class_names == CLASS_NAMES and bundle.loader_kind == "torch"
    assert (len(bundle.train), len(bundle.val)) == (
        8,
        4,
    )  # 120/16 -> 8 batches, 50/16 -> 4 (last one partial)
    assert bundle.train.num_samples == 120 and bundle.val.num_samples == 50
    val = all_batches(bundle.val)
    images = torch.cat([x for x, _ in val])
    labels = torch.cat([y for _, y in val])
    raw_x, raw_y = generate_shapes(50, 16, 0, "val")
    assert images.dtype == torch.float32 and labels.dtype == torch.int64
    assert torch.allclose(
        images, normalised(raw_x, bundle.mean, bundle.std), atol=1e-6
    )  # val: no augmentation
    assert torch.equal(labels, torch.from_numpy(raw_y.copy()))
    custom = build_data(shapes_cfg("data.loader=torch", "data.mean=[0,0,0]", "data.std=[1,1,1]"), CPU)
    x, _ = next(iter(custom.val.batches(0)))
    assert custom.mean == (0.0, 0.0, 0.0) and 0.0 <= x.min() and x.max() <= 1.0


# ------------------------------------------------------------------------------------------ CIFAR
@pytest.fixture
def torchvision_without_md5(monkeypatch):
    """torchvision md5-checks the files against the real CIFAR archives; ours are generated, so we
    switch that check off (and only that: the reading code that follows is torchvision's own)."""
    from torchvision.datasets import cifar as tv_cifar

    monkeypatch.setattr(tv_cifar.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    return tv_cifar


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("point_at_batches_dir", [False, True])
def test_cifar_reader_matches_torchvision(tmp_path, torchvision_without_md5, name, point_at_batches_dir):
    from trainlab.data.cifar import load_cifar

    folder = write_cifar10(tmp_path) if name == "cifar10" else write_cifar100(tmp_path)
    tv_cls = torchvision_without_md5.CIFAR10 if name == "cifar10" else torchvision_without_md5.CIFAR100
    ours = load_cifar(folder if point_at_batches_dir else tmp_path, name)
    tv_train, tv_test = tv_cls(str(tmp_path), train=True), tv_cls(str(tmp_path), train=False)
    assert np.array_equal(ours.train_images, tv_train.data) and np.array_equal(ours.val_images, tv_test.data)
    assert ours.train_labels.tolist() == tv_train.targets and ours.val_labels.tolist() == tv_test.targets
    assert ours.classes == tv_train.classes
    assert ours.train_images.shape[1:] == (32, 32, 3) and len(ours.train_images) == (
        60 if name == "cifar10" else 40
    )


def test_cifar_bundle_val_is_exact_and_train_is_augmented(tmp_path):
    write_cifar10(tmp_path)
    bundle = build_data(
        cfg_of("data.name=cifar10", f"data.root={tmp_path}", "data.loader=torch", "data.batch_size=8"), CPU
    )
    assert bundle.num_classes == 10 and bundle.class_names[0] == "class0"
    from trainlab.data.cifar import load_cifar

    arrays = load_cifar(tmp_path, "cifar10")
    val_x = torch.cat([x for x, _ in bundle.val.batches(0)])
    assert torch.allclose(val_x, normalised(arrays.val_images, bundle.mean, bundle.std), atol=1e-6)
    train = all_batches(bundle.train)
    assert sum(len(y) for _, y in train) == 60
    labels = torch.cat([y for _, y in train])
    assert sorted(labels.tolist()) == sorted(arrays.train_labels.tolist())  # a permutation of the train set


# ------------------------------------------------------------------------------------------ folder
def test_folder_batches_shapes_labels_and_val_content(tmp_path):
    write_folder(tmp_path)
    cfg = cfg_of("data.name=folder", f"data.root={tmp_path}", "data.img_size=24", "data.batch_size=4")
    bundle = build_data(cfg, CPU)
    assert bundle.loader_kind == "torch" and bundle.class_names == sorted(CLASS_COLOURS)
    train = all_batches(bundle.train)
    assert [tuple(x.shape) for x, _ in train] == [(4, 3, 24, 24)] * 3
    assert sorted(torch.cat([y for _, y in train]).tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    val = all_batches(bundle.val)
    labels = torch.cat([y for _, y in val])
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]  # sorted classes, files in order, not shuffled
    images = torch.cat([x for x, _ in val])
    mean, std = torch.tensor(bundle.mean).view(3, 1, 1), torch.tensor(bundle.std).view(3, 1, 1)
    for img, label in zip(images, labels):  # each image really is its class's colour
        rgb = (img * std + mean).mean(dim=(1, 2)) * 255
        expected = torch.tensor(CLASS_COLOURS[bundle.class_names[label]], dtype=torch.float32)
        assert (rgb - expected).abs().max() < 8


@pytest.mark.parametrize("policy", ["randaugment", "trivialaugment", "autoaugment"])
def test_folder_policies_run(tmp_path, policy):
    write_folder(tmp_path, train_per_class=2, val_per_class=1)
    cfg = cfg_of("data.name=folder", f"data.root={tmp_path}", "data.img_size=16", "data.batch_size=3",
                 f"aug.policy={policy}", "aug.random_erasing=0.5")  # fmt: skip
    bundle = build_data(cfg, CPU)
    x, y = next(iter(bundle.train.batches(0)))
    assert x.shape == (3, 3, 16, 16) and torch.isfinite(x).all()


# ------------------------------------------------------------------------------------------ determinism
def test_torch_loader_determinism_resume_and_workers():
    overrides = ("data.loader=torch", "aug.policy=randaugment", "aug.random_erasing=0.5", "train.seed=3",
                 "data.train_size=64", "data.batch_size=8")  # fmt: skip
    bundle = build_data(shapes_cfg(*overrides), CPU)
    rng_before = torch.get_rng_state()
    first = all_batches(bundle.train, epoch=1)
    assert torch.equal(torch.get_rng_state(), rng_before), "per-sample seeding must not move the caller's RNG"
    assert len(first) == len(bundle.train) == 8
    assert_same_batches(first, all_batches(bundle.train, epoch=1))
    assert_same_batches(first[3:], all_batches(bundle.train, epoch=1, start=3))
    assert all_batches(bundle.train, epoch=1, start=len(bundle.train)) == []
    other_epoch = all_batches(bundle.train, epoch=2)
    assert not torch.equal(first[0][1], other_epoch[0][1])  # reshuffled
    workers = build_data(shapes_cfg(*overrides, "data.num_workers=2", "data.persistent_workers=true"), CPU)
    assert_same_batches(first, all_batches(workers.train, epoch=1))
    assert_same_batches(first[5:], all_batches(workers.train, epoch=1, start=5))  # persistent workers reused
    assert_same_batches(first, all_batches(workers.train, epoch=1))



class _DrawingDataset(torch.utils.data.Dataset):
    """A user's Dataset whose __getitem__ draws from torch, `random` and numpy, as hand-written augmentation does."""

    def __len__(self) -> int:
        return 48

    def __getitem__(self, i: int):
        import random

        image = torch.full((3, 8, 8), float(i)) + torch.rand(()) + random.random() + float(np.random.rand())
        return image, i % 3


def test_user_dataset_batches_seed_each_sample_and_save_the_callers_streams_once_a_batch(monkeypatch):
    """bench/peers.py: the three host streams were saved and restored around every sample; numpy's
    get_state/set_state alone cost ~170 us, ~11 ms a batch of 64 (a 4.6x slower sample read than the
    Dataset's own). Now once a batch: the same samples, the caller's streams unmoved."""
    import random

    from trainlab.data.torch_loader import _TransformedDataset
    from trainlab.data.user_data import DatasetSource, UserSampleTransform

    source = DatasetSource(_DrawingDataset(), "train_data")
    transform = UserSampleTransform(None, None, (0.5,) * 3, (0.25,) * 3)
    loader = TorchLoader(source, transform, batch_size=8, train=True, seed=3)
    alone = _TransformedDataset(source, transform, seed=3, random=True)
    saves = []
    real_get_state = np.random.get_state
    monkeypatch.setattr(np.random, "get_state", lambda *a, **k: saves.append(1) or real_get_state(*a, **k))
    before = (torch.get_rng_state(), random.getstate(), real_get_state())
    batches = all_batches(loader, epoch=2)
    after = (torch.get_rng_state(), random.getstate(), real_get_state())
    assert torch.equal(before[0], after[0]) and before[1] == after[1]
    assert all(np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y for x, y in zip(before[2], after[2]))
    assert len(saves) == len(loader) == 6, f"{len(saves)} saves of numpy's state for {len(loader)} batches"
    one_by_one = [alone[(2, int(i))] for i in loader.indices(2)]
    assert torch.equal(torch.cat([x for x, _ in batches]), torch.stack([x for x, _ in one_by_one]))
    assert_same_batches(batches[2:], all_batches(loader, epoch=2, start=2))
    assert not torch.equal(batches[0][0], all_batches(loader, epoch=3)[0][0])

# A process that still holds a persistent-workers loader at exit. The workers ignore SIGTERM (stop signals
# are the main process's), and multiprocessing's exit handler terminates daemon children with SIGTERM and
# then joins them: without its own shutdown, `trainlab train data.loader=torch data.num_workers=2
# data.persistent_workers=true` printed "done" and then never exited.
HOLD_PERSISTENT_LOADER_AT_EXIT = """
import torch
from trainlab.config import load_config
from trainlab.data import build_data
cfg = load_config(None, ["data.name=shapes", "data.train_size=64", "data.val_size=16", "data.img_size=16",
                         "data.batch_size=8", "data.loader=torch", "data.num_workers=2",
                         "data.persistent_workers=true"])
bundle = build_data(cfg, torch.device("cpu"))
batches = bundle.train.batches(0)
next(batches)  # workers started, an epoch left part-way, as max_steps_per_epoch leaves it
print("held", flush=True)
"""


def test_process_holding_persistent_workers_exits():
    proc = subprocess.Popen([sys.executable, "-c", HOLD_PERSISTENT_LOADER_AT_EXIT], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the process hung at exit with persistent loader workers alive")
    assert proc.returncode == 0 and "held" in out, err[-2000:]


def test_augmentation_is_a_crop_and_flip_of_the_original():
    bundle = build_data(shapes_cfg("data.loader=torch", "data.batch_size=120"), CPU)
    x, y = next(iter(bundle.train.batches(0)))
    raw_x, raw_y = generate_shapes(120, 16, 0, "train")
    order = bundle.train.indices(0)
    assert torch.equal(y, torch.from_numpy(raw_y.copy())[order])
    mean, std = torch.tensor(bundle.mean).view(1, 3, 1, 1), torch.tensor(bundle.std).view(1, 3, 1, 1)
    augmented = ((x * std + mean) * 255).round().to(torch.uint8)  # back to the uint8 pixels
    originals = torch.from_numpy(raw_x.copy()).permute(0, 3, 1, 2)[order]
    windows = F.pad(originals, (4, 4, 4, 4)).unfold(2, 16, 1).unfold(3, 16, 1)  # N,3,9,9,16,16: every crop
    target = augmented[:, :, None, None]
    as_crop = (windows == target).all(dim=(1, 4, 5))  # N,9,9
    as_flipped_crop = (windows.flip(-1) == target).all(dim=(1, 4, 5))
    assert (as_crop | as_flipped_crop).flatten(1).any(dim=1).all(), (
        "every sample is a (flipped) crop of the padded image"
    )
    unchanged = as_crop[:, 4, 4]
    assert unchanged.sum() < 30  # most samples are really shifted or flipped


def test_ddp_sharding_of_val_and_train():
    bundle = build_data(shapes_cfg("data.loader=torch", "data.val_size=51"), CPU)
    ranks = [
        build_data(shapes_cfg("data.loader=torch", "data.val_size=51"), CPU, rank=r, world_size=2)
        for r in (0, 1)
    ]
    val_idx = [r.val.indices(0).tolist() for r in ranks]
    assert not set(val_idx[0]) & set(val_idx[1]) and sorted(val_idx[0] + val_idx[1]) == list(range(51))
    assert [r.val.num_samples for r in ranks] == [26, 25]
    full_val = torch.cat([x for x, _ in bundle.val.batches(0)])
    rank1_val = torch.cat([x for x, _ in ranks[1].val.batches(0)])
    assert torch.equal(rank1_val, full_val[1::2])
    train_idx = [r.train.indices(4).tolist() for r in ranks]
    assert len(train_idx[0]) == len(train_idx[1]) == 60 and len(ranks[0].train) == len(ranks[1].train)
    assert set(train_idx[0]) | set(train_idx[1]) == set(range(120)) and not set(train_idx[0]) & set(
        train_idx[1]
    )
    odd = [TorchLoader(bundle.train._loader.dataset.source, lambda t: t.float(), 8, True, 0, rank=r, world_size=4)
           for r in range(4)]  # fmt: skip
    odd_idx = [o.indices(0).tolist() for o in odd]  # 120 samples, 4 ranks: 30 each, every sample seen
    assert all(len(i) == 30 for i in odd_idx) and set(sum(odd_idx, [])) == set(range(120))


# ------------------------------------------------------------------------------------------ loader choice
def test_loader_choice_rules():
    assert choose_loader_kind(cfg_of(), raw_in_memory=True) == "tensor"
    assert choose_loader_kind(cfg_of("aug.policy=none"), raw_in_memory=True) == "tensor"
    assert choose_loader_kind(cfg_of("aug.policy=randaugment"), raw_in_memory=True) == "torch"
    assert choose_loader_kind(cfg_of("aug.random_erasing=0.25"), raw_in_memory=True) == "torch"
    assert choose_loader_kind(cfg_of(), raw_in_memory=False) == "torch"
    with pytest.raises(
        ConfigError,
        match="aug.policy=trivialaugment is not supported with the tensor loader; use data.loader=torch",
    ):
        choose_loader_kind(cfg_of("data.loader=tensor", "aug.policy=trivialaugment"), raw_in_memory=True)
    with pytest.raises(ConfigError, match="pack it"):
        choose_loader_kind(cfg_of("data.loader=tensor"), raw_in_memory=False)


@needs_tensor_loader
def test_tensor_loader_built_from_the_same_arrays(tmp_path):
    bundle = build_data(shapes_cfg(), CPU)
    assert bundle.loader_kind == "tensor"
    val = all_batches(bundle.val)
    raw_x, raw_y = generate_shapes(50, 16, 0, "val")
    assert torch.equal(torch.cat([y for _, y in val]).cpu(), torch.from_numpy(raw_y.copy()))
    images = torch.cat([x for x, _ in val]).cpu().float()
    assert torch.allclose(images, normalised(raw_x, bundle.mean, bundle.std), atol=1e-5)
    assert_same_batches(all_batches(bundle.train, 2)[2:], all_batches(bundle.train, 2, start=2))
    packed = build_data(cfg_of("data.name=packed", f"data.root={write_packed(tmp_path / 'p')}"), CPU)
    assert packed.loader_kind == "tensor" and packed.num_classes == 3


def test_packed_reader_torch_path(tmp_path):
    root = write_packed(tmp_path / "packed")
    bundle = build_data(
        cfg_of("data.name=packed", f"data.root={root}", "data.loader=torch", "data.batch_size=5"), CPU
    )
    assert bundle.class_names == ["k0", "k1", "k2"] and bundle.num_classes == 3
    val = all_batches(bundle.val)
    assert torch.allclose(
        torch.cat([x for x, _ in val]),
        normalised(np.load(root / "val_images.npy"), bundle.mean, bundle.std),
        atol=1e-6,
    )
    assert torch.cat([y for _, y in val]).tolist() == np.load(root / "val_labels.npy").tolist()
    assert [tuple(x.shape) for x, _ in all_batches(bundle.train)][0] == (5, 3, 16, 16)


# ------------------------------------------------------------------------------------------ learnability
def test_shapes_are_learnable_by_a_tiny_convnet():
    torch.manual_seed(0)
    cfg = cfg_of("data.loader=torch", "data.img_size=16", "data.train_size=1000", "data.val_size=300",
                 "data.batch_size=16", "aug.policy=none")  # fmt: skip
    bundle = build_data(cfg, CPU)

    def block(c_in: int, c_out: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU())

    model = nn.Sequential(block(3, 32), nn.MaxPool2d(2), block(32, 64), nn.MaxPool2d(2), block(64, 64),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for epoch in range(2):
        model.train()
        for x, y in bundle.train.batches(epoch):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in bundle.val.batches(0):
            correct += (model(x).argmax(1) == y).sum().item()
            total += len(y)
    assert total == 300
    assert correct / total > 0.3, f"val top-1 {correct / total:.2f} after 2 epochs (chance 0.10)"


def test_folder_reader_and_data_tools_list_the_same_images(tmp_path):
    """`data.name=folder` and `trainlab data pack/info` see one set of files: nested folders and
    symlinked images included (as torchvision's ImageFolder), hidden files and other extensions left out."""
    from PIL import Image

    from trainlab.data.folder import scan_split
    from trainlab.data.pack import list_split

    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / split / cls / "nested").mkdir(parents=True)
            Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / split / cls / "x.png")
            Image.new("RGB", (8, 8), (10, 200, 10)).save(tmp_path / split / cls / "nested" / "y.jpg")
            (tmp_path / split / cls / ".hidden.png").write_bytes(b"")
            (tmp_path / split / cls / "notes.txt").write_text("not an image")
    (tmp_path / "train" / "a" / "link.png").symlink_to(tmp_path / "train" / "b" / "x.png")
    for split in ("train", "val"):
        files, labels, classes = scan_split(tmp_path, split, None if split == "train" else ["a", "b"])
        listing = list_split(tmp_path, split, None if split == "train" else ["a", "b"])
        assert files == listing.files and labels == listing.labels and classes == listing.classes
    assert len(scan_split(tmp_path, "train")[0]) == 5
