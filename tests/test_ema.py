"""Weight EMA: the formula with decay warmup, buffers, state round-trip, DDP unwrapping."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn

from trainlab.train.ema import ModelEMA


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def _train_step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    opt.zero_grad()
    model(torch.randn(4, 3, 8, 8)).logsumexp(1).mean().backward()
    opt.step()


@pytest.mark.parametrize("warmup", [True, False])
def test_ema_follows_the_formula(warmup):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    ema = ModelEMA(model, decay=0.9, warmup=warmup)
    expected = [p.detach().double().clone() for p in model.parameters()]
    for step in range(5):
        _train_step(model, opt)
        ema.update(model, step)
        decay = min(0.9, (1 + step) / (10 + step)) if warmup else 0.9
        expected = [
            decay * e + (1 - decay) * p.detach().double() for e, p in zip(expected, model.parameters())
        ]
        for e, got in zip(expected, ema.module.parameters()):
            torch.testing.assert_close(got.double(), e, rtol=1e-5, atol=1e-6)
    # the EMA differs from the live weights (it is an average, not a copy)
    assert not torch.allclose(ema.module[3].weight, model[3].weight)


def test_ema_copies_buffers_and_is_frozen_eval():
    model = _model()
    ema = ModelEMA(model, decay=0.99)
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())
    model(torch.randn(8, 3, 8, 8))  # updates BN running stats
    ema.update(model, 100)
    torch.testing.assert_close(ema.module[1].running_mean, model[1].running_mean, rtol=0, atol=0)
    assert int(ema.module[1].num_batches_tracked) == 1


def test_ema_state_dict_round_trips_through_a_file(tmp_path):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    ema = ModelEMA(model, decay=0.95, warmup=False)
    for step in range(3):
        _train_step(model, opt)
        ema.update(model, step)
    torch.save({"ema": ema.state_dict()}, tmp_path / "ckpt.pt")

    restored = ModelEMA(nn.Sequential(*[m for m in _model()]), decay=0.5)
    restored.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True)["ema"])
    assert restored.decay == 0.95 and restored.warmup is False
    for a, b in zip(ema.module.state_dict().values(), restored.module.state_dict().values()):
        assert torch.equal(a, b)
    # and it continues identically
    _train_step(model, opt)
    ema.update(model, 3)
    restored.update(model, 3)
    for a, b in zip(ema.module.parameters(), restored.module.parameters()):
        assert torch.equal(a, b)


def test_ema_unwraps_ddp(tmp_path):
    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        model = _model()
        ddp = nn.parallel.DistributedDataParallel(model)
        ema = ModelEMA(ddp, decay=0.9)
        assert isinstance(ema.module, nn.Sequential)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.5)
        _train_step(ddp, opt)
        before = [p.detach().clone() for p in ema.module.parameters()]
        ema.update(ddp, 0)  # decay 0.1 at step 0
        for b, e, p in zip(before, ema.module.parameters(), model.parameters()):
            torch.testing.assert_close(e, 0.1 * b + 0.9 * p.detach())
    finally:
        dist.destroy_process_group()
