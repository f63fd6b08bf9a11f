"""Optimizers, parameter groups and learning-rate schedules.

Every schedule is a torch LambdaLR stepped once per OPTIMIZER step: the caller passes
steps_per_epoch already divided by train.grad_accum, and epoch-based settings (warmup_epochs,
step_size, milestones) are converted to optimizer steps here. That keeps the LR right under gradient
accumulation (seed 001 had to fix OneCycle stepping per micro-batch). The multiplier for optimizer
step k (0-based) is warmup(k) * main(k); LambdaLR's state_dict holds the step count, so a resumed
run continues the same curve (the curve itself is rebuilt from the config).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Optional

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from trainlab.errors import ConfigError

REFERENCE_BATCH = 256  # optim.lr_scale=linear: lr is given for this global batch (Goyal et al. 2017)
# sched.extend=hold refuses to hold an LR below this share of the peak: the steps left would not train
HOLD_MIN_SHARE = 0.01


def effective_lr(optim_cfg: Any, global_batch: int) -> float:
    """optim.lr, scaled linearly with the global batch when optim.lr_scale=linear (else `none`: config.CHOICES)."""
    lr = float(optim_cfg.lr)
    if optim_cfg.lr_scale == "linear":
        return lr * global_batch / REFERENCE_BATCH
    return lr


def param_groups(model: nn.Module, weight_decay: float, no_decay_norm_bias: bool) -> list[dict]:
    """Trainable parameters; with no_decay_norm_bias, norm weights and biases (ndim <= 1) get no decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters (model.freeze_backbone froze everything?)")
    if not no_decay_norm_bias:
        return [{"params": params, "weight_decay": weight_decay}]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(
    model: nn.Module, optim_cfg: Any, global_batch: int = REFERENCE_BATCH
) -> torch.optim.Optimizer:
    name = optim_cfg.name
    lr = effective_lr(optim_cfg, global_batch)
    groups = param_groups(model, float(optim_cfg.weight_decay), bool(optim_cfg.no_decay_norm_bias))
    all_params = [p for g in groups for p in g["params"]]
    # fused kernels for Adam/AdamW when every parameter is a floating CUDA tensor; on CUDA the others
    # already default to the multi-tensor (foreach) path
    on_cuda = all(p.is_cuda and p.is_floating_point() for p in all_params)
    betas = tuple(float(b) for b in optim_cfg.betas)
    eps = float(optim_cfg.eps)
    momentum = float(optim_cfg.momentum)
    if name == "sgd":
        if optim_cfg.nesterov and momentum <= 0:
            raise ConfigError("optim.nesterov=true needs optim.momentum > 0")
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=bool(optim_cfg.nesterov))
    if name in ("adam", "adamw"):
        if len(betas) != 2:
            raise ConfigError(f"optim.betas={list(betas)} must be two numbers, e.g. [0.9, 0.999]")
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        extra = {"fused": True} if on_cuda else {}
        return cls(groups, lr=lr, betas=betas, eps=eps, **extra)
    if name == "adagrad":
        return torch.optim.Adagrad(groups, lr=lr, eps=eps)
    if name == "adadelta":
        return torch.optim.Adadelta(groups, lr=lr, eps=eps)
    # rmsprop, the last name config.CHOICES["optim.name"] admits (config.validate refuses any other)
    return torch.optim.RMSprop(groups, lr=lr, eps=eps, momentum=momentum)


# ---------------------------------------------------------------- schedules


def warmup_steps(sched_cfg: Any, steps_per_epoch: int) -> int:
    if sched_cfg.warmup_steps and sched_cfg.warmup_epochs:
        raise ConfigError("set sched.warmup_steps or sched.warmup_epochs, not both")
    if sched_cfg.warmup_steps < 0 or sched_cfg.warmup_epochs < 0:
        raise ConfigError("sched.warmup_steps and sched.warmup_epochs must be 0 or more")
    return int(sched_cfg.warmup_steps or round(float(sched_cfg.warmup_epochs) * steps_per_epoch))


