"""The training and evaluation loops. No files, no printing: plain objects in, plain objects out.

Bookkeeping never syncs the device: losses and correct counts accumulate in device tensors and are read
once per epoch (the watch reduces its own copies every `print_every` steps).
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from trainlab.distributed import DistContext, all_reduce_sum, maybe_no_sync
from trainlab.models.outputs import training_loss

# Called at every optimizer-step boundary with (epoch, batches done in this epoch); True stops the epoch there.
BoundaryHook = Callable[[int, int], bool]


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast(device_type=device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def batch_generator(seed: int, epoch: int, batch_index: int) -> torch.Generator:
    """Randomness for one batch (mixup/cutmix): a pure function of its position, so a resume replays it."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{batch_index}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))


@dataclass
class EpochTotals:
    """Running sums of one training epoch, on the device; part of the checkpoint so a resumed epoch adds up."""

    loss_sum: torch.Tensor
    correct1: torch.Tensor
    seen: torch.Tensor

    @classmethod
    def zeros(cls, device: torch.device) -> EpochTotals:
        z = lambda: torch.zeros((), dtype=torch.float64, device=device)  # noqa: E731
        return cls(z(), z(), z())

    def add(self, loss: torch.Tensor, correct: torch.Tensor, count: int) -> None:
        self.loss_sum += loss.detach().double() * count
        self.correct1 += correct.double()
        self.seen += count

    def state_dict(self) -> dict:
        return {"loss_sum": self.loss_sum.item(), "correct1": self.correct1.item(), "seen": self.seen.item()}

    def load_state_dict(self, state: dict) -> None:
        self.loss_sum.fill_(state["loss_sum"])
        self.correct1.fill_(state["correct1"])
        self.seen.fill_(state["seen"])

    def reduced(self, ctx: Optional[DistContext]) -> dict:
        """Global figures (summed over ranks). One sync: called once per epoch."""
        packed = torch.stack([self.loss_sum, self.correct1, self.seen])
        if ctx is not None:
            all_reduce_sum(packed, ctx)
        loss_sum, correct, seen = packed.tolist()
        seen = max(seen, 1.0)
        return {"train_loss": loss_sum / seen, "train_acc1": 100.0 * correct / seen, "train_samples": int(seen)}


