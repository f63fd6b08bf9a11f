"""A user's own data: a map-style Dataset of (image, label), or any iterable of (images, labels) batches.

A map-style Dataset gets every guarantee of the built-in data: it goes through the DataLoader path
(torch_loader.py), so rank r takes positions r::N of the epoch's permutation, the order is a pure function of
(train.seed, epoch) and a stopped run continues at its batch, bitwise, with any data.num_workers. Each
sample is read and transformed with every host random stream (torch, `random`, numpy, and an
albumentations pipeline's own) seeded from (seed, epoch, index), so random transforms inside the user's
`__getitem__` replay too. Images may be PIL images, numpy arrays or tensors (uint8, or float: taken as the
model's input, with no augmentation of trainlab's added); labels ints or 0-d tensors.

With no transform of the user's, trainlab's augmentation plan applies to uint8 images (aug.crop, aug.hflip...)
and normalisation with data.mean/data.std; a user transform (`train_transform`, `aug.train_transform`) replaces
it and its output is normalised only when it is not already a float tensor.

An iterable without `__getitem__` (a plain DataLoader, a streaming dataset) is read as it is: each rank
reads what it yields, resume skips the batches already consumed, and its order on resume is its own
business: a DataLoader whose shuffling draws from torch's global generator replays, because the generators'
state at the epoch's start is saved with the checkpoint and set again before the iterator is made.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Optional

import numpy as np
import torch

from trainlab.config import micro_batch_cap
from trainlab.data import transforms as T
from trainlab.errors import ConfigError, DataError

ITEM_KEYS = (("image", "img", "pixel_values", "input"), ("label", "labels", "target", "y"))


def is_map_style(data: Any) -> bool:
    return hasattr(data, "__getitem__") and hasattr(data, "__len__") and not isinstance(data, (str, bytes))


def split_item(item: Any, where: str) -> tuple[Any, Any]:
    """(image, label) from a dataset item: a pair, or a dict with image/label keys."""
    if isinstance(item, dict):
        keys = [next((k for k in names if k in item), None) for names in ITEM_KEYS]
        if None not in keys:
            return item[keys[0]], item[keys[1]]
        raise DataError(f"{where} is a dict with keys {sorted(item)[:6]}; expected (image, label) or keys "
                        "image and label")  # fmt: skip
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return item[0], item[1]
    got = f"a {type(item).__name__}" + (f" of {len(item)}" if isinstance(item, (tuple, list)) else "")
    raise DataError(f"{where} is {got}; expected (image, label)")


def label_index(label: Any, where: str) -> int:
    if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
        return int(label)
    if torch.is_tensor(label) and label.numel() == 1 and not label.is_floating_point():
        return int(label.item())
    if isinstance(label, np.ndarray) and label.size == 1 and np.issubdtype(label.dtype, np.integer):
        return int(label.reshape(()))
    shape = tuple(getattr(label, "shape", ()))
    raise DataError(f"{where}: the label is {type(label).__name__}{' of shape ' + str(shape) if shape else ''} "
                    f"{label!r:.30}; expected an int class index")  # fmt: skip


def is_pil(image: Any) -> bool:
    return type(image).__module__.startswith("PIL.")


def to_uint8_chw(image: Any, where: str) -> torch.Tensor:
    """A PIL image, an HWC/HW numpy array or a CHW/HWC uint8 tensor as a uint8 CHW tensor."""
    if is_pil(image):
        if image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        image = np.asarray(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise DataError(f"{where}: a {image.dtype} numpy image; give uint8 pixels or a float tensor")
        array = image[:, :, None] if image.ndim == 2 else image
        if array.ndim != 3:
            raise DataError(f"{where}: a numpy image of shape {image.shape}; expected H x W (x C)")
        return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).contiguous()
    if torch.is_tensor(image):
        if image.dtype != torch.uint8:
            raise DataError(f"{where}: a {image.dtype} tensor image; give uint8 or float32 pixels")
        if image.dim() == 2:
            return image[None]
        if image.dim() == 3 and image.shape[0] not in (1, 3) and image.shape[-1] in (1, 3):
            return image.permute(2, 0, 1).contiguous()  # HWC
        if image.dim() == 3:
            return image
    raise DataError(f"{where}: an image of type {type(image).__name__}; give a PIL image, a uint8 array or tensor, "
                    "or a float tensor")  # fmt: skip


def _as_tensor_out(out: Any) -> Any:
    """A transform's output as trainlab handles it: numpy -> tensor (HWC -> CHW), a kornia 1xCxHxW -> CxHxW."""
    if isinstance(out, np.ndarray):
        array = out[:, :, None] if out.ndim == 2 else out
        tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).contiguous()
        return tensor.float() if np.issubdtype(out.dtype, np.floating) else tensor
    if torch.is_tensor(out) and out.dim() == 4 and out.shape[0] == 1:
        return out[0]
    return out


