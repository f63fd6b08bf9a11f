"""Optimizers, parameter groups and per-optimizer-step schedules (closed forms, accumulation, resume)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainlab.config import CHOICES, OptimConfig, SchedConfig
from trainlab.errors import ConfigError
from trainlab.train.optim import build_optimizer, build_scheduler, check_schedule, effective_lr


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )


def _lrs(
    sched_kw: dict, epochs: int, steps_per_epoch: int, steps: int | None = None, **optim_kw
) -> list[float]:
    """The LR each optimizer step used, stepping the scheduler once per optimizer step."""
    optim_cfg = OptimConfig(**{"name": "sgd", "lr": 0.1, **optim_kw})
    opt = build_optimizer(_model(), optim_cfg)
    sched = build_scheduler(opt, SchedConfig(**sched_kw), optim_cfg, epochs, steps_per_epoch)
    used = []
    for _ in range(steps if steps is not None else epochs * steps_per_epoch):
        used.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return used


# ---------------------------------------------------------------- optimizers


@pytest.mark.parametrize("name", CHOICES["optim.name"])
def test_each_optimizer_builds_and_steps(name):
    """Every name the config admits builds its own optimizer (build_optimizer's last branch takes the last name
    unasked: config.validate refuses the others, test_error_matrix's optim.name-not-a-choice)."""
    model = _model()
    opt = build_optimizer(model, OptimConfig(name=name, lr=0.01, nesterov=(name == "sgd")))
    assert type(opt).__name__.lower() == name
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.randn(4, 3, 8, 8)).logsumexp(1).mean().backward()
    opt.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_no_decay_groups_hold_norm_weights_and_biases():
    model = _model()
    opt = build_optimizer(model, OptimConfig(weight_decay=5e-4, no_decay_norm_bias=True))
    decay, no_decay = opt.param_groups
    conv, bn, linear = model[0], model[1], model[5]
    assert {id(p) for p in decay["params"]} == {id(conv.weight), id(linear.weight)}
    assert {id(p) for p in no_decay["params"]} == {id(conv.bias), id(bn.weight), id(bn.bias), id(linear.bias)}
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0

    single = build_optimizer(model, OptimConfig(weight_decay=5e-4)).param_groups
    assert len(single) == 1 and len(single[0]["params"]) == 6


def test_frozen_parameters_are_left_out():
    model = _model()
    model[0].requires_grad_(False)
    opt = build_optimizer(model, OptimConfig())
    assert sum(len(g["params"]) for g in opt.param_groups) == 4


def test_linear_lr_scale():
    cfg = OptimConfig(lr=0.1, lr_scale="linear")
    assert effective_lr(cfg, 512) == pytest.approx(0.2)
    assert build_optimizer(_model(), cfg, global_batch=64).param_groups[0]["lr"] == pytest.approx(0.025)
    assert effective_lr(OptimConfig(lr=0.1), 512) == 0.1


def test_nesterov_without_momentum_is_config_error():
    with pytest.raises(ConfigError, match="momentum"):
        build_optimizer(_model(), OptimConfig(nesterov=True, momentum=0.0))


# ---------------------------------------------------------------- schedules


def test_cosine_closed_form_ends_at_min_lr():
    lrs = _lrs({"name": "cosine", "min_lr": 0.001}, epochs=3, steps_per_epoch=10)
    for k in (0, 7, 15, 29):
        assert lrs[k] == pytest.approx(0.001 + (0.1 - 0.001) * 0.5 * (1 + math.cos(math.pi * k / 29)))
    assert lrs[-1] == pytest.approx(0.001)


def test_warmup_ramps_then_cosine():
    lrs = _lrs({"name": "cosine", "warmup_epochs": 1}, epochs=3, steps_per_epoch=10)
    for k in range(10):
        assert lrs[k] == pytest.approx(0.1 * (k + 1) / 11)
    assert lrs[0] > 0 and lrs[10] == pytest.approx(0.1)
    assert lrs[25] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 15 / 19)))
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)


def test_warmup_applies_to_constant_step_and_multistep():
    constant = _lrs({"name": "constant", "warmup_steps": 5}, epochs=1, steps_per_epoch=10)
    assert constant[:5] == pytest.approx([0.1 * (k + 1) / 6 for k in range(5)])
    assert constant[5:] == pytest.approx([0.1] * 5)
    step = _lrs(
        {"name": "step", "step_size": 2, "gamma": 0.5, "warmup_steps": 3}, epochs=6, steps_per_epoch=4
    )
    assert step[:3] == pytest.approx([0.1 * (k + 1) / 4 for k in range(3)])


