"""The classic path: a map-style dataset, per-sample transforms, torch's DataLoader with worker processes.

Determinism with any number of workers: the batch sampler yields `(epoch, index)` keys, and the dataset
seeds torch's generator from hash(seed, epoch, index) right before transforming that one sample. So a
sample's augmentation depends only on (seed, epoch, index), never on which worker drew it or in what
order, and `batches(epoch, start)` can skip batches by simply not asking for them. The permutation comes
from a torch.Generator seeded by (seed, epoch); under DDP it is sharded like DistributedSampler.

Bytes: the workers hand over what the per-sample transforms make, uint8 for trainlab's own (transforms.py),
and `batches` normalises a uint8 batch on the training device (augment.Normalise with data.mean/std): a
quarter of float32's shared memory per prefetched batch and of its pinned and host-to-device bytes. A float
batch (a user's transform or Dataset made the model's input itself) is handed on as it is.
"""

from __future__ import annotations

import atexit
import math
import random
import signal
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Optional, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from trainlab.data.augment import Normalise
from trainlab.errors import DataError

_MASK64 = (1 << 64) - 1
_PERMUTATION_TAG = 0x5045524D  # keeps the shuffle stream apart from the per-sample streams
_SAMPLE_TAG = 0x53414D50


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _ignore_stop_signals(worker_id: int) -> None:
    """Loader workers leave stop signals to the main process. A spot termination or `kill -TERM -PGID`
    signals the whole process group; a worker that died of it would break the batch in flight before the
    main process reaches the step boundary where it checkpoints, then shuts the workers down itself."""
    for sig in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGUSR1", None)):
        if sig is not None:
            signal.signal(sig, signal.SIG_IGN)


# Worker iterators alive now (a persistent one lives as long as its DataLoader). At interpreter exit,
# multiprocessing's own exit hook terminates daemon children with SIGTERM and joins them; our workers ignore
# SIGTERM (above), so a process still holding workers at exit would wait forever. Our hook shuts them down
# first, through DataLoader's own shutdown (a "done" message each worker obeys).
_LIVE_WORKER_ITERATORS: weakref.WeakSet = weakref.WeakSet()
_exit_hook: list[bool] = []


def _track_workers(iterator: object) -> None:
    if not hasattr(iterator, "_shutdown_workers"):
        return  # num_workers=0: nothing to stop
    _LIVE_WORKER_ITERATORS.add(iterator)
    if not _exit_hook:  # registered once workers exist, so after multiprocessing's hook: atexit runs it first
        atexit.register(_shut_down_live_workers)
        _exit_hook.append(True)


def _shut_down_live_workers() -> None:
    for iterator in list(_LIVE_WORKER_ITERATORS):
        iterator._shutdown_workers()


def stream_seed(*parts: int) -> int:
    """A 63-bit seed that mixes all parts (unlike a sum, (1, 2) and (2, 1) give unrelated streams)."""
    h = 0
    for part in parts:
        h = _splitmix64(h ^ (int(part) & _MASK64))
    return h >> 1


class SampleSource(Protocol):
    """What a dataset kind provides: `load(i)` -> (uint8 CHW RGB tensor, class index)."""

    def __len__(self) -> int: ...
    def load(self, index: int) -> tuple[torch.Tensor, int]: ...


class EpochTransforms:
    """Progressive resizing on the DataLoader path: the transform for a sample key's epoch.
    Picklable (a dict and a SizeSchedule), so worker processes pick by the key's epoch themselves."""

    def __init__(self, by_size: dict[int, Callable[[torch.Tensor], torch.Tensor]], size_at: Callable[[int], int]):
        self.by_size, self.size_at = by_size, size_at

    def for_epoch(self, epoch: int) -> Callable[[torch.Tensor], torch.Tensor]:
        return self.by_size[self.size_at(epoch)]


