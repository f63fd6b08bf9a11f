"""What a run is made of: data, model (wrapped for DDP and compile), optimizer, schedule, EMA, mixer, Trainer.

`build_parts(cfg, ctx, ...)` builds them in the order their memory is allocated, with the run's seeds:
the same seed on every rank for the model's initial weights, then each rank's own stream for training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import torch

from trainlab import config as config_mod
from trainlab import distributed
from trainlab.config import final_img_size
from trainlab.errors import DataError
from trainlab.train.engine import Trainer, run_loss
from trainlab.train.runtime import (
    channels_last_default,
    configure_backends,
    rank_seed,
    resolve_precision,
    seed_everything,
)


@dataclass
class Parts:
    cfg: Any  # with data.batch_size resolved when it was `auto`
    data: Any  # trainlab.data.DataBundle
    raw_model: torch.nn.Module  # the unwrapped model: checkpoints hold its state
    trainer: Trainer
    num_classes: int
    params: int
    precision: str
    channels_last: bool
    global_batch: int
    steps_per_epoch: int  # optimizer steps
    schedule: dict  # optim.plan_schedule's result, saved in checkpoints
    schedule_warnings: list[str]
    batch_note: Optional[str]  # how data.batch_size=auto was resolved


def resolve_auto_batch(cfg: Any, ctx: distributed.DistContext, state: Optional[dict],
                       user: Any = None) -> tuple[Any, Optional[str]]:  # fmt: skip
    """cfg with data.batch_size=auto replaced by a number: the checkpoint's on a resume (so the math stays the
    same), else the largest batch every rank's device trains, agreed as the minimum over ranks."""
    from trainlab.state.resume import resume_batch_size

    if state is not None and cfg.data.batch_size != "auto":
        kept = resume_batch_size(cfg, state, ctx.world_size)
        if kept != int(cfg.data.batch_size):  # an elastic restart on another process count: keep the math
            note = (f"elastic restart on {ctx.world_size} processes: data.batch_size={kept} per process keeps the "
                    f"checkpoint's global batch of {kept * ctx.world_size * int(cfg.train.grad_accum)}")  # fmt: skip
            return config_mod.replace(cfg, **{"data.batch_size": kept}), note
    if cfg.data.batch_size != "auto":
        return cfg, None

    if state is not None:
        batch = resume_batch_size(cfg, state, ctx.world_size)
        note = f"data.batch_size=auto: {batch} per process, as when the run started (resumed)"
    else:
        from trainlab.train.batch_finder import find_max_batch

        mine = find_max_batch(cfg, ctx.device, reserve_bytes=_resident_bytes(cfg, user), rank=ctx.rank, user=user)
        note = f"data.batch_size=auto: {mine} per process fits"
        batch = mine
        if ctx.enabled:  # ranks may have different GPUs (or free memory): all take the smallest answer
            found = [int(v[0]) for v in distributed.all_gather_floats([float(mine)], ctx)]
            batch = min(found)
            note = f"data.batch_size=auto: {batch} per process fits (smallest of the ranks' {', '.join(map(str, found))})"
    return config_mod.replace(cfg, **{"data.batch_size": batch}), note


def _resident_bytes(cfg: Any, user: Any = None) -> int:
    """What the run will hold on the device beside the search's trial model: the EMA copy of the weights
    (estimated from a CPU build of the model) and, for the tensor loader, the training images."""
    reserve = 0
    if cfg.train.ema_decay:
        from trainlab import models
        from trainlab.train.batch_finder import num_classes_hint

        model = models.from_config(cfg, num_classes_hint(cfg), with_weights=False, user=_copied(user))
        reserve += sum(t.numel() * t.element_size() for t in model.state_dict().values())
    if cfg.data.name == "shapes" and cfg.data.loader in ("auto", "tensor"):
        reserve += int(cfg.data.train_size) * 3 * final_img_size(cfg.data.img_size) ** 2
    return reserve


def _copied(user: Any) -> Any:
    """The user's parts with a model object deep-copied: a trial must not train (or move) the run's own module."""
    if user is None or not isinstance(getattr(user, "model", None), torch.nn.Module):
        return user
    import copy
    import dataclasses

    return dataclasses.replace(user, model=copy.deepcopy(user.model))


