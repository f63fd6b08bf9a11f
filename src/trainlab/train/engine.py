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
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from trainlab.distributed import DistContext, all_reduce_sum, find_ddp, maybe_no_sync
from trainlab.errors import ConfigError
from trainlab.models.outputs import training_loss

# Called at every optimizer-step boundary with (epoch, micro-batches done in this epoch); True stops the epoch there.
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


def bookkeeping_dtype(device: torch.device) -> torch.dtype:
    """float64 for running sums where the device has it; Apple's MPS has no float64, so float32 there."""
    return torch.float32 if device.type == "mps" else torch.float64


@dataclass
class EpochTotals:
    """Running sums of one training epoch, on the device; part of the checkpoint so a resumed epoch adds up."""

    loss_sum: torch.Tensor
    correct1: torch.Tensor
    seen: torch.Tensor

    @classmethod
    def zeros(cls, device: torch.device) -> EpochTotals:
        z = lambda: torch.zeros((), dtype=bookkeeping_dtype(device), device=device)  # noqa: E731
        return cls(z(), z(), z())

    def add(self, loss: torch.Tensor, correct: torch.Tensor, count: int) -> None:
        self.loss_sum += loss.detach().to(self.loss_sum.dtype) * count
        self.correct1 += correct.to(self.correct1.dtype)
        self.seen += count

    def state_dict(self) -> dict:
        return {"loss_sum": self.loss_sum.item(), "correct1": self.correct1.item(), "seen": self.seen.item()}

    def load_state_dict(self, state: dict) -> None:
        self.loss_sum.fill_(state["loss_sum"])
        self.correct1.fill_(state["correct1"])
        self.seen.fill_(state["seen"])

    def _packed(self, ctx: Optional[DistContext]) -> torch.Tensor:
        packed = torch.stack([self.loss_sum, self.correct1, self.seen])  # a new tensor: these stay as they are
        if ctx is not None:
            all_reduce_sum(packed, ctx)
        return packed

    def summed(self, ctx: Optional[DistContext]) -> EpochTotals:
        """These sums added over all ranks (a new object; this rank's own stay as they are)."""
        packed = self._packed(ctx)
        return EpochTotals(packed[0].clone(), packed[1].clone(), packed[2].clone())

    def reduced(self, ctx: Optional[DistContext]) -> dict:
        """Global figures (summed over ranks). One sync: called once per epoch."""
        loss_sum, correct, seen = self._packed(ctx).tolist()
        seen = max(seen, 1.0)
        return {"train_loss": loss_sum / seen, "train_acc1": 100.0 * correct / seen, "train_samples": int(seen)}