def schedule_steps(sched_cfg: Any, epochs: int, steps_per_epoch: int) -> int:
    """Optimizer steps the schedule spans: sched.total_steps when set by hand, else the whole run."""
    return int(sched_cfg.total_steps) if sched_cfg.total_steps else epochs * steps_per_epoch


def _cosine(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1.0)


def _main_curve(
    sched_cfg: Any, base_lr: float, steps_per_epoch: int, start: int, span: int
) -> Callable[[int], float]:
    """Multiplier of base_lr at optimizer step k, before warmup. `start`/`span`: the steps it anneals over."""
    name = sched_cfg.name
    if name == "constant":
        return lambda k: 1.0
    if name == "step":
        if sched_cfg.step_size <= 0:
            raise ConfigError(f"sched.step_size={sched_cfg.step_size} must be a positive number of epochs")
        every = int(sched_cfg.step_size) * steps_per_epoch
        gamma = float(sched_cfg.gamma)
        return lambda k: gamma ** (k // every)
    if name == "multistep":
        at = sorted(int(m) * steps_per_epoch for m in sched_cfg.milestones)
        gamma = float(sched_cfg.gamma)
        return lambda k: gamma ** sum(k >= m for m in at)
    last = max(1, span - 1)  # the final optimizer step lands exactly on the final LR
    if name == "cosine":
        floor = float(sched_cfg.min_lr) / base_lr
        return lambda k: _cosine(1.0, floor, min(max(k - start, 0), last) / last)
    # onecycle, the last name config.CHOICES["sched.name"] admits (config.validate refuses any other):
    # torch's OneCycleLR (two phases, cosine annealing), relative to the peak LR
    if not 0.0 < sched_cfg.pct_start < 1.0:
        raise ConfigError(f"sched.pct_start={sched_cfg.pct_start} must be in (0, 1)")
    initial = 1.0 / float(sched_cfg.div_factor)
    final = initial / float(sched_cfg.final_div_factor)
    peak_at = float(sched_cfg.pct_start) * span - 1

    def onecycle(k: int) -> float:
        step = min(max(k - start, 0), span - 1)
        if step <= peak_at:
            return _cosine(initial, 1.0, step / peak_at if peak_at > 0 else 1.0)
        return _cosine(1.0, final, (step - peak_at) / (span - 1 - peak_at))

    return onecycle


def schedule_plan(epochs: int, steps_per_epoch: int) -> list[dict]:
    """A schedule's segments: one for a fresh run. A resume with `sched.extend=restart` appends one more
    schedule; one with `sched.extend=hold` appends `{"start": step, "hold": multiplier}`, a constant LR."""
    return [{"start": 0, "epochs": int(epochs), "steps_per_epoch": int(steps_per_epoch)}]


def multiplier_fn(sched_cfg: Any, base_lr: float, segments: list[dict]) -> Callable[[int], float]:
    """The LR multiplier at optimizer step k over a plan of segments.

    A `hold` segment is one multiplier from its start on. Each other segment is a whole schedule (warmup, then the configured curve) starting at its `start` step and
    sized by its own epochs and steps per epoch; past a segment's end its LR stays at its final value until
    the next segment starts. sched.total_steps, when set by hand, sizes the first segment only."""
    curves = []
    for i, seg in enumerate(segments):
        if "hold" in seg:  # sched.extend=hold: one LR (a multiplier of base_lr) from its start on
            curves.append((int(seg["start"]), lambda k, held=float(seg["hold"]): held))
            continue
        spe = int(seg["steps_per_epoch"])
        if spe < 1 or int(seg["epochs"]) < 1:
            raise ConfigError(
                f"schedule needs epochs >= 1 and steps per epoch >= 1 (got {seg['epochs']}, {spe})"
            )
        warm = warmup_steps(sched_cfg, spe)
        if seg.get("steps"):  # a restart segment spans exactly the steps left when it was added
            total = int(seg["steps"])
        else:
            total = schedule_steps(sched_cfg, int(seg["epochs"]), spe) if i == 0 else int(seg["epochs"]) * spe
        curve = _main_curve(sched_cfg, base_lr, spe, warm, max(1, total - warm))

        def with_warmup(k: int, curve: Callable[[int], float] = curve, warm: int = warm) -> float:
            ramp = (k + 1) / (warm + 1) if k < warm else 1.0
            return ramp * curve(k)

        curves.append((int(seg["start"]), with_warmup))

    def multiplier(k: int) -> float:
        start, curve = next((c for c in reversed(curves) if c[0] <= k), curves[0])
        return curve(k - start)

    return multiplier


def build_scheduler(
    optimizer: torch.optim.Optimizer, sched_cfg: Any, optim_cfg: Any, epochs: int, steps_per_epoch: int,
    segments: Optional[list[dict]] = None,
) -> LambdaLR:
    """A LambdaLR to step after every optimizer step. steps_per_epoch counts optimizer steps.

    Warmup (sched.warmup_steps, or warmup_epochs converted to steps) ramps linearly from
    1/(W+1) of the LR to the full LR over W steps, for every schedule. Cosine and OneCycle then
    anneal over the remaining steps; step and multistep count epochs from the start of the run.
    Past the end of the schedule the LR stays at its final value. `segments` (see `multiplier_fn`)
    replaces the one-segment plan of (epochs, steps_per_epoch) when a resumed run was extended.
    """
    segments = segments or schedule_plan(epochs, steps_per_epoch)
    if sched_cfg.name == "onecycle":
        # the optimizer's LR becomes the peak; the curve is relative to it (as torch's OneCycleLR does)
        peak = float(sched_cfg.max_lr) if sched_cfg.max_lr else optimizer.param_groups[0]["lr"]
        for group in optimizer.param_groups:
            group["lr"] = peak
            group.pop("initial_lr", None)
    return LambdaLR(optimizer, [multiplier_fn(sched_cfg, group["lr"], segments) for group in optimizer.param_groups])


def planned_lr(scheduler: LambdaLR, step: int) -> float:
    """The LR the plan gives optimizer step `step` (0-based), first parameter group."""
    return float(scheduler.base_lrs[0]) * float(scheduler.lr_lambdas[0](int(step)))


def built_settings(optimizer: torch.optim.Optimizer, scheduler: LambdaLR) -> dict:
    """The hyperparameters this run's config built (every param group's, and the schedule's base LRs): taken
    before a checkpoint's state is loaded over them, put back by `restore_settings`."""
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    return {"groups": groups, "base_lrs": list(scheduler.base_lrs)}


def restore_settings(optimizer: torch.optim.Optimizer, scheduler: LambdaLR, settings: dict) -> None:
    """The config's hyperparameters over the checkpoint's: optimizer.load_state_dict brings back the saved
    param groups (lr, weight_decay, momentum, betas...) and the scheduler its base LRs, so a change forced
    with run.resume_force=true (optim.lr, optim.weight_decay) was accepted and then not trained with. The
    moments and step counts (the optimizer's state) stay the checkpoint's. Equal values on a plain resume."""
    if len(settings["groups"]) != len(optimizer.param_groups):
        return
    for group, built in zip(optimizer.param_groups, settings["groups"]):
        group.update(built)
    scheduler.base_lrs = list(settings["base_lrs"])


def apply_planned_lr(scheduler: LambdaLR) -> None:
    """Set every parameter group's LR to the plan's at the scheduler's step. A resume loads the optimizer's
    LR from the checkpoint, the old plan's; LambdaLR would set the new plan's (sched.extend=restart or hold,
    run.resume_force) only in its next step(), after the first step had trained at the old one."""
    step = scheduler.last_epoch
    lrs = [float(base) * float(fn(step)) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs):
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr
    scheduler._last_lr = lrs  # what get_last_lr() reports


def check_schedule(sched_cfg: Any, epochs: int, steps_per_epoch: int) -> list[str]:
    """Warnings a person should see before a long run; empty when the schedule fits the run."""
    warnings: list[str] = []
    run_steps = epochs * steps_per_epoch
    if sched_cfg.total_steps and sched_cfg.total_steps != run_steps:
        if sched_cfg.total_steps > run_steps:
            warnings.append(
                f"sched.total_steps={sched_cfg.total_steps} but the run has {run_steps} optimizer steps "
                f"({epochs} epochs x {steps_per_epoch}): the schedule will not reach its end "
                "(remove sched.total_steps to fit it to the run)"
            )
        else:
            tail = (
                "; torch's OneCycleLR would raise here, trainlab holds the final LR"
                if sched_cfg.name == "onecycle"
                else ""
            )
            warnings.append(
                f"sched.total_steps={sched_cfg.total_steps} but the run has {run_steps} optimizer steps "
                f"({epochs} epochs x {steps_per_epoch}): the last {run_steps - sched_cfg.total_steps} steps "
                f"run past the schedule's end at its final LR{tail}"
            )
    if sched_cfg.name == "multistep":
        late = [int(m) for m in sched_cfg.milestones if int(m) >= epochs]
        if late:
            warnings.append(
                f"sched.milestones {late} are at or beyond train.epochs={epochs}: those LR decays never happen"
            )
    if sched_cfg.name == "step" and sched_cfg.step_size >= epochs:
        warnings.append(
            f"sched.step_size={sched_cfg.step_size} >= train.epochs={epochs}: the LR never decays"
        )
    try:
        warm = warmup_steps(sched_cfg, steps_per_epoch)
    except ConfigError as err:
        warnings.append(str(err))
        warm = 0
    if warm >= schedule_steps(sched_cfg, epochs, steps_per_epoch) and warm > 0:
        warnings.append(
            f"warmup of {warm} optimizer steps is as long as or longer than the run ({run_steps} steps): "
            "the LR never reaches its full value"
        )
    return warnings


def _steps_cause(cfg: Any, state: dict) -> str:
    """Why the steps per epoch changed since the checkpoint: the cap, or the training set's size (a resume
    with data.skip_bad_images=true was blamed on train.max_steps_per_epoch, which had not changed)."""
    saved = state.get("config") if isinstance(state.get("config"), dict) else {}
    saved_train, saved_data = saved.get("train") or {}, saved.get("data") or {}
    if saved_train.get("max_steps_per_epoch") != cfg.train.max_steps_per_epoch:
        return (f"train.max_steps_per_epoch {saved_train.get('max_steps_per_epoch')} -> "
                f"{cfg.train.max_steps_per_epoch}")  # fmt: skip
    if cfg.data.skip_bad_images and not saved_data.get("skip_bad_images"):
        return "data.skip_bad_images=true left unreadable images out of the training set"
    return "the training set is not the size it was when the run started"


def plan_schedule(cfg: Any, state: Optional[dict], steps_per_epoch: int, base_lr: float, say) -> dict:
    """The LR schedule a run follows: `{"plan": segments, "epochs", "steps_per_epoch"}` (saved in checkpoints).

    A fresh run gets one segment sized from train.epochs. A resume keeps the checkpoint's plan unless
    train.epochs or the steps per epoch (train.max_steps_per_epoch) changed; then, if the new sizes would
    change the LR curve from the resume step on (cosine and one-cycle are sized from them; step schedules
    are not), `sched.extend` decides: `refuse` (the default) names the jump, `hold` keeps the LR the run's
    last step trained at, constant, for the steps left (refused when that is below HOLD_MIN_SHARE of the peak,
    e.g. a cosine that had ended at min_lr=0, unless run.resume_force=true), `restart` runs a new schedule
    over the steps left."""
    epochs = int(cfg.train.epochs)
    fresh = {"plan": schedule_plan(epochs, steps_per_epoch), "epochs": epochs, "steps_per_epoch": steps_per_epoch}
    if state is None:
        return fresh
    saved = state.get("schedule")
    if saved is None:  # an older checkpoint: its run was sized from its own config and these steps
        saved_epochs = int(state.get("config", {}).get("train", {}).get("epochs", epochs))
        saved = {"plan": schedule_plan(saved_epochs, steps_per_epoch), "epochs": saved_epochs,
                 "steps_per_epoch": steps_per_epoch}  # fmt: skip
    if saved["epochs"] == epochs and saved["steps_per_epoch"] == steps_per_epoch:
        return saved
    step = int(state.get("global_step", 0))
    plan = [dict(seg) for seg in saved["plan"]]
    last = plan[-1]
    last["epochs"] = max(1, int(last["epochs"]) + epochs - int(saved["epochs"]))
    last["steps_per_epoch"] = steps_per_epoch
    candidate = {"plan": plan, "epochs": epochs, "steps_per_epoch": steps_per_epoch}
    old_curve = multiplier_fn(cfg.sched, base_lr, saved["plan"])
    new_curve = multiplier_fn(cfg.sched, base_lr, plan)
    end = max(epochs * steps_per_epoch, step + 1)
    probes = sorted({step, *range(step, end, max(1, (end - step) // 256)), end - 1})
    jump = next((k for k in probes if abs(old_curve(k) - new_curve(k)) > 1e-9 * max(abs(old_curve(k)), 1e-12)), None)
    if jump is None:
        return candidate
    old_lr, new_lr = base_lr * old_curve(jump), base_lr * new_curve(jump)
    what = (f"train.epochs {saved['epochs']} -> {epochs}" if saved["epochs"] != epochs
            else f"steps per epoch {saved['steps_per_epoch']} -> {steps_per_epoch} ({_steps_cause(cfg, state)})")
    mode = str(cfg.sched.extend)
    left = max(1, epochs * steps_per_epoch - step)
    held = old_curve(max(step - 1, 0))  # the multiplier the run's last step trained at
    held_lr, too_low = base_lr * held, held < HOLD_MIN_SHARE
    restart = f"sched.extend=restart (a new {cfg.sched.name} over the {left} steps left)"
    if mode == "hold":
        if too_low and not cfg.run.resume_force:
            raise ConfigError(
                f"cannot resume with sched.extend=hold: {what}, and the LR the run's last step trained at is "
                f"{held_lr:.4g} ({100 * held:.2g}% of the peak {base_lr:.4g}: its {cfg.sched.name} schedule had "
                f"ended), so the {left} steps left would barely train; choose {restart}, or force holding that "
                "LR with run.resume_force=true"
            )
        say(f"sched.extend=hold: {what}; the LR stays at {held_lr:.4g} (the LR step {step} trained at) for "
            f"the {left} steps left" + (f" (run.resume_force=true: below {HOLD_MIN_SHARE:.0%} of the peak)" if too_low else ""))
        plan = [dict(seg) for seg in saved["plan"]] + [{"start": step, "hold": held}]
        return {"plan": plan, "epochs": epochs, "steps_per_epoch": steps_per_epoch}
    if mode == "restart":
        plan = [dict(seg) for seg in saved["plan"]] + [
            {"start": step, "epochs": 1, "steps_per_epoch": steps_per_epoch, "steps": left}]
        say(f"sched.extend=restart: {what}; a new {cfg.sched.name} schedule over the {left} steps left "
            f"starts at step {step}")
        return {"plan": plan, "epochs": epochs, "steps_per_epoch": steps_per_epoch}
    if cfg.run.resume_force:
        say(f"run.resume_force=true: {what} resizes the {cfg.sched.name} schedule; the LR at step {jump} moves "
            f"from {old_lr:.4g} to {new_lr:.4g}")
        return candidate
    # hold is offered only where it trains: at a cosine's end its LR is min_lr (0 by default)
    hold = "" if too_low else f"sched.extend=hold (keep the LR {held_lr:.4g}, constant) or "
    raise ConfigError(
        f"cannot resume: {what} resizes the {cfg.sched.name} schedule, so the LR at step {jump} would jump from "
        f"{old_lr:.4g} to {new_lr:.4g}; choose {hold}{restart}, or restore the old value"
    )
