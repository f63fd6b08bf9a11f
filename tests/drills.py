"""Fault drills for the tests and the benchmarks: callbacks, models and datasets that break a real run on purpose.

Nothing in trainlab reads them: a test installs them like any user would, through `train.callbacks` (an import
path: `tests.drills:SelfSignal`, with its keyword arguments), `model.name=tests.drills:...` or
`data.name=tests.drills:...`, or through `trainlab.fit(callbacks=[...])`. The subprocesses the tests start see
this module because conftest.py puts the repository on PYTHONPATH.

Callbacks (`callback(name, **kwargs)` writes the override):
- SelfSignal(phase, epoch, batch, signal="SIGTERM"): this process sends itself a real signal just before that
  batch is handed over (phase train or val, epoch 1-based, batch 0-based), so the stop lands at that batch's
  optimizer-step boundary (for val: before that val batch). `rank` limits it to one rank.
- FailRank(rank, epoch, batch, exit_code=None): that rank raises RuntimeError instead of handing over that train
  batch; with exit_code, it prints one line and its process exits with that code at once.
- SlowRank(rank, seconds): that rank's model sleeps in every forward (a straggler's slow compute).
- SlowHook(seconds): every rank sleeps at each optimizer-step boundary, where checkpoints and stop agreements
  happen: host work that must count as `other` time, never as compute.
- RankHashes(dir): at the end every rank writes the sha256 of its final weights to dir/rank{R}.sha256.
- CountCollectives(dir): every rank counts the bookkeeping collectives it issues (torch.distributed's Python
  functions; DDP's gradient buckets do not go through them), by phase (train = inside the training loops),
  and writes dir/rank{R}.json with the optimizer-step boundaries and micro-batches of the run.
- CountSyncs(dir): on CUDA, torch's sync debug mode for the run; every host-device sync is counted by phase.
- Leak(kb), SlowLoader(ms): the train loader keeps kb KB alive per batch / sleeps ms before each batch.
- StopAfter(steps, reason): asks the run to stop cleanly (run.request_stop) after that many optimizer steps.
- Record(path): appends every hook call to a JSON-lines file (which hooks ran, with what).
- RecordLR(path): appends, just before every optimizer step, the LR that step trains with (the optimizer's
  param group 0, through torch's step pre-hook) as {"step": 1-based optimizer step, "lr", "weight_decay"}.
- SeenSamples(dir): every rank appends, per train batch it hands over, the dataset indices the loader says
  that batch holds and the labels it yields, to dir/rank{R}-pid{P}.jsonl (which samples a step trained on).

Models and data (import paths for model.name / data.name):
- bn_eval_model(name="resnet8", num_classes): a registry model whose BatchNorm layers run in eval mode
  while it trains (running statistics frozen at init).
- oom_model(limits="0:20,1:17", name="resnet8", drop_rate, num_classes): raises torch.OutOfMemoryError for batches
  above this rank's limit, as a full GPU would: the largest-batch search finds the limit on a CPU.
- shuffled_shapes(train_size, val_size, img_size, seed): the built-in shapes data as Datasets with the train
  labels permuted once (labels detached from their images; the class histogram stays), val labels right.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal as signal_module
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from trainlab.train.batch_finder import OUT_OF_MEMORY


def callback(name: str, **kwargs: Any) -> str:
    """The `train.callbacks=[...]` override that installs the drill `name` with `kwargs`."""
    inner = ", ".join([f"target: tests.drills:{name}"] + [f"{k}: {json.dumps(v)}" for k, v in kwargs.items()])
    return f"train.callbacks=[{{{inner}}}]"


def callbacks(*specs: tuple[str, dict]) -> str:
    """Several drills at once: callbacks(("SelfSignal", {...}), ("RankHashes", {...}))."""
    items = []
    for name, kwargs in specs:
        inner = ", ".join([f"target: tests.drills:{name}"] + [f"{k}: {json.dumps(v)}" for k, v in kwargs.items()])
        items.append("{" + inner + "}")
    return f"train.callbacks=[{', '.join(items)}]"


def self_signal(spec: str) -> str:
    """The override for `PHASE:EPOCH:BATCH[:SIGNAL]` (the old TRAINLAB_SELF_SIGNAL form)."""
    phase, epoch, batch, *sig = spec.split(":")
    return callback("SelfSignal", phase=phase, epoch=int(epoch), batch=int(batch), signal=sig[0] if sig else "SIGTERM")


def plant(spec: str, train_size: int = 320, val_size: int = 160, img_size: int = 16, model: str = "resnet8") -> list[str]:
    """Overrides that plant the faults of `spec` (the old TRAINLAB_PLANT form: shuffle_labels, bn_eval, leak[:KB],
    slow_loader[:MS], comma-separated) into a run of the built-in shapes data of that size."""
    out, hooks = [], []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, value = item.partition(":")
        if name == "shuffle_labels":
            out += ["data.name=tests.drills:shuffled_shapes",
                    f"data.kwargs={{train_size: {train_size}, val_size: {val_size}, img_size: {img_size}}}"]
        elif name == "bn_eval":
            out += ["model.name=tests.drills:bn_eval_model", f"model.kwargs={{name: {model}}}"]
        elif name == "leak":
            hooks.append(("Leak", {"kb": float(value or 300)}))
        elif name == "slow_loader":
            hooks.append(("SlowLoader", {"ms": float(value or 50)}))
        else:
            raise ValueError(f"unknown planted fault {name!r}")
    return out + ([callbacks(*hooks)] if hooks else [])


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


class _LoaderWrapper:
    """A loader whose batches pass through `before(epoch, index)`; every other attribute is the loader's."""

    def __init__(self, inner: Any, before) -> None:
        self._inner, self._before = inner, before

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __len__(self) -> int:
        return len(self._inner)

    def batches(self, epoch: int, start: int = 0):
        for index, batch in enumerate(self._inner.batches(epoch, start), start):
            self._before(epoch, index)
            yield batch


