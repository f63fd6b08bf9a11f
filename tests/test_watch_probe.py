"""The watch's early checks on the model and its inputs (watch/model_probe.py) and the config smells every run
gets, through real `trainlab train` runs with the faults planted for real: an LR far too low is flagged in the
first tenth of the run under a warm-up ramp and under a constant schedule (two optimizers), 0..255 inputs at the
first batch, BatchNorm left in eval mode, a random backbone frozen at step 0; healthy recipes of other kinds
stay quiet (the zoo's base recipe is kept quiet in test_watch_budget.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.test_watch_budget import train
from trainlab.watch import Watcher
from trainlab.watch.settings import WatchSettings

PLANNED = 4 * 63  # the base recipe: 2,000 images at batch 32 for 4 epochs


@pytest.mark.parametrize("overrides", [
    ["optim.lr=0.0001"],  # sgd one-cycle: the LR ramps up for 30% of the run
    ["optim.name=adam", "optim.lr=1e-7", "optim.weight_decay=0", "sched.name=constant"],
], ids=["sgd-onecycle", "adam-constant"])
def test_lr_far_too_low_is_flagged_in_the_first_tenth(tmp_path, overrides) -> None:
    warnings = train(tmp_path / "low", *overrides)
    static = [e for e in warnings if e["data"].get("rule") == "weights_static"]
    assert static, warnings
    assert static[0]["kind"] == "not_learning" and static[0]["step"] <= 0.1 * PLANNED
    assert static[0]["data"]["projected_change"] < 0.02 and "optim.lr" in static[0]["message"]


def test_raw_0_255_inputs_and_a_frozen_random_backbone_are_named_before_step_1(tmp_path) -> None:
    """Two independent faults in one short run (each check reads only its own evidence: the first batch, the
    config), to keep the suite short."""
    warnings = train(tmp_path / "raw", "train.epochs=1", "data.train_size=320", "data.mean=[0,0,0]",
                     "data.std=[0.0039216,0.0039216,0.0039216]", "model.freeze_backbone=true")
    scale = [e for e in warnings if e["kind"] == "input_scale"]
    assert len(scale) == 1 and scale[0]["step"] == 0, warnings
    assert max(scale[0]["data"]["std"]) > 20 and "0..255" in scale[0]["message"]
    smells = [e for e in warnings if e["kind"] == "config_smell"]
    assert len(smells) == 1 and smells[0]["step"] == 0, warnings
    assert "model.freeze_backbone=true without model.pretrained" in smells[0]["message"]


def test_batchnorm_in_eval_mode_during_training_is_named(tmp_path) -> None:
    warnings = train(tmp_path / "bn", "train.epochs=1", "data.train_size=320", plant="bn_eval")
    bn = [e for e in warnings if e["kind"] == "batchnorm_mode"]
    assert len(bn) == 1 and bn[0]["step"] <= 10, warnings
    assert bn[0]["data"]["layers"] >= 3


@pytest.mark.parametrize("overrides", [
    ["optim.name=adamw", "optim.lr=0.003", "optim.weight_decay=0.05", "sched.name=cosine", "sched.warmup_epochs=1",
     "aug.mixup_alpha=0.2", "train.ema_decay=0.99"],
    ["data.batch_size=8", "train.grad_accum=4", "train.epochs=1", "optim.lr=0.05", "train.label_smoothing=0.1"],
], ids=["adamw-mixup-ema", "batch8-accum-smoothing"])
def test_healthy_recipes_of_other_kinds_stay_quiet(tmp_path, overrides) -> None:
    """Nothing in-run. A run that ends at chance is said at its end (the one-epoch batch-8 recipe ends at
    11.5% val, chance 10%): that verdict, and only it, must agree with the last epoch's val accuracy."""
    warnings = train(tmp_path / "healthy", "data.train_size=1000", *overrides)
    final = [e for e in warnings if e["data"].get("rule") == "epoch_chance" and e["data"].get("final")]
    assert [e for e in warnings if e not in final] == []
    rows = (tmp_path / "healthy" / "metrics.csv").read_text().splitlines()
    last_val = float(rows[-1].split(",")[rows[0].split(",").index("val_acc1")])
    assert bool(final) == (last_val <= 100 * (0.1 + 0.05 * 0.9)), (last_val, final)


def test_the_probe_in_someone_elses_loop_and_across_a_resume() -> None:
    """No lr_at (a hand-written loop): the LR seen so far stands for the rest; the start survives state_dict."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)
    x, y = torch.randn(64, 3, 4, 4), torch.randint(0, 4, (64,))
    settings = WatchSettings(print_every=5, sample_interval_s=5.0)

    def run(watch: Watcher, steps: int) -> None:
        for _ in range(steps):
            for xb, yb in watch.watch([(x, y)]):
                loss = nn.functional.cross_entropy(model(xb), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
                watch.step(loss.detach())

    with Watcher(settings=settings, model=model, optimizer=opt, planned_steps=400, num_classes=4,
                 device="cpu", verbose=False) as first:
        run(first, 10)
        state = first.state_dict()
        assert not [e for e in first.events if e.data.get("rule") == "weights_static"]  # before 4% of the plan
    with Watcher(settings=settings, model=model, optimizer=opt, planned_steps=400, num_classes=4,
                 device="cpu", verbose=False) as second:
        second.load_state_dict(state)
        run(second, 15)
        static = [e for e in second.events if e.data.get("rule") == "weights_static"]
        assert static and static[0].step == 20, [e.kind for e in second.events]
    # the same loop at a sane LR moves its weights: quiet
    for group in opt.param_groups:
        group["lr"] = 0.5
    with Watcher(settings=settings, model=model, optimizer=opt, planned_steps=400, num_classes=4,
                 device="cpu", verbose=False) as healthy:
        run(healthy, 25)
        assert not [e for e in healthy.events if e.data.get("rule") == "weights_static"]
