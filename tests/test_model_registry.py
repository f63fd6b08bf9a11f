"""Every model the registry offers trains a step, or is refused by name in one line.

By default the step runs for one model per architecture (the smallest of each torchvision builder module,
plus the CIFAR ResNets and both auxiliary-head models), so the suite stays fast; TRAINLAB_ALL_MODELS=1
runs every registry name (minutes: the 600M-parameter RegNet and ViT take a while to build). Each step is
the real Trainer (forward in train mode, loss, backward, optimizer step) on 2 random images of the
smallest size the model takes, on the CPU with one thread.
"""

from __future__ import annotations

import os

import pytest
import torch
import torchvision

from tests.conftest import TINY
from trainlab import models
from trainlab.commands.cli import main
from trainlab.errors import ConfigError
from trainlab.models.outputs import training_loss
from trainlab.train.engine import Trainer


def _family(name: str) -> str:
    if name in models.CIFAR_RESNET_BLOCKS:
        return "cifar_resnet"
    return torchvision.models.get_model_builder(name).__module__


def _params(name: str) -> int:
    if name in models.CIFAR_RESNET_BLOCKS:
        return int(name[6:])
    return torchvision.models.get_model_weights(name).DEFAULT.meta["num_params"]


def _representatives() -> list[str]:
    smallest: dict[str, str] = {}
    for name in models.available():
        family = _family(name)
        if family not in smallest or _params(name) < _params(smallest[family]):
            smallest[family] = name
    return sorted(set(smallest.values()) | {"googlenet", "inception_v3"})


NAMES = models.available() if os.environ.get("TRAINLAB_ALL_MODELS") == "1" else _representatives()


class OneBatch:
    """The Loader protocol over one fixed batch (the data side; the training step itself is the real one)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return 1

    def batches(self, epoch: int, start: int = 0):
        yield self.images, self.labels


def _train_one_step(model: torch.nn.Module, size: int) -> tuple[float, int]:
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, size, size, generator=gen)
    labels = torch.tensor([0, 2])
    # weight decay moves every parameter even where a dead ReLU gives no gradient (SqueezeNet's head at 21 px)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0)
    trainer = Trainer(model, optimizer, scheduler, torch.device("cpu"))
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    totals, _ = trainer.train_epoch(OneBatch(images, labels), epoch=0)
    assert trainer.global_step == 1
    moved = sum(not torch.equal(a, p.detach()) for a, p in zip(before, (p for p in model.parameters()
                                                                         if p.requires_grad)))
    return float(totals.loss_sum) / 2, moved


@pytest.mark.parametrize("name", NAMES)
def test_registry_model_trains_a_step_and_refuses_a_size_it_cannot_take(name):
    torch.set_num_threads(1)
    least, step = models.min_img_size(name), models.size_step(name)
    size = -(-max(least, 16) // step) * step  # the smallest size >= 16 it takes
    torch.manual_seed(0)
    model = models.create(name, num_classes=3, img_size=size)
    if least > 16 and not name.startswith("maxvit"):  # (MaxViT is built for one size: see the ViT test)
        with pytest.raises(ConfigError, match=rf"model.name={name} needs images of at least {least} px"):
            model.train()(torch.randn(2, 3, least - 1, least - 1))
    loss, moved = _train_one_step(model, size)
    assert torch.isfinite(torch.tensor(loss)) and loss > 0
    assert moved > 0, "the optimizer step changed no parameter"


def test_vit_is_built_for_the_data_size_and_refuses_another():
    torch.set_num_threads(1)
    with pytest.raises(ConfigError, match="divisible by its patch size 32"):
        models.create("vit_b_32", 3, img_size=48)
    model = models.create("vit_b_32", 3, img_size=64)
    with pytest.raises(ConfigError, match=r"built for 64 px images \(data.img_size=64\) but gets 32x32"):
        model(torch.randn(2, 3, 32, 32))


def test_aux_losses_use_the_papers_weights():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = models.create("googlenet", 3, aux_logits=True).train()
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    output = model(images)
    ce = torch.nn.functional.cross_entropy
    logits, loss = training_loss(output, labels, ce)
    assert torch.equal(logits, output.logits)
    expected = ce(output.logits, labels) + 0.3 * ce(output.aux_logits2, labels) + 0.3 * ce(output.aux_logits1, labels)
    assert torch.allclose(loss, expected)
    outputs = torchvision.models.InceptionOutputs(torch.randn(2, 3), torch.randn(2, 3))
    _, loss = training_loss(outputs, labels, ce)
    assert torch.allclose(loss, ce(outputs.logits, labels) + 0.4 * ce(outputs.aux_logits, labels))
    evaluated = model.eval()(images)
    assert isinstance(evaluated, torch.Tensor) and evaluated.shape == (2, 3)  # eval: the logits alone
    with pytest.raises(ConfigError, match="inception_v3 needs images of at least 299 px with model.aux_logits"):
        models.create("inception_v3", 3, aux_logits=True).train()(torch.randn(2, 3, 75, 75))


def test_googlenet_with_aux_heads_trains_and_evaluates_end_to_end(tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = ["train", *TINY, "model.name=googlenet", "model.aux_logits=true", "data.img_size=32",
            "data.train_size=16", "data.val_size=8", "data.batch_size=4", "train.epochs=1",
            "train.max_steps_per_epoch=2", f"run.dir={run_dir}"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err[-2000:]
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert any(k.startswith("aux1.") for k in state["model"])  # the aux heads were built and trained
    capsys.readouterr()
    assert main(["eval", str(run_dir / "checkpoints" / "last.pt"), "--json"]) == 0
    assert main([*args[:-1], f"run.dir={tmp_path / 'small'}", "model.name=alexnet", "model.aux_logits=false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.name=alexnet needs images of at least 63 px" in err[0]