class SelfSignal:
    def __init__(self, phase: str, epoch: int, batch: int, signal: str = "SIGTERM", rank: Optional[int] = None):
        self.point = (phase, int(epoch), int(batch))
        self.signal = getattr(signal_module, signal if signal.startswith("SIG") else f"SIG{signal}")
        self.rank = rank

    def on_train_start(self, run: Any) -> None:
        if self.rank is not None and self.rank != _rank():
            return
        run.data.train = _LoaderWrapper(run.data.train, lambda epoch, index: self._maybe("train", epoch, index))
        run.data.val = _LoaderWrapper(run.data.val, lambda epoch, index: self._maybe("val", run.epoch, index))

    def _maybe(self, phase: str, epoch: int, index: int) -> None:
        if (phase, epoch, index) == self.point:
            self.point = None
            os.kill(os.getpid(), self.signal)


class FailRank:
    def __init__(self, rank: int, epoch: int, batch: int, exit_code: Optional[int] = None):
        self.rank, self.at = int(rank), (int(epoch), int(batch))
        self.exit_code = None if exit_code is None else int(exit_code)

    def on_train_start(self, run: Any) -> None:
        if _rank() == self.rank:
            run.data.train = _LoaderWrapper(run.data.train, self._maybe)

    def _maybe(self, epoch: int, index: int) -> None:
        if (epoch, index) == self.at:
            if self.exit_code is not None:  # the process ends with that code at once (no teardown, no traceback)
                print(f"FailRank drill: rank {self.rank} exits {self.exit_code} at epoch {epoch}, batch {index}",
                      file=sys.stderr, flush=True)  # fmt: skip
                os._exit(self.exit_code)
            raise RuntimeError(f"FailRank drill: rank {self.rank} fails at epoch {epoch}, batch {index}")


class SlowRank:
    def __init__(self, rank: int, seconds: float):
        self.rank, self.seconds = int(rank), float(seconds)

    def on_train_start(self, run: Any) -> None:
        if _rank() == self.rank:
            run.raw_model.register_forward_pre_hook(lambda module, args: time.sleep(self.seconds))


class SlowHook:
    def __init__(self, seconds: float):
        self.seconds = float(seconds)

    def on_step_end(self, run: Any, step: int) -> None:
        time.sleep(self.seconds)