class _TransformedDataset(Dataset):
    """Keys are (epoch, index); random transforms are seeded per key, restoring the caller's RNG after."""

    def __init__(
        self, source: SampleSource, transform: Callable[[torch.Tensor], torch.Tensor], seed: int, random: bool
    ):
        self.source, self.transform, self.seed, self.random = source, transform, seed, random

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        epoch, index = key
        if getattr(self.source, "seeds_host_rngs", False):
            return self._user_item(epoch, index)
        image, label = self.source.load(index)
        transform = self._transform_for(epoch)
        if not self.random:
            return transform(image), label
        # Only the CPU default generator (v2 transforms draw from it): torch.manual_seed would also reseed
        # the accelerators and costs ~0.7 ms. With num_workers=0 this runs in the training process,
        # whose RNG must not move, so the state is restored afterwards.
        generator = torch.default_generator
        saved = generator.get_state()
        generator.manual_seed(stream_seed(self.seed, epoch, index, _SAMPLE_TAG))
        try:
            return transform(image), label
        finally:
            generator.set_state(saved)

    def _transform_for(self, epoch: int) -> Callable:
        return self.transform.for_epoch(epoch) if isinstance(self.transform, EpochTransforms) else self.transform

    def __getitems__(self, keys: list[tuple[int, int]]) -> list[tuple[torch.Tensor, int]]:
        """A batch (DataLoader's fetcher calls this when it exists): a user's samples are seeded one by one as
        in __getitem__, but the caller's host streams are saved and restored once for the batch. numpy's
        get_state/set_state alone cost ~170 us, ~11 ms a batch of 64 if done per sample; nothing but
        these samples draws from the streams between two of them."""
        if not getattr(self.source, "seeds_host_rngs", False):
            return [self[key] for key in keys]
        saved = (torch.default_generator.get_state(), random.getstate(), np.random.get_state())
        try:
            return [self._seeded_user_item(epoch, index) for epoch, index in keys]
        finally:
            torch.default_generator.set_state(saved[0])
            random.setstate(saved[1])
            np.random.set_state(saved[2])

    def _user_item(self, epoch: int, index: int) -> tuple[torch.Tensor, int]:
        """A user's dataset may draw from torch, `random` and numpy in its own __getitem__, and a user's
        transform from a generator of its own: all are seeded from (seed, epoch, index) around both, so the
        sample is the same whoever loads it and whenever (validation too, for random val transforms)."""
        saved = (torch.default_generator.get_state(), random.getstate(), np.random.get_state())
        try:
            return self._seeded_user_item(epoch, index)
        finally:
            torch.default_generator.set_state(saved[0])
            random.setstate(saved[1])
            np.random.set_state(saved[2])

    def _seeded_user_item(self, epoch: int, index: int) -> tuple[torch.Tensor, int]:
        """One user sample with every host stream seeded from (seed, epoch, index); the caller restores them."""
        seed = stream_seed(self.seed, epoch if self.random else 0, index, _SAMPLE_TAG)
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed & 0xFFFFFFFF)
        reseed = getattr(self.transform, "reseed", None)
        if reseed is not None:
            reseed(seed)
        image, label = self.source.load(index)
        return self._transform_for(epoch)(image), label