@dataclass
class Trainer:
    """One model's optimisation step, with accumulation, AMP, clipping, EMA and batch mixing."""

    model: nn.Module  # possibly DDP- or compile-wrapped
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    device: torch.device
    precision: str = "32"
    channels_last: bool = False
    grad_accum: int = 1
    clip_grad: Optional[float] = None
    label_smoothing: float = 0.0
    mixer: Optional[object] = None  # trainlab.mix.BatchMixer
    ema: Optional[object] = None  # trainlab.ema.ModelEMA
    watcher: Optional[object] = None  # trainlab.watch.Watcher
    on_nonfinite: str = "warn"
    seed: int = 0
    max_batches: Optional[int] = None
    global_step: int = 0  # optimizer steps taken
    batches_seen: int = 0  # micro-batches taken (the watch's step counter)
    skipped_nonfinite: int = 0
    nonfinite_stop: Optional[tuple[int, int]] = field(default=None)  # (epoch, batch) that stopped the run
    on_batch: Optional[Callable[[int, int], None]] = None  # (epoch, batch index): progress bar, drills

    def __post_init__(self) -> None:
        self.ddp = isinstance(self.model, torch.nn.parallel.DistributedDataParallel) or isinstance(
            getattr(self.model, "_orig_mod", None), torch.nn.parallel.DistributedDataParallel
        )
        use_scaler = self.precision == "fp16" and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)

    def batches_per_epoch(self, loader) -> int:
        n = len(loader)
        return min(n, self.max_batches) if self.max_batches else n

    def loss_fn(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if targets.dim() == 2:  # soft targets from mixup/cutmix; smoothing is already folded in
            return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)

    def train_epoch(
        self,
        loader,
        epoch: int,
        start: int = 0,
        totals: Optional[EpochTotals] = None,
        on_boundary: Optional[BoundaryHook] = None,
    ) -> tuple[EpochTotals, Optional[int]]:
        """Train from batch `start` to the end of the epoch. Returns the totals and, if a hook stopped the epoch
        early, the number of batches done."""
        self.model.train()
        totals = totals or EpochTotals.zeros(self.device)
        n_batches = self.batches_per_epoch(loader)
        batches: Iterable = loader.batches(epoch, start)
        if self.watcher is not None:
            batches = self.watcher.watch(batches)
        index = start
        for images, labels in batches:
            if index >= n_batches:
                break
            stop = self._train_batch(images, labels, epoch, index, n_batches, totals, on_boundary)
            index += 1
            if stop:
                return totals, index
        return totals, None

    def _train_batch(self, images, labels, epoch, index, n_batches, totals, on_boundary) -> bool:
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = labels
        if self.mixer is not None and self.mixer.enabled:
            images, targets = self.mixer(images, labels, batch_generator(self.seed, epoch, index))
        boundary = (index + 1) % self.grad_accum == 0 or index + 1 == n_batches

        # DDP all-reduces gradients only on the micro-batch that ends an accumulation window.
        with maybe_no_sync(self.model, not boundary), autocast(self.device, self.precision):
            # cluster: models with auxiliary heads return (logits, aux...) in train mode; see models/outputs.py
            logits, loss = training_loss(self.model(images), targets, self.loss_fn)

        bad, sync_wait = False, None
        if self.on_nonfinite in ("skip", "stop"):
            # These modes must decide before the update, so they read one flag per step (a sync on a GPU;
            # the default `warn` mode never does). Under DDP all ranks must agree: a rank that skipped its
            # backward would leave the others waiting for its gradients.
            bad = _any_rank(~torch.isfinite(loss.detach()))
        if bad:
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_nonfinite += 1
        else:
            backward_started = time.perf_counter()
            self.scaler.scale(loss / self.grad_accum).backward()
            # Under DDP the backward of the last micro-batch ends waiting for the slowest rank's gradients;
            # the watch subtracts this from the step time to find which rank is the straggler.
            if self.ddp and boundary:
                sync_wait = time.perf_counter() - backward_started

        self.batches_seen += 1
        correct = _correct_top1(logits.detach(), targets)
        totals.add(loss, correct, labels.shape[0])
        if self.on_batch is not None:
            self.on_batch(epoch, index)
        stop = False
        if bad and self.on_nonfinite == "stop":
            self.nonfinite_stop = (epoch, index)
            stop = True
        elif boundary:
            if not bad:
                self._optimizer_step()
            if on_boundary is not None:
                hook_started = time.perf_counter()
                stop = bool(on_boundary(epoch, index + 1))
                if self.ddp:  # the hook's collectives (the stop-flag all-reduce) wait for the slowest rank
                    sync_wait = (sync_wait or 0.0) + time.perf_counter() - hook_started
        if self.watcher is not None:
            self.watcher.step(loss=loss.detach(), batch_size=labels.shape[0], lr=self.optimizer.param_groups[0]["lr"],
                              sync_wait_s=sync_wait)
        return stop

    def _optimizer_step(self) -> None:
        if self.clip_grad:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.global_step += 1
        if self.ema is not None:
            self.ema.update(self.model, self.global_step)

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


def _any_rank(flag: torch.Tensor) -> bool:
    """A boolean tensor OR-ed over the ranks of a multi-process job (itself for one process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        count = flag.float().reshape(1)
        torch.distributed.all_reduce(count)
        return bool(count.item() > 0)
    return bool(flag)


def _correct_top1(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    hard = targets.argmax(dim=1) if targets.dim() == 2 else targets  # mixed targets: the dominant label
    return (logits.argmax(dim=1) == hard).sum()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    device: torch.device,
    precision: str = "32",
    channels_last: bool = False,
    tta: str = "none",
    ctx: Optional[DistContext] = None,
    should_stop: Optional[Callable[[], bool]] = None,
) -> Optional[dict]:
    """Loss, top-1 and top-5 over the whole val split (all ranks' shards summed). None if stopped early."""
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss_sum, correct1, correct5, count
    for images, labels in loader.batches(0):
        if should_stop is not None and should_stop():
            return None
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            logits = model(images).float()
            if tta == "flip":  # average the probabilities of the image and its mirror
                logits = torch.log(
                    (logits.softmax(-1) + model(images.flip(3)).float().softmax(-1)) / 2
                )
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top == labels[:, None]
        sums += torch.stack(
            [
                F.cross_entropy(logits, labels, reduction="sum").double(),
                hits[:, 0].sum().double(),
                hits.any(dim=1).sum().double(),
                torch.tensor(labels.shape[0], dtype=torch.float64, device=device),
            ]
        )
    if ctx is not None:
        all_reduce_sum(sums, ctx)
    loss_sum, c1, c5, count = sums.tolist()
    count = max(count, 1.0)
    return {"val_loss": loss_sum / count, "val_acc1": 100.0 * c1 / count, "val_acc5": 100.0 * c5 / count,
            "val_samples": int(count)}  # fmt: skip
