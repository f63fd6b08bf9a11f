"""The Trainer's step bookkeeping, on a real tiny model and real batches (no mocks): what a skipped
non-finite micro-batch and a short last accumulation window do to the update and the epoch's figures."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from trainlab.train.engine import EpochTotals, Trainer, bookkeeping_dtype


class ListLoader:
    """A loader over fixed batches, with the `batches(epoch, start)` interface the Trainer uses."""

    def __init__(self, batches):
        self._batches = batches

    def __len__(self) -> int:
        return len(self._batches)

    def batches(self, epoch: int, start: int = 0):
        yield from self._batches[start:]


def _batches(n: int, nan_at: int | None = None):
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        x = torch.randn(4, 6, generator=g)
        if i == nan_at:
            x[0, 0] = float("nan")
        out.append((x, torch.randint(0, 3, (4,), generator=g)))
    return out


def _trainer(model: nn.Module, **kw) -> Trainer:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0)
    return Trainer(model=model, optimizer=opt, scheduler=sched, device=torch.device("cpu"), **kw)


def _reference_step(model: nn.Module, batches) -> nn.Module:
    """One SGD step on the mean loss over `batches` (the update the window should make)."""
    ref = copy.deepcopy(model)
    loss = sum(nn.functional.cross_entropy(ref(x), y) for x, y in batches) / len(batches)
    loss.backward()
    with torch.no_grad():
        for p in ref.parameters():
            p -= 0.1 * p.grad
    return ref


def _same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.allclose(p, q, atol=1e-6) for p, q in zip(a.parameters(), b.parameters()))


def test_skipped_nonfinite_batch_keeps_the_windows_other_gradients():
    """watch.on_nonfinite=skip with grad_accum=2: batch 1 (the window's second) has a NaN. The step must be
    the mean over batch 0 alone (it used to discard batch 0's gradients and not step at all), and the
    epoch's train loss must stay finite (the NaN used to be added to the totals)."""
    torch.manual_seed(0)
    model = nn.Linear(6, 3)
    batches = _batches(2, nan_at=1)
    expected = _reference_step(model, batches[:1])
    trainer = _trainer(model, grad_accum=2, on_nonfinite="skip")
    totals, _ = trainer.train_epoch(ListLoader(batches), epoch=1)
    assert trainer.skipped_nonfinite == 1 and trainer.global_step == 1
    assert _same(model, expected)
    figures = totals.reduced(None)
    assert math.isfinite(figures["train_loss"]) and figures["train_samples"] == 4


def test_short_last_window_is_a_mean_over_its_own_batches():
    """grad_accum=2 over 3 batches: the last window holds one batch and must weigh it 1/1, not 1/2."""
    torch.manual_seed(0)
    model = nn.Linear(6, 3)
    batches = _batches(3)
    after_first = _reference_step(model, batches[:2])
    expected = _reference_step(after_first, batches[2:])
    trainer = _trainer(model, grad_accum=2)
    trainer.train_epoch(ListLoader(batches), epoch=1)
    assert trainer.global_step == 2
    assert _same(model, expected)


def test_bookkeeping_dtype_exists_on_every_device():
    """Item 13: Apple's MPS has no float64; the running sums use float32 there, float64 elsewhere."""
    assert bookkeeping_dtype(torch.device("mps")) == torch.float32
    assert bookkeeping_dtype(torch.device("cpu")) == torch.float64
    assert EpochTotals.zeros(torch.device("cpu")).loss_sum.dtype == torch.float64