def build_parts(cfg: Any, ctx: distributed.DistContext, state: Optional[dict], say: Callable[[str], None],
                on_batch: Optional[Callable[[int, int], None]] = None, user: Any = None) -> Parts:  # fmt: skip
    """`user` (trainlab.user.UserParts): the user's own model, data, loss and transforms, where they bring them."""
    from trainlab import models
    from trainlab.data import build_data
    from trainlab.train import optim

    device = ctx.device
    seed_everything(cfg.train.seed)  # every rank builds the same initial weights
    configure_backends(cfg, device)
    precision = resolve_precision(cfg, device)
    cfg, batch_note = resolve_auto_batch(cfg, ctx, state, user)
    batch_size = int(cfg.data.batch_size)

    data = build_data(cfg, device, ctx.rank, ctx.world_size, user=user)
    if state is not None and hasattr(data.train, "load_state_dict"):
        # Before the epoch's length is read below: the streaming loader's lane count (its order) is the
        # checkpoint's, and sets how many batches an epoch has on this process count.
        data.train.load_state_dict({"world_size": state.get("world_size"), **(state.get("loader") or {})})
    num_classes = cfg.model.num_classes or data.num_classes
    if data.num_classes > num_classes:
        raise DataError(
            f"the dataset has {data.num_classes} classes but model.num_classes={num_classes}; "
            "raise model.num_classes or drop it to use the dataset's count"
        )
    model = models.from_config(cfg, num_classes, user=user)
    params = sum(p.numel() for p in model.parameters())
    channels_last = channels_last_default(cfg, model, device)
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    data.use_channels_last(channels_last)  # the batches come in the model's layout: the Step copies nothing
    raw_model = model  # DDP and compile share its parameters
    wrapped = distributed.wrap_model(model, ctx, sync_bn=cfg.model.sync_bn)
    if ctx.enabled and cfg.model.sync_bn:
        raw_model = distributed.unwrap(wrapped)
    if cfg.train.compile != "none":
        wrapped = torch.compile(wrapped, mode=cfg.train.compile)

    global_batch = batch_size * ctx.world_size * cfg.train.grad_accum
    optimizer = optim.build_optimizer(raw_model, cfg.optim, global_batch)
    batches = len(data.train)
    if config_mod.micro_batch_cap(cfg):
        batches = min(batches, config_mod.micro_batch_cap(cfg))
    steps_per_epoch = -(-batches // cfg.train.grad_accum)  # optimizer steps
    base_lr = float(cfg.sched.max_lr) if cfg.sched.name == "onecycle" and cfg.sched.max_lr else (
        optimizer.param_groups[0]["lr"])  # fmt: skip
    schedule = optim.plan_schedule(cfg, state, steps_per_epoch, base_lr, say)
    scheduler = optim.build_scheduler(optimizer, cfg.sched, cfg.optim, cfg.train.epochs, steps_per_epoch,
                                      segments=schedule["plan"])  # fmt: skip
    schedule_warnings = optim.check_schedule(cfg.sched, cfg.train.epochs, steps_per_epoch)

    ema = None
    if cfg.train.ema_decay:
        from trainlab.train.ema import ModelEMA

        ema = ModelEMA(raw_model, cfg.train.ema_decay, warmup=cfg.train.ema_warmup, buffers=cfg.train.ema_buffers)
    mixer = None
    if cfg.aug.mixup_alpha > 0 or cfg.aug.cutmix_alpha > 0:
        from trainlab.train.mix import BatchMixer

        mixer = BatchMixer(
            cfg.aug.mixup_alpha, cfg.aug.cutmix_alpha, cfg.aug.mix_prob, cfg.aug.switch_prob,
            num_classes, label_smoothing=cfg.train.label_smoothing,
        )  # fmt: skip
    # From here on each rank draws from its own streams (dropout masks, stochastic depth, mixup): the same
    # masks on every rank would make N ranks no better than one for the regularisation they bring.
    train_seed = rank_seed(cfg.train.seed, ctx.rank)
    seed_everything(train_seed)
    trainer = Trainer(
        model=wrapped, optimizer=optimizer, scheduler=scheduler, device=device, precision=precision,
        channels_last=channels_last, grad_accum=cfg.train.grad_accum, clip_grad=cfg.train.clip_grad,
        label_smoothing=cfg.train.label_smoothing, mixer=mixer, ema=ema, on_nonfinite=cfg.watch.on_nonfinite,
        seed=train_seed, max_batches=config_mod.micro_batch_cap(cfg), on_batch=on_batch,
        compile_mode=cfg.train.compile, loss=run_loss(cfg, getattr(user, "loss_fn", None)),
    )  # fmt: skip
    return Parts(cfg=cfg, data=data, raw_model=raw_model, trainer=trainer, num_classes=num_classes, params=params,
                 precision=precision, channels_last=channels_last, global_batch=global_batch,
                 steps_per_epoch=steps_per_epoch, schedule=schedule, schedule_warnings=schedule_warnings,
                 batch_note=batch_note)  # fmt: skip
