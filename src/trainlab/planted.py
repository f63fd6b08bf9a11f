"""Planted faults: TEST-ONLY drills that break a run on purpose, so the watch and the doctor can be shown to
catch them (tests, `bench/watch_zoo.py`). Read from the environment; unset, nothing happens.

`TRAINLAB_PLANT=fault[,fault...]`, each fault optionally `name:value`:

- `shuffle_labels`   the train labels are permuted across samples once (labels detached from their images;
                     the class histogram stays the same). Val labels stay right, so val accuracy shows it.
- `bn_eval`          every BatchNorm layer runs in eval mode during training (running stats frozen at init).
- `leak[:KB]`        the train loader keeps KB kilobytes of host memory alive per batch (default 300).
- `slow_loader[:MS]` the train loader sleeps MS milliseconds before each batch (default 50).

Faults that a config can express are planted through the config instead (optim.lr far off, a random
backbone frozen with model.freeze_backbone=true, weight decay, data.mean/data.std=1/255 for raw 0..255 inputs).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

KNOWN = ("shuffle_labels", "bn_eval", "leak", "slow_loader")
_kept_alive: list[torch.Tensor] = []  # the planted leak: never cleared while the process lives


def planted() -> dict[str, str]:
    """The faults named in TRAINLAB_PLANT: name -> value ('' when none given)."""
    spec = os.environ.get("TRAINLAB_PLANT", "").strip()
    faults: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, value = item.partition(":")
        if name not in KNOWN:
            raise ValueError(f"TRAINLAB_PLANT: unknown fault {name!r}; known: {', '.join(KNOWN)}")
        faults[name] = value
    return faults


class _PlantedLoader:
    """Wraps a train loader; every attribute but `batches` is the wrapped loader's."""

    def __init__(self, inner: Any, leak_kb: float, sleep_ms: float) -> None:
        self._inner, self._leak_kb, self._sleep_ms = inner, leak_kb, sleep_ms

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __len__(self) -> int:
        return len(self._inner)

    def batches(self, epoch: int, start: int = 0) -> Iterator:
        for batch in self._inner.batches(epoch, start):
            if self._sleep_ms:
                time.sleep(self._sleep_ms / 1000.0)
            if self._leak_kb:  # ones() writes every page, so the memory is resident (RSS grows)
                _kept_alive.append(torch.ones(int(self._leak_kb * 256), dtype=torch.float32))
            yield batch


def _shuffle_labels(loader: Any, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed + 1234)
    if hasattr(loader, "_labels"):  # the tensor loader
        labels = loader._labels
        loader._labels = labels[torch.randperm(len(labels), generator=generator).to(labels.device)]
        return
    source = getattr(getattr(getattr(loader, "_loader", None), "dataset", None), "source", None)
    if source is not None and hasattr(source, "labels"):  # an in-memory source behind the DataLoader
        source.labels = source.labels[torch.randperm(len(source.labels), generator=generator).numpy()]
        return
    raise ValueError("TRAINLAB_PLANT=shuffle_labels supports in-memory datasets only (shapes, cifar, packed)")


def _bn_eval(model: nn.Module) -> None:
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def force_eval(module: nn.Module, args: Any) -> None:
        for m in norms:
            m.training = False

    model.register_forward_pre_hook(force_eval)


def plant_data(data: Any, seed: int = 0) -> None:
    """Apply the data faults named in TRAINLAB_PLANT to a built DataBundle, in place."""
    faults = planted()
    if "shuffle_labels" in faults:
        _shuffle_labels(data.train, seed)
    leak_kb = float(faults["leak"] or 300) if "leak" in faults else 0.0
    sleep_ms = float(faults["slow_loader"] or 50) if "slow_loader" in faults else 0.0
    if leak_kb or sleep_ms:
        data.train = _PlantedLoader(data.train, leak_kb, sleep_ms)


def plant_model(model: nn.Module) -> None:
    """Apply the model faults named in TRAINLAB_PLANT, in place."""
    if "bn_eval" in planted():
        _bn_eval(model)


def plant(data: Any, model: nn.Module, seed: int = 0) -> None:
    """Both: what `trainlab train` calls once the data and the model are built."""
    plant_data(data, seed)
    plant_model(model)