def weights_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over a state_dict (names and raw bytes, in order): equal iff the weights are bitwise equal."""
    h = hashlib.sha256()
    for name, tensor in state_dict.items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class RankHashes:
    def __init__(self, dir: str):
        self.dir = Path(dir)

    def on_train_end(self, run: Any, summary: dict) -> None:
        if summary.get("status") == "finished":
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / f"rank{_rank()}.sha256").write_text(weights_digest(run.raw_model.state_dict()) + "\n")


class CountCollectives:
    NAMES = ("all_reduce", "broadcast", "all_gather", "all_gather_object", "broadcast_object_list", "barrier")

    def __init__(self, dir: str):
        self.dir = Path(dir)
        self.counts: Counter = Counter()
        self.by_phase: Counter = Counter()
        self.phase = "setup"
        self.originals: dict[str, Any] = {}

    def on_train_start(self, run: Any) -> None:
        for name in self.NAMES:
            original = getattr(torch.distributed, name)
            self.originals[name] = original
            setattr(torch.distributed, name, self._counting(name, original))
        train_epoch = run.trainer.train_epoch

        def in_training(*args: Any, **kwargs: Any):  # the phase the test cares about: inside the loops
            self.phase = "train"
            try:
                return train_epoch(*args, **kwargs)
            finally:
                self.phase = "epoch"

        run.trainer.train_epoch = in_training
        self.phase = "epoch"

    def _counting(self, name: str, original):
        def counted(*args: Any, **kwargs: Any):
            self.counts[name] += 1
            self.by_phase[self.phase] += 1
            return original(*args, **kwargs)

        return counted

    def on_train_end(self, run: Any, summary: dict) -> None:
        for name, original in self.originals.items():
            setattr(torch.distributed, name, original)
        self.dir.mkdir(parents=True, exist_ok=True)
        record = {"counts": dict(self.counts), "total": sum(self.counts.values()), "by_phase": dict(self.by_phase),
                  "optimizer_steps": run.trainer.global_step, "boundaries": run.boundaries,
                  "micro_batches": run.trainer.micro_step}  # fmt: skip
        (self.dir / f"rank{_rank()}.json").write_text(json.dumps(record))


class CountSyncs:
    """torch's sync debug mode warns at every synchronising call; each warning is counted instead of shown."""

    def __init__(self, dir: str):
        self.dir = Path(dir)
        self.phase = "setup"
        self.by_phase: Counter = Counter()
        self.places: Counter = Counter()
        self.active = torch.cuda.is_available()

    def on_train_start(self, run: Any) -> None:
        if self.active:
            self._show = warnings.showwarning
            warnings.simplefilter("always", UserWarning)
            warnings.showwarning = self._count
            torch.cuda.set_sync_debug_mode("warn")
        train_epoch = run.trainer.train_epoch

        def in_training(*args: Any, **kwargs: Any):
            self.phase = "train"
            try:
                return train_epoch(*args, **kwargs)
            finally:
                self.phase = "epoch"

        run.trainer.train_epoch = in_training

    def _count(self, message, category, filename, lineno, file=None, line=None) -> None:
        if "synchroniz" in str(message):
            self.by_phase[self.phase] += 1
            self.places[f"{Path(filename).name}:{lineno}"] += 1
        else:
            self._show(message, category, filename, lineno, file, line)

    def on_train_end(self, run: Any, summary: dict) -> None:
        if self.active:
            torch.cuda.set_sync_debug_mode(0)
            warnings.showwarning = self._show
        self.dir.mkdir(parents=True, exist_ok=True)
        record = {"cuda": self.active, "by_phase": dict(self.by_phase), "optimizer_steps": run.trainer.global_step,
                  "micro_batches": run.trainer.micro_step, "top_places": self.places.most_common(20)}  # fmt: skip
        (self.dir / f"rank{_rank()}.json").write_text(json.dumps(record))


_kept_alive: list[torch.Tensor] = []  # the planted leak: never cleared while the process lives


class Leak:
    def __init__(self, kb: float = 300):
        self.kb = float(kb)

    def on_train_start(self, run: Any) -> None:
        # ones() writes every page, so the memory is resident (RSS grows)
        run.data.train = _LoaderWrapper(
            run.data.train, lambda epoch, index: _kept_alive.append(torch.ones(int(self.kb * 256))))


class SlowLoader:
    def __init__(self, ms: float = 50):
        self.seconds = float(ms) / 1000.0

    def on_train_start(self, run: Any) -> None:
        run.data.train = _LoaderWrapper(run.data.train, lambda epoch, index: time.sleep(self.seconds))


class StopAfter:
    def __init__(self, steps: int, reason: str = "enough"):
        self.steps, self.reason = int(steps), str(reason)

    def on_step_end(self, run: Any, step: int) -> None:
        if step >= self.steps:
            run.request_stop(self.reason)


class SeenSamples:
    def __init__(self, dir: str):
        self.dir = Path(dir)

    def on_train_start(self, run: Any) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        run.data.train = _RecordingLoader(run.data.train, self.dir / f"rank{_rank()}-pid{os.getpid()}.jsonl")


