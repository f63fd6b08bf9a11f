"""Every recipe in configs/ builds and trains a step, and the recipe features run end to end.

Real data is absent here, so recipes train on the built-in `shapes` set at a small size; the model,
optimizer, schedule, precision, accumulation, augmentation and EMA settings are each recipe's own.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY, read_metrics
from trainlab.commands.cli import main

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))
SMALL = ["data.name=shapes", "data.root=null", "data.train_size=16", "data.val_size=8", "data.batch_size=4",
         "data.img_size=32", "data.num_workers=0", "train.epochs=1", "train.max_steps_per_epoch=2",
         "run.tensorboard=false", "train.threads=1", "train.device=cpu", "model.num_classes=null",
         "run.save_top_k=0"]  # fmt: skip


def test_all_seed_recipes_are_present():
    expected = {"cifar10_resnet18.yaml", "cifar10_densenet121_224.yaml", "imagenet_resnet50.yaml",
                "imagenet_subset_resnet152.yaml", "base.yaml", "tiny.yaml"}  # fmt: skip
    assert expected <= set(RECIPES)


def _groups(state: dict) -> list[dict]:
    return state["optimizer"]["param_groups"]


def _sgd(momentum: float, weight_decay: float, nesterov: bool, no_decay_norm_bias: bool):
    def check(state: dict, summary: dict, rows: list[dict]) -> None:
        groups = _groups(state)
        assert all(g["momentum"] == momentum and g["nesterov"] is nesterov for g in groups)
        assert sorted({g["weight_decay"] for g in groups}) == ([0.0, weight_decay] if no_decay_norm_bias
                                                                else [weight_decay])
        assert all("momentum_buffer" in s for s in state["optimizer"]["state"].values())
    return check


def _final_lr(expected: float):
    """The LR after the run's last step: each schedule ends its (here 1-epoch) curve differently."""
    def check(state: dict, summary: dict, rows: list[dict]) -> None:
        lrs = [g["lr"] for g in _groups(state)]  # exact (metrics.csv rounds to 6 decimals)
        assert lrs == pytest.approx([expected] * len(lrs), rel=1e-6, abs=1e-12), lrs
    return check


def _model(key: str, shape: tuple[int, ...]):
    def check(state: dict, summary: dict, rows: list[dict]) -> None:
        assert tuple(state["model"][key].shape) == shape, (key, tuple(state["model"][key].shape))
    return check


def _ema(state: dict, summary: dict, rows: list[dict]) -> None:
    assert state["ema"] is not None and rows[-1]["ema_val_acc1"] != ""


def _accumulates_two(state: dict, summary: dict, rows: list[dict]) -> None:
    assert state["micro_step"] == 2 and state["global_step"] == 1  # 2 micro-batches, 1 optimizer step


# train.max_steps_per_epoch counts optimizer steps: a grad_accum=2 recipe takes 2 micro-batches a step, so one
# step keeps its cost at SMALL's 2 batches.
ONE_STEP = {"imagenet_resnet50.yaml", "imagenet_resnet50_finetune.yaml"}


def _precision(name: str):
    def check(state: dict, summary: dict, rows: list[dict]) -> None:
        assert summary["precision"] == name and summary["device"] == "cpu"
    return check


def _adamw(weight_decay: float):
    def check(state: dict, summary: dict, rows: list[dict]) -> None:
        assert {g["weight_decay"] for g in _groups(state)} == {0.0, weight_decay}
        assert all("exp_avg_sq" in s for s in state["optimizer"]["state"].values())
    return check


