"""What the doctor examines: the run a config describes, built the way `trainlab train` builds it (data,
model, optimizer, schedule) but on one process and without a run dir. Each check gets fresh parts, so no
check sees what another did to the weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from trainlab.config import micro_batch_cap
from trainlab.errors import ConfigError, DataError
from trainlab.train import optim


@dataclass
class Patient:
    cfg: Any
    device: torch.device
    data: Any  # trainlab.data.DataBundle
    num_classes: int
    batch_size: int
    steps_per_epoch: int  # optimizer steps
    total_steps: int  # optimizer steps of the whole run
    schedule_warnings: list[str]
    user: Any = None  # trainlab.user.UserParts: the user's own model, data, loss

    @property
    def loss_fn(self):
        """The run's loss: the user's, or cross-entropy with train.label_smoothing."""
        from trainlab.train.engine import run_loss

        return run_loss(self.cfg, getattr(self.user, "loss_fn", None))

    @property
    def global_batch(self) -> int:
        return self.batch_size * int(self.cfg.train.grad_accum)  # one process: the doctor does not launch DDP

    @property
    def peak_lr(self) -> float:
        """The highest LR the schedule reaches: OneCycle's max_lr, else the (scaled) optim.lr."""
        if self.cfg.sched.name == "onecycle" and self.cfg.sched.max_lr:
            return float(self.cfg.sched.max_lr)
        return optim.effective_lr(self.cfg.optim, self.global_batch)

    def new_model(self) -> nn.Module:
        """The run's model at its initial weights (same seed), in train mode."""
        import copy

        from trainlab import models

        torch.manual_seed(int(self.cfg.train.seed))
        user = self.user
        if user is not None and isinstance(user.model, nn.Module):  # each check trains its own copy
            import dataclasses

            user = dataclasses.replace(user, model=copy.deepcopy(user.model))
        model = models.from_config(self.cfg, self.num_classes, user=user)
        return model.to(self.device).train()

    def new_optimizer(self, model: nn.Module, lr: Optional[float] = None) -> torch.optim.Optimizer:
        """The configured optimizer (weight decay, momentum, groups) at a constant LR (default: the peak)."""
        opt = optim.build_optimizer(model, self.cfg.optim, self.global_batch)
        for group in opt.param_groups:
            group["lr"] = self.peak_lr if lr is None else lr
        return opt

    def new_step(self, model: nn.Module, lr: Optional[float] = None):
        """The run's training step (engine.Step: precision, memory format, clipping, loss) for `model`, with the
        configured optimizer at a constant LR (default: the peak)."""
        from trainlab.train.engine import step_for

        return step_for(self.cfg, model, self.new_optimizer(model, lr), self.device, getattr(self.user, "loss_fn", None))

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(logits, labels)

    def train_batches(self, count: int, epoch: int = 1):
        """The first `count` train batches of an epoch, as the run sees them (augmented, normalised)."""
        for i, (images, labels) in enumerate(self.data.train.batches(epoch)):
            if i >= count:
                return
            yield images.to(self.device), labels.to(self.device)

    def fixed_batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`size` samples gathered from the start of epoch 1 (several loader batches when the batch is small)."""
        images, labels = [], []
        for x, y in self.train_batches(10**6):
            images.append(x)
            labels.append(y)
            if sum(len(t) for t in labels) >= size:
                break
        return torch.cat(images)[:size], torch.cat(labels)[:size]


def examine(cfg: Any, user: Any = None) -> Patient:
    """Build the run's data and schedule; raises ConfigError/DataError (exit 2) like `trainlab train`.
    `user` (trainlab.user.UserParts): the user's own parts, as `trainlab.fit` takes them."""
    from trainlab.user import UserParts

    user = UserParts.resolve(cfg, user)
    from trainlab.data import build_data
    from trainlab.distributed import resolve_device

    device = resolve_device(cfg.train.device)
    if cfg.train.threads:
        torch.set_num_threads(int(cfg.train.threads))
    if cfg.data.batch_size == "auto":
        raise ConfigError("data.batch_size=auto: the doctor checks a fixed batch; give a number, e.g. data.batch_size=128")
    batch_size = int(cfg.data.batch_size)
    torch.manual_seed(int(cfg.train.seed))
    data = build_data(cfg, device, user=user)
    num_classes = int(cfg.model.num_classes or data.num_classes)
    if data.num_classes > num_classes:
        raise DataError(f"the dataset has {data.num_classes} classes but model.num_classes={num_classes}; "
                        "raise model.num_classes or drop it to use the dataset's count")
    batches = len(data.train)
    if cfg.train.max_steps_per_epoch:
        batches = min(batches, micro_batch_cap(cfg))
    steps_per_epoch = -(-batches // int(cfg.train.grad_accum))
    epochs = int(cfg.train.epochs)
    warnings = optim.check_schedule(cfg.sched, epochs, steps_per_epoch)
    return Patient(cfg, device, data, num_classes, batch_size, steps_per_epoch, epochs * steps_per_epoch, warnings,
                   user)