class _RecordingLoader(_LoaderWrapper):
    def __init__(self, inner: Any, path: Path) -> None:
        super().__init__(inner, lambda epoch, index: None)
        self._path = path

    def batches(self, epoch: int, start: int = 0):
        ids, bs = self._inner.indices(epoch).tolist(), self._inner.batch_size
        for index, (images, labels) in enumerate(self._inner.batches(epoch, start), start):
            with open(self._path, "a") as f:
                record = {"epoch": epoch, "batch": index, "ids": ids[index * bs : (index + 1) * bs],
                          "labels": labels.tolist()}  # fmt: skip
                f.write(json.dumps(record) + "\n")
            yield images, labels


class Record:
    def __init__(self, path: str):
        self.path = Path(path)

    def _write(self, hook: str, **data: Any) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"hook": hook, "rank": _rank(), **data}, default=str) + "\n")

    def on_train_start(self, run: Any) -> None:
        self._write("on_train_start", epoch=run.epoch, resumed=run.resumed)

    def on_step_end(self, run: Any, step: int) -> None:
        self._write("on_step_end", step=step)

    def on_log(self, run: Any, record: dict) -> None:
        self._write("on_log", step=record.get("step"))

    def on_epoch_end(self, run: Any, row: dict) -> None:
        self._write("on_epoch_end", epoch=row["epoch"], val_acc1=row["val_acc1"])

    def on_event(self, run: Any, event: dict) -> None:
        self._write("on_event", kind=event["kind"])

    def on_checkpoint(self, run: Any, path: Path) -> None:
        self._write("on_checkpoint", path=str(path))

    def on_train_end(self, run: Any, summary: dict) -> None:
        self._write("on_train_end", status=summary["status"])


class RecordLR:
    def __init__(self, path: str):
        self.path = Path(path)

    def on_train_start(self, run: Any) -> None:
        trainer = run.trainer

        def before_step(optimizer: Any, args: Any, kwargs: Any) -> None:
            with open(self.path, "a") as f:
                group = optimizer.param_groups[0]
                f.write(json.dumps({"step": trainer.global_step + 1, "lr": group["lr"],
                                    "weight_decay": group.get("weight_decay")}) + "\n")  # fmt: skip

        trainer.optimizer.register_step_pre_hook(before_step)


# ---------------------------------------------------------------- models and data


def _bn_eval(model: nn.Module) -> nn.Module:
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def force_eval(module: nn.Module, args: Any) -> None:
        for m in norms:
            m.training = False

    model.register_forward_pre_hook(force_eval)
    return model


def bn_eval_model(num_classes: int, name: str = "resnet8") -> nn.Module:
    from trainlab import models

    return _bn_eval(models.create(name, num_classes))


class _OutOfMemoryAbove(nn.Module):
    def __init__(self, inner: nn.Module, limit: Optional[int]):
        super().__init__()
        self.inner, self.limit = inner, limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.limit is not None and x.shape[0] > self.limit:
            raise OUT_OF_MEMORY(f"oom_model drill: batch {x.shape[0]} > {self.limit} on rank {_rank()}")
        return self.inner(x)


def oom_model(num_classes: int, limits: str = "300", name: str = "resnet8", drop_rate: float = 0.0) -> nn.Module:
    """`limits`: one number for every rank, or RANK:N,RANK:N."""
    from trainlab import models

    spec = str(limits)
    if ":" in spec:
        table = dict(item.split(":") for item in spec.split(","))
        limit = int(table[str(_rank())]) if str(_rank()) in table else None
    else:
        limit = int(spec)
    return _OutOfMemoryAbove(models.create(name, num_classes, drop_rate=drop_rate or None), limit)


class ArrayDataset(torch.utils.data.Dataset):
    """uint8 HWC arrays and labels as a map-style Dataset of (CHW uint8 tensor, int)."""

    def __init__(self, images, labels, classes):
        self.images, self.labels, self.classes = images, labels, list(classes)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return torch.from_numpy(self.images[index]).permute(2, 0, 1), int(self.labels[index])


def shuffled_shapes(train_size: int = 320, val_size: int = 160, img_size: int = 16, seed: int = 0):
    import numpy as np

    from trainlab.data.shapes import CLASS_NAMES, generate_shapes

    train_images, train_labels = generate_shapes(int(train_size), int(img_size), int(seed), "train")
    val_images, val_labels = generate_shapes(int(val_size), int(img_size), int(seed), "val")
    order = np.random.default_rng(int(seed) + 1234).permutation(len(train_labels))
    return (ArrayDataset(train_images, train_labels[order], CLASS_NAMES),
            ArrayDataset(val_images, val_labels, CLASS_NAMES))  # fmt: skip