def cross_entropy(label_smoothing: float = 0.0) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The built-in loss: cross-entropy with label smoothing on class indices; on soft targets (mixup/cutmix,
    smoothing already folded in) the cross-entropy against the target distribution."""

    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if targets.dim() == 2:
            return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)

    return loss


@dataclass
class Step:
    """One optimisation step on one batch, as training runs it: the inputs' memory format, autocast, the
    loss (the user's or cross-entropy, auxiliary heads added), the scaled backward, unscale and clipping, the
    optimizer step. The Trainer runs its micro-batches through it, and so do the doctor's checks, the batch
    finder and `trainlab bench step`: what they measure is what the run does."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    precision: str = "32"
    channels_last: bool = False
    loss_fn: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None  # None: cross-entropy
    clip_grad: Optional[float] = None
    _checked: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if self.loss_fn is None:
            self.loss_fn = cross_entropy()
        use_scaler = self.precision == "fp16" and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)

    def inputs(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels.to(self.device, non_blocking=True)

    def forward(self, images: torch.Tensor, targets: torch.Tensor, no_sync: bool = False) -> tuple:
        """(main logits, loss) on the device; under DDP `no_sync` skips the gradient all-reduce."""
        with maybe_no_sync(self.model, no_sync), autocast(self.device, self.precision):
            # models with auxiliary heads return (logits, aux...) in train mode; see models/outputs.py
            logits, loss = training_loss(self.model(images), targets, self.loss_fn)
        if not self._checked:  # a user's loss: once, on the host shape only (no sync)
            self._checked = True
            if not torch.is_tensor(loss) or loss.dim() != 0:
                shape = tuple(loss.shape) if torch.is_tensor(loss) else type(loss).__name__
                raise ConfigError(f"the loss returned {shape}; it must return a scalar tensor (reduce it, e.g. .mean())")
        return logits, loss

    def backward(self, loss: torch.Tensor, weight: float = 1.0, no_sync: bool = False) -> None:
        with maybe_no_sync(self.model, no_sync):
            self.scaler.scale(loss * weight if weight != 1.0 else loss).backward()

    def optimizer_step(self, want_norm: bool = False, set_to_none: bool = True) -> Optional[torch.Tensor]:
        """Unscale, clip, step, zero the gradients. Returns the total gradient norm (a device tensor, never
        read here) when clipping computes it or `want_norm` asks for it; else None."""
        grad_norm = None
        if self.clip_grad or want_norm:
            self.scaler.unscale_(self.optimizer)  # norms of unscaled gradients, as the user thinks of them
            if self.clip_grad:
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad)
            else:
                grad_norm = total_grad_norm(self.model.parameters())
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=set_to_none)
        return grad_norm

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole step on one batch: (main logits, loss), both detached and on the device."""
        images, labels = self.inputs(images, labels)
        logits, loss = self.forward(images, labels)
        self.backward(loss)
        self.optimizer_step()
        return logits.detach(), loss.detach()


def step_for(cfg: Any, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
             loss_fn: Optional[Callable] = None, precision: Optional[str] = None) -> Step:  # fmt: skip
    """The Step a config describes (precision, memory format, clipping, label smoothing or the user's loss)
    for `model` and `optimizer`: the doctor, the batch finder and `trainlab bench step` build theirs here."""
    from trainlab.train.runtime import channels_last_default, resolve_precision

    return Step(model, optimizer, torch.device(device), precision or resolve_precision(cfg, torch.device(device)),
                channels_last_default(cfg, model, torch.device(device)), run_loss(cfg, loss_fn),
                cfg.train.clip_grad)  # fmt: skip


def run_loss(cfg: Any, loss_fn: Optional[Callable]) -> Callable:
    """The loss a run trains with: the user's, or cross-entropy with train.label_smoothing."""
    if loss_fn is None:
        return cross_entropy(float(cfg.train.label_smoothing))
    if cfg.train.label_smoothing:
        raise ConfigError("train.label_smoothing applies to the built-in cross-entropy; with your own loss "
                          "(train.loss or loss_fn=), smooth inside it and leave train.label_smoothing at 0")  # fmt: skip
    return loss_fn


@dataclass
class Trainer:
    """One model's optimisation over an epoch: accumulation windows, EMA, batch mixing, non-finite losses, the
    watch and the boundary hook, around the Step every training path shares."""

    model: nn.Module  # possibly DDP- or compile-wrapped
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    device: torch.device
    precision: str = "32"
    channels_last: bool = False
    grad_accum: int = 1
    clip_grad: Optional[float] = None
    label_smoothing: float = 0.0
    mixer: Optional[object] = None  # trainlab.train.mix.BatchMixer
    ema: Optional[object] = None  # trainlab.train.ema.ModelEMA
    watcher: Optional[object] = None  # trainlab.watch.Watcher
    on_nonfinite: str = "warn"
    seed: int = 0
    max_batches: Optional[int] = None  # micro-batches per epoch (train.max_steps_per_epoch x grad_accum)
    # The run's one step counter: optimizer steps, i.e. accumulation windows ended (a window whose every
    # micro-batch was skipped as non-finite counts too: the LR plan follows the position, as AMP's skipped
    # steps do). metrics.csv, steps.jsonl, events, the watch and periodic checkpoints all count these.
    global_step: int = 0
    micro_step: int = 0  # micro-batches taken (global_step x grad_accum, less for short last windows)
    skipped_nonfinite: int = 0
    nonfinite_stop: Optional[tuple[int, int]] = field(default=None)  # (epoch, batch) that stopped the run
    on_batch: Optional[Callable[[int, int], None]] = None  # (epoch, batch index): progress bar, drills
    # The LRs this epoch's optimizer steps trained at (first, last, min, max); None before its first step.
    # The optimizer's LR after an epoch is the next epoch's (the scheduler has stepped): metrics.csv shows these.
    epoch_lr: Optional[dict] = None
    compile_mode: str = "none"  # train.compile: the CUDA-graph modes need care under accumulation
    loss: Optional[Callable] = None  # a user's (logits, targets) -> loss; None: cross-entropy with smoothing

    def __post_init__(self) -> None:
        self.ddp = find_ddp(self.model) is not None
        self._window_skipped = 0  # micro-batches skipped (non-finite loss) in the current accumulation window
        self._window_loss: Optional[torch.Tensor] = None  # the window's summed losses, on the device (no sync)
        self._window_seen = 0  # micro-batches and images in the window so far, for the watch's one step
        self._window_images = 0
        # reduce-overhead and max-autotune replay CUDA graphs whose outputs live in static buffers. Under
        # accumulation, autograd would adopt the first micro-batch's gradient buffer as p.grad and the next
        # replay would overwrite it. Keeping p.grad allocated (zeroed, never None) makes every micro-batch
        # add into memory the graph does not own; marking each step tells the graphs a new step began.
        self.cudagraphs = self.device.type == "cuda" and self.compile_mode in ("reduce-overhead", "max-autotune")
        self.keep_grads = self.cudagraphs and self.grad_accum > 1
        self.step = Step(self.model, self.optimizer, self.device, self.precision, self.channels_last,
                         self.loss or cross_entropy(self.label_smoothing), self.clip_grad)  # fmt: skip
        self.scaler = self.step.scaler  # checkpoints hold its state

    def batches_per_epoch(self, loader) -> int:
        n = len(loader)
        return min(n, self.max_batches) if self.max_batches else n

    def loss_fn(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.step.loss_fn(logits, targets)

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
        if self.keep_grads:
            for p in self.model.parameters():
                if p.requires_grad and p.grad is None:
                    p.grad = torch.zeros_like(p)
        totals = totals or EpochTotals.zeros(self.device)
        if start == 0:  # a resumed epoch keeps the LRs its steps before the stop trained at (checkpoint)
            self.epoch_lr = None
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

    def _window(self, index: int, n_batches: int) -> int:
        """Micro-batches in the accumulation window holding batch `index`: grad_accum, or fewer for the
        epoch's last window when n_batches is not a multiple of it."""
        window_start = index - index % self.grad_accum
        return min(self.grad_accum, n_batches - window_start)

    def _train_batch(self, images, labels, epoch, index, n_batches, totals, on_boundary) -> bool:
        lr = self.lr()  # the LR this batch trains at (the optimizer step below moves the scheduler on)
        images, labels = self.step.inputs(images, labels)
        targets = labels
        if self.mixer is not None and self.mixer.enabled:
            images, targets = self.mixer(images, labels, batch_generator(self.seed, epoch, index))
        window = self._window(index, n_batches)
        boundary = (index + 1) % self.grad_accum == 0 or index + 1 == n_batches
        if index % self.grad_accum == 0:
            self._window_skipped = 0
            self._window_loss, self._window_seen, self._window_images = None, 0, 0

        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        # DDP all-reduces gradients only on the micro-batch that ends an accumulation window.
        logits, loss = self.step.forward(images, targets, no_sync=not boundary)

        bad, sync_wait = False, None
        if self.on_nonfinite in ("skip", "stop"):
            # These modes must decide before the update, so they read one flag per step (a sync on a GPU;
            # the default `warn` mode never does). Under DDP all ranks must agree: a rank that skipped its
            # backward would leave the others waiting for its gradients.
            bad = _any_rank(~torch.isfinite(loss.detach()))
        if bad:  # no backward: the window's other gradients stay, the step averages over the good ones
            self.skipped_nonfinite += 1
            self._window_skipped += 1
        else:
            backward_started = time.perf_counter()
            # Each micro-batch weighs 1/(its window's size): the mean over the window, also a short last one.
            self.step.backward(loss, 1.0 / window, no_sync=not boundary)
            # Under DDP the backward of the last micro-batch ends waiting for the slowest rank's gradients;
            # the watch subtracts this from the step time to find which rank is the straggler.
            if self.ddp and boundary:
                sync_wait = time.perf_counter() - backward_started

        self.micro_step += 1
        detached = loss.detach()
        self._window_loss = detached if self._window_loss is None else self._window_loss + detached
        self._window_seen += 1
        self._window_images += labels.shape[0]
        if not bad:  # a skipped batch's loss is not part of the epoch's figures
            totals.add(loss, _correct_top1(logits.detach(), targets), labels.shape[0])
        if self.on_batch is not None:
            self.on_batch(epoch, index)
        grad_norm = None
        if bad and self.on_nonfinite == "stop":
            self.nonfinite_stop = (epoch, index)
        elif boundary:
            good = window - self._window_skipped
            if good > 0:
                if self._window_skipped:
                    self._rescale_partial_window(window, good, last_was_skipped=bad)
                grad_norm = self._optimizer_step()
            else:  # every micro-batch of the window was skipped: nothing to step with, but the step is counted
                self.optimizer.zero_grad(set_to_none=not self.keep_grads)
                self._note_lr(self.lr())
                self.scheduler.step()
                self.global_step += 1
        if self.watcher is not None:
            if boundary or self.nonfinite_stop is not None:
                # One watch step per optimizer step (before the boundary hook: a checkpoint it writes holds
                # it), with the window's mean loss and all its images.
                self.watcher.step(loss=self._window_loss / self._window_seen, batch_size=self._window_images,
                                  lr=lr, sync_wait_s=sync_wait,
                                  grad_norm=grad_norm)  # fmt: skip
            else:  # a micro-batch inside the window: timed, not counted
                self.watcher.micro_batch()
        if self.nonfinite_stop is not None:
            return True
        if boundary and on_boundary is not None:
            # Checkpoint writes and the stop agreement are host work outside the step's compute: the watch
            # counts them as `other`, and as time waiting for peers in the straggler check.
            if self.watcher is not None:
                with self.watcher.outside_compute(waiting_for_peers=self.ddp):
                    return bool(on_boundary(epoch, index + 1))
            return bool(on_boundary(epoch, index + 1))
        return False

    def _rescale_partial_window(self, window: int, good: int, last_was_skipped: bool) -> None:
        """Gradients were scaled by 1/window per micro-batch; with skipped ones, make them the mean over the
        `good` micro-batches. Under DDP, when the window's last micro-batch was skipped its backward (which
        carries the all-reduce) never ran, so average the gradients over ranks here."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        if self.ddp and last_was_skipped and torch.distributed.is_initialized():
            world = torch.distributed.get_world_size()
            for p in params:
                torch.distributed.all_reduce(p.grad)
                p.grad.div_(world)
        if params:
            torch._foreach_mul_([p.grad for p in params], window / good)

    def _optimizer_step(self) -> Optional[torch.Tensor]:
        """One optimizer step. Returns the total gradient norm (a device tensor, never read here) when it is
        free (clipping computes it) or the watch will log it in this window; else None."""
        want_norm = self.watcher is not None and self.watcher.wants_grad_norm()
        self._note_lr(self.lr())
        grad_norm = self.step.optimizer_step(want_norm, set_to_none=not self.keep_grads)
        self.scheduler.step()
        self.global_step += 1
        if self.ema is not None:
            self.ema.update(self.model, self.global_step)
        return grad_norm

    def lr(self) -> float:
        """The LR the next optimizer step trains at (param group 0)."""
        return float(self.optimizer.param_groups[0]["lr"])

    def _note_lr(self, lr: float) -> None:
        seen = self.epoch_lr
        if seen is None:
            self.epoch_lr = {"first": lr, "last": lr, "min": lr, "max": lr}
        else:
            seen.update(last=lr, min=min(seen["min"], lr), max=max(seen["max"], lr))


def total_grad_norm(parameters) -> Optional[torch.Tensor]:
    """The L2 norm over all gradients, as a device tensor (no sync)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return None
    norms = torch._foreach_norm(grads)
    return torch.linalg.vector_norm(torch.stack([n.float() for n in norms]))


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
    should_stop: Optional[Callable[[int], bool]] = None,
) -> Optional[dict]:
    """Loss, top-1 and top-5 over the whole val split (all ranks' shards summed). None if stopped early.

    `should_stop(index)` is asked before each batch. The device sums are read once, at the end; ranks may
    have different numbers of batches (their shards differ by up to one image each)."""
    model.eval()
    sums = torch.zeros(3, dtype=bookkeeping_dtype(device), device=device)  # loss_sum, correct1, correct5
    count = 0  # images: known on the host, no device tensor needed
    for index, (images, labels) in enumerate(loader.batches(0)):
        if should_stop is not None and should_stop(index):
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
            [F.cross_entropy(logits, labels, reduction="sum"), hits[:, 0].sum(), hits.any(dim=1).sum()]
        ).to(sums.dtype)
        count += labels.shape[0]
    packed = torch.cat([sums, torch.tensor([count], dtype=sums.dtype, device=device)])
    if ctx is not None:
        all_reduce_sum(packed, ctx)
    loss_sum, c1, c5, count = packed.tolist()
    count = max(count, 1.0)
    return {"val_loss": loss_sum / count, "val_acc1": 100.0 * c1 / count, "val_acc5": 100.0 * c5 / count,
            "val_samples": int(count)}  # fmt: skip
