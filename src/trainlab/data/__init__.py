"""Datasets and loaders: `build_data(cfg, device, rank, world_size)` -> DataBundle(train, val, ...).

Dataset kinds (one module each): shapes (synthetic), cifar10/cifar100 (pickle folders), folder
(ImageNet layout, decoded per sample), packed (memory-mapped arrays from `trainlab data pack`).
In-memory kinds go to the tensor loader (tensor_loader.py: whole-batch augmentation, no workers) when
the augmentation allows it and the copy fits in memory (memory.py), to the streaming loader (stream.py:
chunked reads, augmentation on the device) when it does not, everything else to the classic DataLoader
path (torch_loader.py). Crop and flip follow one AugPlan on every loader (augment.py).

A Loader has `batch_size`, `num_samples` (per rank per epoch), `__len__` (batches per epoch) and
`batches(epoch, start=0)` yielding (float32 NCHW normalised images, int64 labels), a pure function of
(train.seed, epoch); `start` skips batches without loading them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from trainlab.config import final_img_size, img_size_schedule
from trainlab.data import transforms as T
from trainlab.data.augment import SizeSchedule, resolve_plan, stored_size_hint
from trainlab.data.memory import IN_MEMORY_KINDS, choose_loader, memory_limit
from trainlab.data.stream import BLOCK_BYTES
from trainlab.data.torch_loader import EpochTransforms, TorchLoader
from trainlab.errors import ConfigError, DataError


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
    loader_kind: str  # "tensor", "torch" or "stream"
    summary: str = ""  # how the data is loaded and augmented, and why (the run prints it at start)

    def use_channels_last(self, on: bool) -> None:
        """Batches in the layout the run feeds its model (train.runtime.channels_last_default, which also
        weighs the model), for the loaders that lay batches out themselves."""
        for loader in (self.train, self.val):
            if hasattr(loader, "channels_last"):
                loader.channels_last = bool(on)


def input_channels_last(cfg: Any, device: torch.device) -> bool:
    """Whether the loaders lay batches out channels_last: train.channels_last, where null means on a GPU
    (the answer train.runtime.channels_last_default gives a conv net; the run sets its model-aware answer
    with DataBundle.use_channels_last). Before issue 26 every batch loader chose channels_last on CUDA
    whatever train.channels_last said."""
    if cfg.train.channels_last is not None:
        return bool(cfg.train.channels_last)
    return torch.device(device).type == "cuda"


class ArraySource:
    """An in-memory split: uint8 N,H,W,3 images (numpy, possibly a memmap) and int64 labels; or a
    packed.VariableImages (keep-aspect pack), whose `images[i]` is an (h, w, 3) array of its own size."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int) -> tuple[torch.Tensor, int]:
        # np.array copies one image: the arrays may be read-only (cache, memmap), tensors must own memory
        return torch.from_numpy(np.array(self.images[index])).permute(2, 0, 1), int(self.labels[index])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole split as torch tensors (reads a memmap into RAM once)."""
        if getattr(self.images, "variable_size", False):
            raise DataError("variable-size packed images have no single tensor; use data.loader=stream")
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
        size = final_img_size(d.img_size)
        train = ArraySource(*generate_shapes(int(d.train_size), size, seed, "train"))
        val = ArraySource(*generate_shapes(int(d.val_size), size, seed, "val"))
        return RawData(train, val, list(CLASS_NAMES), MEAN, STD, "small", size, 4)
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
        # 32 is the schema default, not a choice: train at the packed size. Another data.img_size is
        # honoured by the crop (a random resized crop of larger stored images, or a resize; see augment.py).
        out_size = packed.img_size if d.img_size == 32 else final_img_size(d.img_size)
        return RawData(
            ArraySource(packed.train_images, packed.train_labels),
            ArraySource(packed.val_images, packed.val_labels),
            packed.classes,
            T.IMAGENET_MEAN,
            T.IMAGENET_STD,
            "small",
            out_size,
            max(4, out_size // 8),  # 4 px at 32, 28 px at 224: the same relative shift
        )
    # folder, the last name config.CHOICES["data.name"] admits (config.validate refuses any other; a user's
    # factory, data.name=pkg.mod:make_data, never reaches here: build_data takes it first)
    from trainlab.data.folder import load_folder

    if not d.root:
        raise ConfigError("data.name=folder needs data.root=PATH (the folder with train/ and val/)")
    train, val, classes = load_folder(d.root, bool(d.skip_bad_images))
    return RawData(train, val, classes, T.IMAGENET_MEAN, T.IMAGENET_STD, "folder", final_img_size(d.img_size), 0)


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
    """'tensor', 'torch' or 'stream' from data.loader, the dataset kind and the augmentation policy,
    for a dataset small enough to copy (build_data also weighs its size: memory.choose_loader)."""
    empty = np.empty((0, 1, 1, 3), dtype=np.uint8) if raw_in_memory else None
    return choose_loader(cfg, empty, empty, 0, torch.device("cpu"))[0]


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


def _schedule_note(size_at: Any) -> str:
    if size_at is None:
        return ""
    steps = ", ".join(f"{size} px from {frac:g}" for frac, size in size_at.steps)
    return f"; progressive sizes {steps} of training (eval at {size_at.steps[-1][1]} px)"


def unused_workers_note(cfg: Any, kind: str) -> str:
    """'; data.num_workers=N is unused ...' for a loader without worker processes (tensor, stream, gpu-decode, a
    user's iterable), so a sweep over data.num_workers does not compare runs that differ in nothing."""
    workers = int(cfg.data.num_workers)
    if workers == 0 or kind == "torch":
        return ""
    if kind == "iterable":
        return (f"; data.num_workers={workers} is unused: your iterable of batches is read as it is "
                "(give your own DataLoader its num_workers)")
    return (f"; data.num_workers={workers} is unused by the {kind} loader (it has no worker processes); "
            "data.loader=torch runs the DataLoader with them")


def build_data(cfg: Any, device: torch.device, rank: int = 0, world_size: int = 1, user: Any = None) -> DataBundle:
    """The run's loaders. `user` (trainlab.user.UserParts) carries a user's own datasets and transforms;
    `data.name: pkg.mod:factory` names a factory of them (data/user_data.py takes both)."""
    from trainlab.user import is_import_path, is_object_name, load_data, load_transform

    if user is None or not user.has_data:
        if is_import_path(cfg.data.name):
            from trainlab.user import UserParts

            train, val, names = load_data(cfg)
            user = UserParts(**{**vars(user or UserParts()), "train_data": train, "val_data": val,
                                "class_names": names})  # fmt: skip
        elif is_object_name(cfg.data.name):
            raise ConfigError(f"data.name={cfg.data.name} was a Python object handed to trainlab.fit; to load it "
                              "from a config give its factory as an import path, data.name=pkg.module:make_data")  # fmt: skip
    if user is not None and user.has_data:
        from trainlab.data.user_data import build_user_data

        for key in ("train_transform", "val_transform"):
            if getattr(user, key) is None:
                setattr(user, key, load_transform(cfg, key))
        return build_user_data(cfg, user, device, rank, world_size)
    if cfg.aug.train_transform or cfg.aug.val_transform:
        raise ConfigError("aug.train_transform/aug.val_transform apply to your own dataset (data.name=pkg.mod:factory "
                          "or trainlab.fit(train_data=...)); trainlab's datasets use the aug.* keys")  # fmt: skip
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
    device = torch.device(device)
    channels_last = input_channels_last(cfg, device)
    bs, val_bs = _batch_sizes(cfg)
    seed = int(cfg.train.seed)
    policy = cfg.aug.policy
    kept_aspect = bool(getattr(getattr(raw.train, "images", None), "variable_size", False))
    plan = resolve_plan(
        cfg.aug, stored_size_hint(raw.train), raw.img_size, raw.crop_pad or max(4, raw.img_size // 8), kept_aspect
    )
    schedule = img_size_schedule(cfg.data.img_size)
    # Progressive resizing: the training size is a pure function of the epoch (so resume needs nothing);
    # validation and the crop plan use the final size.
    size_at = SizeSchedule(tuple(schedule), int(cfg.train.epochs)) if len(schedule) > 1 else None
    arrays = (raw.train.images, raw.val.images) if raw.in_memory else (None, None)
    kind, why = choose_loader(cfg, *arrays, plan.pad if plan.crop == "pad" else 0, device)
    if kind == "stream":
        from trainlab.data.stream import WINDOW_BLOCKS, StreamLoader

        limit, _ = memory_limit(cfg, device)
        # Blocks small enough that the ~2 resident windows stay within a quarter of the memory limit.
        block_bytes = int(min(BLOCK_BYTES, limit / (8 * WINDOW_BLOCKS)))
        # Batch buffers (prefetch + 2 of them) within another quarter, down to one batch read ahead.
        images = raw.train.images
        sample_bytes = (
            images.max_height * images.max_width * 3 if getattr(images, "variable_size", False)
            else int(np.prod(images.shape[1:]))
        )  # fmt: skip
        batch_bytes = bs * sample_bytes
        prefetch = int(max(1, min(3, limit / 4 // batch_bytes - 2)))
        common = dict(device=device, seed=seed, mean=mean, std=std, rank=rank, world_size=world_size, plan=plan,
                      channels_last=channels_last)
        train = StreamLoader(
            raw.train.images, raw.train.labels, bs, train=True, block_bytes=block_bytes, size_at=size_at,
            prefetch=prefetch, **common
        )
        val = StreamLoader(raw.val.images, raw.val.labels, val_bs, train=False, block_bytes=block_bytes, **common)
        summary = f"data: stream loader ({why}); {plan.describe()}{_schedule_note(size_at)}{unused_workers_note(cfg, kind)}"
        return DataBundle(train, val, num_classes, list(raw.classes), tuple(mean), tuple(std), kind, summary)
    if kind == "tensor":
        from trainlab.data.tensor_loader import TensorLoader  # lazy: the torch path must not need it

        tensors = {}
        for split, source in (("train", raw.train), ("val", raw.val)):
            tensors[split] = source.tensors()
        common = dict(device=device, seed=seed, mean=mean, std=std, rank=rank, world_size=world_size, plan=plan,
                      channels_last=channels_last)
        train = TensorLoader(*tensors["train"], batch_size=bs, train=True, size_at=size_at, **common)
        val = TensorLoader(*tensors["val"], batch_size=val_bs, train=False, **common)
    elif not raw.in_memory and cfg.data.loader == "auto":  # a folder: JPEG decode on the GPU when it can
        from trainlab.data.gpu_decode import GpuJpegLoader, choose_gpu_decode

        use, gpu_why = choose_gpu_decode(cfg, raw.train.files + raw.val.files, device)
        if use:
            common = dict(device=device, seed=seed, mean=mean, std=std, rank=rank, world_size=world_size, plan=plan,
                          channels_last=channels_last)
            train = GpuJpegLoader(raw.train, bs, train=True, size_at=size_at, **common)
            val = GpuJpegLoader(raw.val, val_bs, train=False, **common)
            summary = (f"data: gpu-decode loader ({gpu_why}); {plan.describe()}{_schedule_note(size_at)}"
                       f"{unused_workers_note(cfg, 'gpu-decode')}")
            return DataBundle(train, val, num_classes, list(raw.classes), tuple(mean), tuple(std), "gpu-decode", summary)
        why += f"; GPU JPEG decode not used: {gpu_why}"
    if kind == "torch":
        on_cuda = device.type == "cuda"
        common = dict(
            seed=seed,
            num_workers=int(cfg.data.num_workers),
            pin_memory=bool(cfg.data.pin_memory) and on_cuda,
            persistent_workers=bool(cfg.data.persistent_workers),
            rank=rank,
            world_size=world_size,
            device=device,  # the workers' uint8 batches are normalised there (torch_loader.TorchLoader)
            mean=mean,
            std=std,
            channels_last=channels_last,
        )
        train_tf = T.build_train_transform(
            raw.geometry, raw.img_size, policy, float(cfg.aug.random_erasing), mean, std, raw.crop_pad, plan
        )
        val_tf = T.build_val_transform(raw.geometry, raw.img_size, mean, std, plan)
        if size_at is not None:  # one transform per scheduled size, picked by the epoch of each sample key
            by_size = {
                size: T.build_train_transform(
                    raw.geometry, size, policy, float(cfg.aug.random_erasing), mean, std, raw.crop_pad,
                    dataclasses.replace(plan, size=size),
                )
                for _, size in schedule
            }  # fmt: skip
            train_tf = EpochTransforms(by_size, size_at)
        train = TorchLoader(raw.train, train_tf, bs, train=True, **common)
        val = TorchLoader(raw.val, val_tf, val_bs, train=False, **common)
    summary = f"data: {kind} loader ({why}); {plan.describe()}{_schedule_note(size_at)}{unused_workers_note(cfg, kind)}"
    return DataBundle(train, val, num_classes, list(raw.classes), tuple(mean), tuple(std), kind, summary)


__all__ = ["IN_MEMORY_KINDS", "DataBundle", "input_channels_last", "Loader", "RawData", "ArraySource", "build_data", "load_raw", "choose_loader_kind"]