@dataclass(frozen=True)
class EpochOrder:
    """Which dataset indices a rank visits per epoch, and in which batches."""

    dataset_size: int
    batch_size: int
    train: bool
    seed: int
    rank: int = 0
    world_size: int = 1
    drop_last: bool = False

    @property
    def num_samples(self) -> int:
        if self.train:  # DistributedSampler semantics: pad the permutation so every rank has the same count
            return math.ceil(self.dataset_size / self.world_size)
        return len(range(self.rank, self.dataset_size, self.world_size))  # val: r::world_size, no padding

    @property
    def num_batches(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def indices(self, epoch: int) -> torch.Tensor:
        n, ws = self.dataset_size, self.world_size
        if not self.train:
            return torch.arange(self.rank, n, ws)
        generator = torch.Generator().manual_seed(stream_seed(self.seed, epoch, _PERMUTATION_TAG))
        order = torch.randperm(n, generator=generator)
        if ws > 1:
            total = self.num_samples * ws
            while len(order) < total:  # repeat the head, as DistributedSampler does
                order = torch.cat([order, order[: total - len(order)]])
            order = order[self.rank : total : ws]
        return order


class _EpochBatchSampler:
    """Batches of (epoch, index) keys for the epoch and start set just before each iteration.

    DataLoader iterates the batch sampler in the main process (also with persistent workers), so
    changing `epoch`/`start` between iterations is seen by the next one. It must not refer back to the
    TorchLoader: that cycle leaves the DataLoader to the cyclic GC, whose teardown order makes each
    worker hang for its 5 s join timeout.
    """

    def __init__(self, order: EpochOrder):
        self.order = order
        self.epoch = 0
        self.start = 0

    def __len__(self) -> int:
        return max(0, self.order.num_batches - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        indices = self.order.indices(self.epoch)
        bs = self.order.batch_size
        for b in range(self.start, self.order.num_batches):
            yield [(self.epoch, int(i)) for i in indices[b * bs : (b + 1) * bs]]


class TorchLoader:
    """The Loader protocol over torch's DataLoader: `batches(epoch, start)` yields (float NCHW, int64 N) on
    `device`: uint8 batches normalised there with `mean`/`std` (None: x / 255), float ones as they are."""

    def __init__(
        self,
        source: SampleSource,
        transform: Callable[[torch.Tensor], torch.Tensor],
        batch_size: int,
        train: bool,
        seed: int,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        prefetch_factor: Optional[int] = None,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        device: Optional[torch.device] = None,
        mean: Optional[tuple] = None,
        std: Optional[tuple] = None,
        channels_last: bool = False,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.device = torch.device(device or "cpu")
        self._norm_stats = (mean, std)
        self._normalisers: dict[int, Normalise] = {}  # by channel count (a user's data may have 1)
        self._channels_last = bool(channels_last)
        self.order = EpochOrder(len(source), batch_size, train, seed, rank, world_size, drop_last)
        self.batch_size = batch_size
        self.num_samples = self.order.num_samples
        self._sampler = _EpochBatchSampler(self.order)
        workers = max(0, int(num_workers))
        self._loader = DataLoader(
            _TransformedDataset(source, transform, seed, random=train),
            batch_sampler=self._sampler,
            num_workers=workers,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers and workers > 0,
            prefetch_factor=(prefetch_factor or 2) if workers > 0 else None,
            collate_fn=_collate,
            # DataLoader draws a worker base seed per epoch; from its own generator, so that iterating
            # never moves the training process's RNG (our augmentation does not use that seed).
            generator=torch.Generator().manual_seed(seed),
            worker_init_fn=_ignore_stop_signals if workers > 0 else None,
        )

    def __len__(self) -> int:
        return self.order.num_batches

    @property
    def channels_last(self) -> bool:
        """Whether normalised batches come in channels_last layout (the run's train.channels_last decision)."""
        return self._channels_last

    @channels_last.setter
    def channels_last(self, on: bool) -> None:
        self._channels_last = bool(on)
        for normalise in self._normalisers.values():
            normalise.channels_last = self._channels_last

    def _on_device(self, images: torch.Tensor) -> torch.Tensor:
        """A collated batch on the device: uint8 pixels normalised there, anything else as it is."""
        images = images.to(self.device, non_blocking=True)
        if images.dtype != torch.uint8:
            return images
        channels = images.shape[1]
        normalise = self._normalisers.get(channels)
        if normalise is None:
            mean, std = self._norm_stats
            mean = tuple(mean)[:channels] if mean is not None else (0.0,) * channels
            std = tuple(std)[:channels] if std is not None else (1.0,) * channels
            normalise = self._normalisers[channels] = Normalise(mean, std, self.device, self._channels_last)
        return normalise(images)

    def indices(self, epoch: int) -> torch.Tensor:
        """The dataset indices this rank visits in `epoch`, in order."""
        return self.order.indices(epoch)

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._sampler.epoch, self._sampler.start = int(epoch), max(0, int(start))
        iterator = iter(self._loader)
        _track_workers(iterator)
        try:
            for images, labels in iterator:  # tuples: see _collate
                yield self._on_device(images), labels
        except DataError as err:  # from a worker the message carries its traceback; keep one line
            message = _original_message(err)
        else:
            return
        # Stop the workers now: left to garbage collection they linger ~5 s each before the error shows.
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
            self._loader._iterator = None  # a persistent iterator is dead now; the next epoch makes a new one
        raise DataError(message)


def _collate(samples: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = default_collate(samples)  # a list; the Loader protocol promises a tuple
    return images, labels


def _original_message(err: Exception) -> str:
    text = str(err)
    for line in reversed(text.strip().splitlines()):
        marker = "DataError: "
        if marker in line:
            return line.split(marker, 1)[1]
    return text.strip().splitlines()[-1] if text.strip() else text
