"""Datasets and loaders: `build_data(cfg, device, rank, world_size)` -> DataBundle(train, val, ...).

Dataset kinds (one module each): shapes (synthetic), cifar10/cifar100 (pickle folders), folder
(ImageNet layout, decoded per sample), packed (memory-mapped arrays from `trainlab data pack`).
In-memory kinds go to the tensor loader (tensor_loader.py: whole-batch augmentation, no workers) when
the augmentation allows it, everything else to the classic DataLoader path (torch_loader.py).

A Loader has `batch_size`, `num_samples` (per rank per epoch), `__len__` (batches per epoch) and
`batches(epoch, start=0)` yielding (float32 NCHW normalised images, int64 labels), a pure function of
(train.seed, epoch); `start` skips batches without loading them.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from trainlab.data import transforms as T
from trainlab.data.torch_loader import TorchLoader
from trainlab.errors import ConfigError, DataError

IN_MEMORY_KINDS = ("shapes", "cifar10", "cifar100", "packed")
TENSOR_POLICIES = ("none", "flip-crop")


class Loader(Protocol):
    batch_size: int
    num_samples: int

    def __len__(self) -> int: ...
    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


@dataclass
class DataBundle:
    train: Loader  # shuffled, augmented
    val: Loader  # not shuffled, no augmentation, no dropped samples
    num_classes: int
    class_names: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    loader_kind: str  # "tensor" or "torch"


class ArraySource:
    """An in-memory split: uint8 N,H,W,3 images (numpy, possibly a memmap) and int64 labels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int) -> tuple[torch.Tensor, int]:
        # np.array copies one image: the arrays may be read-only (cache, memmap), tensors must own memory
        return torch.from_numpy(np.array(self.images[index])).permute(2, 0, 1), int(self.labels[index])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole split as torch tensors (reads a memmap into RAM once)."""
        images, labels = self.images, self.labels
        if isinstance(images, np.memmap) or not images.flags.writeable or not images.flags.c_contiguous:
            images = np.array(images)
        return torch.from_numpy(images), torch.from_numpy(np.array(labels, dtype=np.int64))


@dataclass
class RawData:
    """A dataset before loaders: what both loader kinds are built from."""

    train: Any  # ArraySource or FolderDataset
    val: Any
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    geometry: str  # "small" (fixed-size arrays: pad-crop) or "folder" (any size: resized crops)
    img_size: int
    crop_pad: int  # pad-crop padding for "small" geometry

    @property
    def in_memory(self) -> bool:
        return isinstance(self.train, ArraySource)


def load_raw(cfg: Any) -> RawData:
    """Read (or generate) the dataset named by cfg.data.name; no loaders, no transforms yet."""
    d = cfg.data
    name = d.name
    if name == "shapes":
        from trainlab.data.shapes import CLASS_NAMES, MEAN, STD, generate_shapes

        seed = int(cfg.train.seed)
        train = ArraySource(*generate_shapes(int(d.train_size), int(d.img_size), seed, "train"))
        val = ArraySource(*generate_shapes(int(d.val_size), int(d.img_size), seed, "val"))
        return RawData(train, val, list(CLASS_NAMES), MEAN, STD, "small", int(d.img_size), 4)
    if name in ("cifar10", "cifar100"):
        from trainlab.data.cifar import load_cifar

        arrays = load_cifar(d.root, name, bool(d.download))
        mean, std = (
            (T.CIFAR10_MEAN, T.CIFAR10_STD) if name == "cifar10" else (T.CIFAR100_MEAN, T.CIFAR100_STD)
        )
        return RawData(
            ArraySource(arrays.train_images, arrays.train_labels),
            ArraySource(arrays.val_images, arrays.val_labels),
            arrays.classes,
            mean,
            std,
            "small",
            32,
            4,
        )
    if name == "packed":
        from trainlab.data.packed import load_packed

        packed = load_packed(d.root)
        if int(d.img_size) not in (32, packed.img_size):  # 32 is the schema default: not a choice
            warnings.warn(
                f"data.img_size={d.img_size} but {d.root} is packed at {packed.img_size} px; "
                f"training at {packed.img_size} px (repack to change it)",
                stacklevel=2,
            )
        return RawData(
            ArraySource(packed.train_images, packed.train_labels),
            ArraySource(packed.val_images, packed.val_labels),
            packed.classes,
            T.IMAGENET_MEAN,
            T.IMAGENET_STD,
            "small",
            packed.img_size,
            max(4, packed.img_size // 8),  # 4 px at 32, 28 px at 224: the same relative shift
        )
    if name == "folder":
        from trainlab.data.folder import load_folder

        if not d.root:
            raise ConfigError("data.name=folder needs data.root=PATH (the folder with train/ and val/)")
        train, val, classes = load_folder(d.root, bool(d.skip_bad_images))
        return RawData(train, val, classes, T.IMAGENET_MEAN, T.IMAGENET_STD, "folder", int(d.img_size), 0)
    raise ConfigError(
        f"data.name={name!r} is not valid; choose one of: shapes, cifar10, cifar100, folder, packed"
    )


def _norm_stats(cfg: Any, default_mean: tuple, default_std: tuple) -> tuple[tuple, tuple]:
    out = []
    for key, default in (("mean", default_mean), ("std", default_std)):
        value = cfg.data[key]
        if value is None:
            out.append(tuple(float(v) for v in default))
            continue
        value = tuple(float(v) for v in value)
        if len(value) != 3 or (key == "std" and min(value) <= 0):
            raise ConfigError(
                f"data.{key}={list(value)} must be three numbers (R, G, B){', all > 0' if key == 'std' else ''}"
            )
        out.append(value)
    return out[0], out[1]


def choose_loader_kind(cfg: Any, raw_in_memory: bool) -> str:
    """'tensor' or 'torch' from data.loader, the dataset kind and the augmentation policy."""
    want, policy, erasing = cfg.data.loader, cfg.aug.policy, float(cfg.aug.random_erasing)
    tensor_ok = policy in TENSOR_POLICIES and erasing == 0
    if want == "torch":
        return "torch"
    if want == "tensor":
        if not raw_in_memory:
            raise ConfigError(
                f"data.loader=tensor needs an in-memory dataset ({', '.join(IN_MEMORY_KINDS)}); "
                f"data.name={cfg.data.name} decodes files per sample: pack it (`trainlab data pack`) or use data.loader=torch"
            )
        if policy not in TENSOR_POLICIES:
            raise ConfigError(
                f"aug.policy={policy} is not supported with the tensor loader; use data.loader=torch"
            )
        if erasing > 0:
            raise ConfigError(
                f"aug.random_erasing={erasing} is not supported with the tensor loader; use data.loader=torch"
            )
        return "tensor"
    if want == "auto":
        return "tensor" if raw_in_memory and tensor_ok else "torch"
    raise ConfigError(f"data.loader={want!r} is not valid; choose one of: auto, tensor, torch")


def _batch_sizes(cfg: Any) -> tuple[int, int]:
    bs = cfg.data.batch_size
    if bs == "auto":  # the run resolves 'auto' on the GPU before building data; here it is unresolved
        raise ConfigError(
            "data.batch_size=auto must be resolved to a number before loading data; give e.g. 128"
        )
    bs = int(bs)
    val_bs = int(cfg.data.val_batch_size) if cfg.data.val_batch_size else bs
    if val_bs < 1:
        raise ConfigError(f"data.val_batch_size={val_bs} must be positive")
    return bs, val_bs


def build_data(cfg: Any, device: torch.device, rank: int = 0, world_size: int = 1) -> DataBundle:
    raw = load_raw(cfg)
    num_classes = len(raw.classes)
    wanted = cfg.model.num_classes
    if wanted is not None and int(wanted) < num_classes:
        raise DataError(
            f"data.name={cfg.data.name} ({cfg.data.root or 'built-in'}) has {num_classes} classes but "
            f"model.num_classes={wanted}: labels up to {num_classes - 1} are out of range; "
            f"set model.num_classes={num_classes} (or leave it unset)"
        )
    mean, std = _norm_stats(cfg, raw.mean, raw.std)
    kind = choose_loader_kind(cfg, raw.in_memory)
    device = torch.device(device)
    bs, val_bs = _batch_sizes(cfg)
    seed = int(cfg.train.seed)
    policy = cfg.aug.policy
    if kind == "tensor":
        from trainlab.data.tensor_loader import TensorLoader  # lazy: the torch path must not need it

        crop = policy == "flip-crop"
        tensors = {}
        for split, source in (("train", raw.train), ("val", raw.val)):
            tensors[split] = source.tensors()
        common = dict(device=device, seed=seed, mean=mean, std=std, rank=rank, world_size=world_size)
        train = TensorLoader(
            *tensors["train"], batch_size=bs, train=True, pad=raw.crop_pad if crop else 0, flip=crop, **common
        )
        val = TensorLoader(*tensors["val"], batch_size=val_bs, train=False, pad=0, flip=False, **common)
    else:
        on_cuda = device.type == "cuda"
        common = dict(
            seed=seed,
            num_workers=int(cfg.data.num_workers),
            pin_memory=bool(cfg.data.pin_memory) and on_cuda,
            persistent_workers=bool(cfg.data.persistent_workers),
            rank=rank,
            world_size=world_size,
        )
        train_tf = T.build_train_transform(
            raw.geometry, raw.img_size, policy, float(cfg.aug.random_erasing), mean, std, raw.crop_pad
        )
        val_tf = T.build_val_transform(raw.geometry, raw.img_size, mean, std)
        train = TorchLoader(raw.train, train_tf, bs, train=True, **common)
        val = TorchLoader(raw.val, val_tf, val_bs, train=False, **common)
    return DataBundle(train, val, num_classes, list(raw.classes), tuple(mean), tuple(std), kind)


__all__ = ["DataBundle", "Loader", "RawData", "ArraySource", "build_data", "load_raw", "choose_loader_kind"]