def apply_transform(transform: Callable, image: Any) -> Any:
    """Call a user transform the way its library expects: albumentations takes `image=` a numpy HWC array."""
    if type(transform).__module__.startswith("albumentations"):
        if torch.is_tensor(image):
            image = to_uint8_chw(image, "image").permute(1, 2, 0).numpy() if image.dtype == torch.uint8 else (
                image.permute(1, 2, 0).numpy())  # fmt: skip
        elif not isinstance(image, np.ndarray):
            image = np.asarray(image.convert("RGB") if is_pil(image) else image)
        return transform(image=image)["image"]
    return transform(image)


class UserSampleTransform:
    """One sample's image -> the model's input: the user's transform, or trainlab's plan. Pixels stay uint8
    CHW (TorchLoader normalises the batch on the device with data.mean/data.std); a float tensor, from the
    user's transform or Dataset, is the model's input as it is."""

    def __init__(self, user_transform: Optional[Callable], builtin: Callable, mean: tuple, std: tuple):
        self.user_transform, self.builtin, self.mean, self.std = user_transform, builtin, mean, std

    def reseed(self, seed: int) -> None:
        """Libraries with a generator of their own (albumentations' Compose) are reseeded per sample."""
        set_seed = getattr(self.user_transform, "set_random_seed", None)
        if callable(set_seed):
            set_seed(seed & 0xFFFFFFFF)

    def __call__(self, image: Any) -> torch.Tensor:
        if self.user_transform is None:
            if torch.is_tensor(image) and image.is_floating_point():
                return image.float()  # the dataset's own transforms made the model's input
            return self.builtin(to_uint8_chw(image, "image"))
        out = _as_tensor_out(apply_transform(self.user_transform, image))
        if torch.is_tensor(out) and out.is_floating_point():
            return out.float()
        return to_uint8_chw(out, "the transform's output")


class DatasetSource:
    """The SampleSource of torch_loader.py over a user's map-style Dataset: load(i) -> (raw image, int)."""

    seeds_host_rngs = True  # the user's __getitem__ may draw from random / numpy: seed them per sample

    def __init__(self, dataset: Any, name: str):
        self.dataset, self.name = dataset, name

    def __len__(self) -> int:
        return len(self.dataset)

    def load(self, index: int) -> tuple[Any, int]:
        where = f"{self.name}[{index}]"
        image, label = split_item(self.dataset[index], where)
        return image, label_index(label, where)


def class_info(train: Any, given_names: Optional[list[str]], num_classes: Optional[int]) -> tuple[int, list[str]]:
    """How many classes and their names: model.num_classes, the data's `classes`, or its `targets`/`labels`."""
    names = given_names or getattr(train, "classes", None) or getattr(getattr(train, "dataset", None), "classes", None)
    names = [str(n) for n in names] if names is not None and not isinstance(names, str) else None
    count = len(names) if names else None
    if count is None:
        for attr in ("targets", "labels"):
            labels = getattr(train, attr, None)
            if labels is not None and len(labels):
                count = int(max(label_index(v, f"train_data.{attr}") for v in labels)) + 1
                break
    if num_classes:
        count = int(num_classes) if count is None else max(count, int(num_classes)) if names is None else count
    if count is None:
        raise ConfigError("your data does not say how many classes it has (no `classes`, `targets` or `labels`); "
                          "set model.num_classes=N")  # fmt: skip
    return count, names or [str(i) for i in range(count)]


def stored_size(image: Any) -> Optional[tuple[int, int]]:
    """(height, width) of a sample's image, when it has one."""
    if is_pil(image):
        return image.size[1], image.size[0]
    shape = tuple(getattr(image, "shape", ()))
    if len(shape) == 3:
        return (shape[1], shape[2]) if shape[0] in (1, 3) else (shape[0], shape[1])
    return (shape[0], shape[1]) if len(shape) == 2 else None


def channels(image: Any) -> int:
    if is_pil(image):
        return 1 if image.mode == "L" else 3
    shape = tuple(getattr(image, "shape", ()))
    if len(shape) == 3:
        return shape[0] if shape[0] in (1, 3) else shape[-1]
    return 1


