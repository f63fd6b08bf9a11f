"""Weight EMA: the formula with decay warmup, buffers, state round-trip, DDP unwrapping; which weights a run's
best file and `trainlab eval` score."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
import torch.distributed as dist
from torch import nn

from tests.conftest import TINY, read_metrics
from trainlab.commands.cli import main
from trainlab.state.retention import CheckpointManager
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


@pytest.mark.parametrize("buffers", ["average", "copy"])
def test_ema_averages_the_batchnorm_statistics_like_the_weights(buffers):
    """Issue 26 item 4: the EMA copied the live BatchNorm statistics, so its averaged weights were evaluated
    with statistics of other (the live) weights (before: running_var 6.34 and running_mean 0.034 away from
    their exponential average after 6 steps; after: within 1e-6). train.ema_buffers=average (the default, as timm's and torchvision's references) folds the
    float buffers in with the weights' decay; num_batches_tracked is copied; `copy` keeps the old way."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    ema = ModelEMA(model, decay=0.9, buffers=buffers)
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())
    expected = {k: v.double().clone() for k, v in model[1].state_dict().items() if v.is_floating_point()}
    for step in range(6):
        torch.manual_seed(step)
        model(torch.randn(8, 3, 8, 8) * (1 + step))  # moves the running stats a lot each step
        _train_step(model, opt)
        ema.update(model, step)
        decay = ema.decay_at(step)
        live = model[1].state_dict()
        for k in ("running_mean", "running_var"):
            expected[k] = decay * expected[k] + (1 - decay) * live[k].double()
    got = ema.module[1]
    assert int(got.num_batches_tracked) == int(model[1].num_batches_tracked) == 12
    for k in ("running_mean", "running_var"):
        want = expected[k] if buffers == "average" else model[1].state_dict()[k].double()
        torch.testing.assert_close(getattr(got, k).double(), want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(expected["running_var"], model[1].running_var.double())  # the two do differ


def test_ema_refuses_an_unknown_buffer_mode():
    with pytest.raises(ValueError, match="average or copy"):
        ModelEMA(_model(), decay=0.9, buffers="mean")


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


def test_eval_of_the_best_checkpoint_reproduces_the_score_in_its_name(tmp_path, capsys):
    """Issue 26 item 4: the best file is chosen by the EMA's score when it beats the raw weights', but
    `trainlab eval` scored the raw weights unless --ema was given, and the name did not say which had scored
    (before: epoch=01-val_acc1=15.62.pt, eval 12.50). Now the name says it (epoch=01-ema-val_acc1=15.62.pt),
    eval scores the weights that won by default (15.62), --raw forces the raw ones (12.50), and a best file
    named the old way is chosen by its epoch's scores."""
    run_dir = tmp_path / "run"
    args = ["train", *TINY, "train.ema_decay=0.9", "data.train_size=160", "data.val_size=64", "optim.lr=0.5",
            "run.progress=none", f"run.dir={run_dir}"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err[-2000:]
    rows = read_metrics(run_dir)
    won = [r for r in rows if float(r["ema_val_acc1"]) > float(r["val_acc1"])]
    assert won, f"this recipe is meant to have an epoch where the EMA wins: {rows}"
    (best,) = (run_dir / "checkpoints").glob("epoch=*.pt")
    epoch, weights, score = re.fullmatch(r"epoch=(\d+)-(?:(ema)-)?val_acc1=([\d.]+)\.pt", best.name).groups()
    row = rows[int(epoch) - 1]
    assert weights == ("ema" if row in won else None)
    capsys.readouterr()

    def evaluate(path, *flags) -> dict:
        assert main(["eval", str(path), *flags, "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    result = evaluate(best)
    assert f"{result['val_acc1']:.2f}" == score  # the name's own format
    assert result["weights"] == (weights or "raw")
    assert evaluate(best, "--raw")["val_acc1"] == pytest.approx(float(row["val_acc1"]), abs=1e-3)
    assert evaluate(best, "--ema")["val_acc1"] == pytest.approx(float(row["ema_val_acc1"]), abs=1e-3)

    # a best file of an older run: no tag in its name; its epoch's scores choose
    older = tmp_path / "older" / "checkpoints"
    older.mkdir(parents=True)
    untagged = older / f"epoch={epoch}-val_acc1={score}.pt"
    shutil.copyfile(best, untagged)
    assert f"{evaluate(untagged)['val_acc1']:.2f}" == score
    assert [e[2].name for e in CheckpointManager(older).best()] == [untagged.name]  # still read as a best file
    assert [e[2].name for e in CheckpointManager(best.parent).best()] == [best.name]
    assert main(["eval", str(best), "--raw", "--ema"]) == 2


def test_a_forced_resume_averages_with_the_new_ema_decay(tmp_path):
    """Sibling of issue 26 item 8: ModelEMA.load_state_dict took the checkpoint's decay and warmup, so a
    train.ema_decay changed with run.resume_force=true was accepted and not used (before: 0.9 after a forced
    0.5). The config's values now hold after the EMA's weights are loaded."""
    import trainlab

    class Seen:
        def on_train_start(self, run) -> None:
            self.decay, self.warmup = run.trainer.ema.decay, run.trainer.ema.warmup

    run_dir = tmp_path / "run"
    small = [*TINY, "data.train_size=64", "data.val_size=32", "train.max_steps_per_epoch=2", "run.progress=none",
             "train.epochs=1", f"run.dir={run_dir}"]  # fmt: skip
    assert trainlab.fit(None, *small, "train.ema_decay=0.9").status == "finished"
    seen = Seen()
    trainlab.fit(None, *small, "train.epochs=2", "train.ema_decay=0.5", "train.ema_warmup=false",
                 "run.resume_force=true", callbacks=[seen])  # fmt: skip
    assert (seen.decay, seen.warmup) == (0.5, False)
