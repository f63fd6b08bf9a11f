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
from trainlab.cli import main

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))
SMALL = ["data.name=shapes", "data.root=null", "data.train_size=16", "data.val_size=8", "data.batch_size=4",
         "data.img_size=32", "data.num_workers=0", "train.epochs=1", "train.max_steps_per_epoch=2",
         "run.tensorboard=false", "train.threads=2", "train.device=cpu", "model.num_classes=null",
         "run.save_top_k=0"]  # fmt: skip


def test_all_seed_recipes_are_present():
    expected = {"cifar10_resnet18.yaml", "cifar10_densenet121_224.yaml", "imagenet_resnet50.yaml",
                "imagenet_subset_resnet152.yaml", "base.yaml", "tiny.yaml"}  # fmt: skip
    assert expected <= set(RECIPES)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_builds_and_trains_a_step(tmp_path, recipe, capsys):
    code = main(["train", str(REPO / "configs" / recipe), *SMALL, f"run.dir={tmp_path / 'run'}"])
    out = capsys.readouterr()
    assert code == 0, out.err[-2000:]
    rows = read_metrics(tmp_path / "run")
    assert len(rows) == 1 and float(rows[0]["train_loss"]) > 0
    assert (tmp_path / "run" / "checkpoints" / "last.pt").exists()


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
    assert main(["eval", str(run_dir / "checkpoints" / "last.pt"), "eval.tta=flip", "--json"]) == 0
    tta = json.loads(capsys.readouterr().out)
    assert tta["tta"] == "flip" and 0 <= tta["val_acc1"] <= 100
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
