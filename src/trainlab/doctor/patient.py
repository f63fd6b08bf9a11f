"""What the doctor examines: the run a config describes, built the way `trainlab train` builds it (data,
model, optimizer, schedule) but on one process and without a run dir. Each check gets fresh parts, so no
check sees what another did to the weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

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
        """The run's model at its initial weights (same seed), in train mode, with any planted fault."""
        from trainlab import models, planted

        torch.manual_seed(int(self.cfg.train.seed))
        model = models.from_config(self.cfg, self.num_classes)
        planted.plant_model(model)
        return model.to(self.device).train()

    def new_optimizer(self, model: nn.Module, lr: Optional[float] = None) -> torch.optim.Optimizer:
        """The configured optimizer (weight decay, momentum, groups) at a constant LR (default: the peak)."""
        opt = optim.build_optimizer(model, self.cfg.optim, self.global_batch)
        for group in opt.param_groups:
            group["lr"] = self.peak_lr if lr is None else lr
        return opt

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(logits.float(), labels,
                                                 label_smoothing=float(self.cfg.train.label_smoothing))

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


def examine(cfg: Any) -> Patient:
    """Build the run's data and schedule; raises ConfigError/DataError (exit 2) like `trainlab train`."""
    from trainlab import planted
    from trainlab.data import build_data
    from trainlab.distributed import resolve_device

    device = resolve_device(cfg.train.device)
    if cfg.train.threads:
        torch.set_num_threads(int(cfg.train.threads))
    if cfg.data.batch_size == "auto":
        raise ConfigError("data.batch_size=auto: the doctor checks a fixed batch; give a number, e.g. data.batch_size=128")
    batch_size = int(cfg.data.batch_size)
    torch.manual_seed(int(cfg.train.seed))
    data = build_data(cfg, device)
    num_classes = int(cfg.model.num_classes or data.num_classes)
    if data.num_classes > num_classes:
        raise DataError(f"the dataset has {data.num_classes} classes but model.num_classes={num_classes}; "
                        "raise model.num_classes or drop it to use the dataset's count")
    planted.plant_data(data, int(cfg.train.seed))
    batches = len(data.train)
    if cfg.train.max_steps_per_epoch:
        batches = min(batches, int(cfg.train.max_steps_per_epoch))
    steps_per_epoch = -(-batches // int(cfg.train.grad_accum))
    epochs = int(cfg.train.epochs)
    warnings = optim.check_schedule(cfg.sched, epochs, steps_per_epoch)
    return Patient(cfg, device, data, num_classes, batch_size, steps_per_epoch, epochs * steps_per_epoch, warnings)