# What sets each recipe apart, checked in what its short run left behind (checkpoint, summary, metrics).
# 1 epoch of 2 batches: cosine ends at min_lr 0, onecycle at lr / (div_factor * final_div_factor), step and
# multistep keep the base LR (their first decay is epochs away).
RECIPE_FEATURES = {
    "base.yaml": [_model("fc.weight", (10, 2048)), _sgd(0.9, 1e-4, False, False), _final_lr(0.0)],
    "cifar10_densenet121_224.yaml": [_model("features.denseblock4.denselayer16.conv2.weight", (32, 128, 3, 3)),
                                     _sgd(0.9, 1e-4, False, False), _final_lr(0.1)],
    "cifar10_resnet18.yaml": [_model("conv1.weight", (64, 3, 3, 3)), _sgd(0.9, 5e-4, False, False),
                              _final_lr(0.0)],
    "cifar10_resnet18_fast.yaml": [_model("conv1.weight", (64, 3, 3, 3)), _sgd(0.9, 5e-4, True, True), _ema,
                                   _final_lr(0.4 / (25 * 1e4))],
    "imagenet_resnet50.yaml": [_model("fc.weight", (10, 2048)), _sgd(0.9, 1e-4, True, True), _accumulates_two,
                               _precision("bf16"), _final_lr(0.1 / (25 * 1e4))],
    "imagenet_resnet50_finetune.yaml": [_adamw(0.05), _ema, _accumulates_two, _precision("bf16")],
    "imagenet_subset_resnet152.yaml": [_model("layer3.35.conv3.weight", (1024, 256, 1, 1)),
                                       _sgd(0.9, 1e-4, False, False), _final_lr(0.1)],
    "tiny.yaml": [_model("fc.weight", (10, 2048)), _precision("32"), _final_lr(0.0)],  # (num_classes: shapes')
}


def test_every_recipe_has_its_features_listed():
    assert sorted(RECIPE_FEATURES) == RECIPES


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_builds_and_trains_a_step(tmp_path, recipe, capsys):
    cap = ["train.max_steps_per_epoch=1"] if recipe in ONE_STEP else []
    code = main(["train", str(REPO / "configs" / recipe), *SMALL, *cap, f"run.dir={tmp_path / 'run'}"])
    out = capsys.readouterr()
    assert code == 0, out.err[-2000:]
    rows = read_metrics(tmp_path / "run")
    assert len(rows) == 1 and float(rows[0]["train_loss"]) > 0
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    for check in RECIPE_FEATURES[recipe]:
        check(state, summary, rows)


def test_recipe_features_end_to_end(tmp_path, capsys):
    """EMA, mixup + cutmix with label smoothing, gradient clipping, warmup + cosine, AdamW without decay on
    norms and biases, and flip TTA in eval, together on a run that must still learn."""
    run_dir = tmp_path / "run"
    args = ["train", *TINY, "train.epochs=3", "train.ema_decay=0.9", "aug.mixup_alpha=0.2", "aug.cutmix_alpha=1.0",
            "aug.mix_prob=0.5", "train.label_smoothing=0.1", "train.clip_grad=2.0", "sched.warmup_epochs=1",
            "optim.name=adamw", "optim.lr=0.003", "optim.weight_decay=0.05", "optim.no_decay_norm_bias=true",
            f"run.dir={run_dir}"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err[-2000:]
    rows = read_metrics(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best_weights"] in ("raw", "ema")
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["ema"] is not None
    assert float(rows[-1]["val_acc1"]) > 10.0  # above chance
    capsys.readouterr()
    # eval --raw of last.pt reproduces the run's own last validation (same raw weights, same val split) ...
    assert main(["eval", str(run_dir / "checkpoints" / "last.pt"), "--raw", "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["val_acc1"] == pytest.approx(float(rows[-1]["val_acc1"]), abs=1e-3)
    assert plain["val_loss"] == pytest.approx(float(rows[-1]["val_loss"]), rel=1e-4)
    # ... and flip TTA changes what is measured (mirrored images average in), and still scores above chance
    assert main(["eval", str(run_dir / "checkpoints" / "last.pt"), "eval.tta=flip", "--raw", "--json"]) == 0
    tta = json.loads(capsys.readouterr().out)
    assert tta["tta"] == "flip" and tta["val_loss"] != pytest.approx(plain["val_loss"], rel=1e-6)
    assert tta["val_acc1"] > 10.0 and tta["val_samples"] == plain["val_samples"]
    assert main(["eval", str(run_dir / "checkpoints" / "last.pt"), "--ema", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["weights"] == "ema"


@pytest.mark.parametrize("policy", ["randaugment", "trivialaugment", "autoaugment"])
def test_heavy_policies_train_through_the_torch_loader(tmp_path, policy, capsys):
    args = ["train", *TINY, "train.epochs=1", "train.max_steps_per_epoch=2", f"aug.policy={policy}",
            "aug.random_erasing=0.25", f"run.dir={tmp_path / 'run'}"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err[-2000:]


def test_heavy_policy_with_tensor_loader_is_refused(tmp_path, capsys):
    code = main(["train", *TINY, "aug.policy=randaugment", "data.loader=tensor", f"run.dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2 and "data.loader=torch" in err