class IterableLoader:
    """The Loader protocol over a user's iterable of (images, labels) batches, read as it is.

    `batches(epoch, start)` skips `start` batches by reading them. The host random generators' state at the
    start of each epoch is part of `state_dict()`, so a resume makes the iterator from the same state: a
    DataLoader shuffling with torch's default generator draws the same order and worker seeds again."""

    def __init__(self, iterable: Any, num_batches: int, batch_size: int, mean: tuple, std: tuple, name: str,
                 device: Any = "cpu"):  # fmt: skip
        self.iterable, self.name, self.mean, self.std = iterable, name, mean, std
        self.device = torch.device(device)
        self._normalisers: dict = {}  # by channel count
        self.batch_size, self._len = batch_size, num_batches
        self.num_samples = num_batches * batch_size
        self._epoch_rng: Optional[dict] = None
        self._epoch_of_rng: Optional[int] = None

    def __len__(self) -> int:
        return self._len

    def state_dict(self) -> dict:
        return {"epoch_rng": self._epoch_rng, "epoch": self._epoch_of_rng}

    def load_state_dict(self, state: dict) -> None:
        self._epoch_rng, self._epoch_of_rng = state.get("epoch_rng"), state.get("epoch")

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from trainlab.rng import capture_rng, restore_rng

        sampler = getattr(self.iterable, "sampler", None)
        if callable(getattr(sampler, "set_epoch", None)):
            sampler.set_epoch(epoch)  # a DistributedSampler the user built: its shuffle follows the epoch
        replay = start > 0 and self._epoch_of_rng == epoch and self._epoch_rng is not None
        if replay:
            now = capture_rng()
            restore_rng(self._epoch_rng)
        else:
            self._epoch_rng, self._epoch_of_rng = capture_rng(), epoch
        iterator = iter(self.iterable)
        for _ in range(start):  # read and dropped: the run consumed them before it stopped
            if next(iterator, None) is None:
                break
        if replay:
            restore_rng(now)
        for index, batch in enumerate(iterator, start):
            if index >= self._len:
                return
            yield self._to_batch(batch, index)

    def _to_batch(self, batch: Any, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = split_item(batch, f"{self.name} batch {index}")
        if not torch.is_tensor(images):
            raise DataError(f"{self.name} batch {index}: images are {type(images).__name__}; an iterable of batches "
                            "must yield (N x C x H x W tensor, N labels)")  # fmt: skip
        if not images.is_floating_point():  # pixels: normalised on the device, as every loader does
            from trainlab.data.augment import Normalise

            c = images.shape[1]
            if c not in self._normalisers:
                self._normalisers[c] = Normalise(self.mean[:c], self.std[:c], self.device)
            images = self._normalisers[c](images.to(self.device, non_blocking=True))
        labels = torch.as_tensor(labels)
        if labels.is_floating_point() or labels.dim() != 1:
            raise DataError(f"{self.name} batch {index}: labels of dtype {labels.dtype} and shape "
                            f"{tuple(labels.shape)}; expected N int class indices")  # fmt: skip
        return images, labels.long()


def iterable_length(data: Any, cfg: Any, name: str) -> int:
    try:
        return len(data)
    except TypeError:
        if cfg.train.max_steps_per_epoch:
            return micro_batch_cap(cfg)
        raise ConfigError(f"{name} has no length (a streaming iterable): set train.max_steps_per_epoch=N, the "
                          "optimizer steps per epoch (it then reads N x train.grad_accum batches), so the LR "
                          "schedule and the epoch have an end") from None


def build_user_data(cfg: Any, user: Any, device: torch.device, rank: int, world_size: int) -> Any:
    """A DataBundle over the user's train/val data (trainlab.user.UserParts)."""
    from trainlab.data import DataBundle, _batch_sizes, _norm_stats, unused_workers_note
    from trainlab.data.augment import resolve_plan
    from trainlab.data.torch_loader import TorchLoader

    if user.val_data is None:
        raise ConfigError("val_data is missing: give a validation Dataset too (a held-out part of your data)")
    bs, val_bs = _batch_sizes(cfg)
    seed = int(cfg.train.seed)
    if not is_map_style(user.train_data):
        if user.train_transform is not None or user.val_transform is not None:
            raise ConfigError("train_transform/val_transform apply to one sample of a map-style Dataset; your data "
                              "is an iterable of batches: transform inside it")  # fmt: skip
        mean, std = _norm_stats(cfg, T.IMAGENET_MEAN, T.IMAGENET_STD)
        train = IterableLoader(user.train_data, iterable_length(user.train_data, cfg, "train_data"),
                               int(getattr(user.train_data, "batch_size", None) or bs), mean, std, "train_data", device)
        val = IterableLoader(user.val_data, iterable_length(user.val_data, cfg, "val_data"),
                             int(getattr(user.val_data, "batch_size", None) or val_bs), mean, std, "val_data", device)  # fmt: skip
        num_classes, names = class_info(user.train_data, user.class_names, cfg.model.num_classes)
        summary = (f"data: your iterable of batches ({len(train)} train, {len(val)} val batches per epoch), read as "
                   "it is: resume skips the batches already read, and is exact only if the iterable yields the same "
                   "batches again (a DataLoader shuffling with torch's generator does)"
                   + ("; under DDP each rank reads it as given: shard it yourself" if world_size > 1 else "")
                   + unused_workers_note(cfg, "iterable"))  # fmt: skip
        return DataBundle(train, val, num_classes, names, tuple(mean), tuple(std), "iterable", summary)

    if not is_map_style(user.val_data):
        raise ConfigError(f"val_data is a {type(user.val_data).__name__}; give a map-style Dataset like train_data")
    if len(user.train_data) == 0 or len(user.val_data) == 0:
        raise DataError(f"{'train_data' if len(user.train_data) == 0 else 'val_data'} is empty")
    train_source, val_source = DatasetSource(user.train_data, "train_data"), DatasetSource(user.val_data, "val_data")
    first_image, first_label = train_source.load(0)
    num_classes, names = class_info(user.train_data, user.class_names, cfg.model.num_classes)
    if first_label >= num_classes or first_label < 0:
        raise DataError(f"train_data[0] has label {first_label}, outside 0..{num_classes - 1}; set model.num_classes")
    c = channels(first_image)
    default_mean, default_std = (T.IMAGENET_MEAN, T.IMAGENET_STD) if c == 3 else ((0.5,) * c, (0.25,) * c)
    mean, std = _norm_stats_any(cfg, default_mean, default_std, c, _norm_stats)
    size = stored_size(first_image)
    float_input = torch.is_tensor(first_image) and first_image.is_floating_point()
    if not isinstance(cfg.data.img_size, int):
        raise ConfigError("data.img_size schedules (progressive resizing) apply to trainlab's datasets; give one size")
    # 32 is the schema default, not a choice: train at the data's own size unless another size was asked for.
    out_size = (min(size) if size else 32) if cfg.data.img_size == 32 else int(cfg.data.img_size)
    plan = resolve_plan(cfg.aug, min(size) if size else None, out_size, max(4, out_size // 8))
    geometry = "small" if plan.crop in ("pad", "none") else "folder"
    builtin_train = T.build_train_transform(geometry, out_size, cfg.aug.policy, float(cfg.aug.random_erasing),
                                            mean, std, plan.pad, plan)  # fmt: skip
    builtin_val = T.build_val_transform(geometry, out_size, mean, std, plan)
    train_tf = UserSampleTransform(user.train_transform, builtin_train, mean, std)
    val_tf = UserSampleTransform(user.val_transform, builtin_val, mean, std)
    from trainlab.data import input_channels_last

    common = dict(seed=seed, num_workers=int(cfg.data.num_workers),
                  pin_memory=bool(cfg.data.pin_memory) and torch.device(device).type == "cuda",
                  persistent_workers=bool(cfg.data.persistent_workers), rank=rank, world_size=world_size,
                  device=device, mean=mean, std=std, channels_last=input_channels_last(cfg, device))  # fmt: skip
    train = TorchLoader(train_source, train_tf, bs, train=True, **common)
    val = TorchLoader(val_source, val_tf, val_bs, train=False, **common)
    if user.train_transform is not None:
        how = f"your train_transform ({_describe(user.train_transform)})"
    elif float_input:
        how = "your dataset's float tensors as they are (its own transforms; trainlab adds none)"
    else:
        how = f"{plan.describe()}, normalised with mean {_fmt(mean)} std {_fmt(std)}"
    summary = (f"data: your Dataset ({len(user.train_data)} train, {len(user.val_data)} val, {num_classes} classes) "
               f"through the DataLoader, {int(cfg.data.num_workers)} workers; {how}; order a function of "
               "(train.seed, epoch), resumable at any batch")  # fmt: skip
    return DataBundle(train, val, num_classes, names, tuple(mean), tuple(std), "torch", summary)


def _norm_stats_any(cfg: Any, mean: tuple, std: tuple, c: int, three_channel: Callable) -> tuple[tuple, tuple]:
    """data.mean/data.std for images of `c` channels (trainlab's own check wants three)."""
    if c == 3:
        return three_channel(cfg, mean, std)
    out = []
    for key, default in (("mean", mean), ("std", std)):
        value = cfg.data[key]
        value = tuple(float(v) for v in value) if value is not None else tuple(default)
        if len(value) != c or (key == "std" and min(value) <= 0):
            raise ConfigError(f"data.{key}={list(value)}: your images have {c} channel(s); give {c} number(s)")
        out.append(value)
    return out[0], out[1]


def _fmt(values: tuple) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in values) + "]"


def _describe(transform: Any) -> str:
    name = getattr(transform, "__name__", None)
    return name or f"{type(transform).__module__.split('.')[0]}.{type(transform).__qualname__}"