def test_step_and_multistep_count_epochs_in_optimizer_steps():
    step = _lrs({"name": "step", "step_size": 1, "gamma": 0.5}, epochs=3, steps_per_epoch=4)
    assert step == pytest.approx([0.1 * 0.5 ** (k // 4) for k in range(12)])
    multi = _lrs({"name": "multistep", "milestones": [1, 3], "gamma": 0.2}, epochs=4, steps_per_epoch=5)
    expected = [0.1] * 5 + [0.02] * 10 + [0.004] * 5
    assert multi == pytest.approx(expected)


def test_onecycle_matches_torch_onecyclelr():
    total, kw = 37, {"pct_start": 0.25, "div_factor": 25.0, "final_div_factor": 1e4}
    ours = _lrs({"name": "onecycle", "max_lr": 0.4, **kw}, epochs=1, steps_per_epoch=total)
    opt = torch.optim.SGD(_model().parameters(), lr=0.1)
    ref_sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.4, total_steps=total, cycle_momentum=False, anneal_strategy="cos", **kw
    )
    reference = []
    for _ in range(total):
        reference.append(opt.param_groups[0]["lr"])
        opt.step()
        ref_sched.step()
    assert ours == pytest.approx(reference, rel=1e-9)


def test_onecycle_under_grad_accum_ends_at_final_lr():
    """20 micro-batches per epoch, grad_accum=4 -> 5 optimizer steps per epoch (seed 001's fix)."""
    batches_per_epoch, grad_accum, epochs = 20, 4, 2
    model = _model()
    optim_cfg = OptimConfig(lr=0.1)
    sched_cfg = SchedConfig(name="onecycle", pct_start=0.3)
    opt = build_optimizer(model, optim_cfg)
    sched = build_scheduler(opt, sched_cfg, optim_cfg, epochs, batches_per_epoch // grad_accum)
    used = []
    for _ in range(epochs):
        for micro in range(batches_per_epoch):
            (model(torch.randn(2, 3, 8, 8)).logsumexp(1).mean() / grad_accum).backward()
            if (micro + 1) % grad_accum == 0:
                used.append(opt.param_groups[0]["lr"])
                opt.step()
                opt.zero_grad()
                sched.step()
    assert len(used) == 10
    assert used[-1] == pytest.approx(0.1 / 25.0 / 1e4)  # the final LR, exactly on the last optimizer step
    assert max(used) == pytest.approx(0.1) and used.index(max(used)) == 2  # peak at pct_start * 10 - 1

    # the bug: counting micro-batches spans 4x too many steps, so the run stops near the peak
    wrong = _lrs({"name": "onecycle", "pct_start": 0.3}, epochs, batches_per_epoch, steps=10)
    assert wrong[-1] > 0.05 and wrong[-1] > wrong[-2]  # still climbing to the peak


def test_schedule_past_its_end_holds_the_final_lr():
    lrs = _lrs({"name": "onecycle", "total_steps": 10}, epochs=3, steps_per_epoch=5)
    assert lrs[9:] == pytest.approx([0.1 / 25 / 1e4] * 6)


def test_scheduler_state_dict_resumes_the_same_curve():
    optim_cfg = OptimConfig(lr=0.1)
    sched_cfg = SchedConfig(name="cosine", warmup_steps=3, min_lr=0.01)
    full = _lrs({"name": "cosine", "warmup_steps": 3, "min_lr": 0.01}, epochs=2, steps_per_epoch=8)

    opt = build_optimizer(_model(), optim_cfg)
    sched = build_scheduler(opt, sched_cfg, optim_cfg, 2, 8)
    for _ in range(7):
        opt.step()
        sched.step()
    saved = {"opt": opt.state_dict(), "sched": sched.state_dict()}

    opt2 = build_optimizer(_model(), optim_cfg)
    sched2 = build_scheduler(opt2, sched_cfg, optim_cfg, 2, 8)
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    resumed = []
    for _ in range(9):
        resumed.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sched2.step()
    assert resumed == pytest.approx(full[7:])


def test_check_schedule_flags_problems():
    assert check_schedule(SchedConfig(name="cosine"), epochs=3, steps_per_epoch=10) == []
    assert check_schedule(SchedConfig(name="onecycle", total_steps=30), 3, 10) == []

    (longer,) = check_schedule(SchedConfig(name="onecycle", total_steps=120), 3, 10)
    assert "120" in longer and "30" in longer and "not reach its end" in longer
    (shorter,) = check_schedule(SchedConfig(name="onecycle", total_steps=20), 3, 10)
    assert "20" in shorter and "30" in shorter and "OneCycleLR would raise" in shorter

    (milestones,) = check_schedule(SchedConfig(name="multistep", milestones=[60, 120, 160]), 5, 10)
    assert "[60, 120, 160]" in milestones and "never happen" in milestones  # seed 000's setup
    (warmup,) = check_schedule(SchedConfig(name="cosine", warmup_epochs=4), 3, 10)
    assert "40" in warmup and "30" in warmup
