"""Model registry, CIFAR variants, pretrained loading and `trainlab inspect` against the seed figures."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from trainlab import models
from trainlab.errors import ConfigError
from trainlab.models.pretrained import hub_cache_path


def _state_equal(a: dict, b: dict, skip: tuple[str, ...] = ()) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a if not k.startswith(skip))


# ---------------------------------------------------------------- seed figures


def test_resnet18_cifar_stem_matches_seed_002():
    info = models.inspect_model("resnet18", num_classes=10, cifar_stem=True)
    assert info["conv_layers"] == 20
    assert info["params"] == 11_173_962
    assert info["trainable_params"] == 11_173_962
    assert info["params_with_grad"] == 11_173_962
    assert info["last_linear_in_features"] == 512
    assert info["img_size"] == 32
    # 0.56 GMACs per 32x32 image is the well-known figure for the CIFAR ResNet-18
    assert 1.0e9 < info["flops_per_image"] < 1.2e9


def test_densenet121_param_count_matches_seed_000():
    info = models.inspect_model("densenet121", num_classes=10, img_size=32)
    assert info["params"] == 6_964_106
    assert info["params_with_grad"] == 6_964_106
    assert info["last_linear_in_features"] == 1024


@pytest.mark.parametrize(
    "name,params",
    # option-A shortcuts: the paper's 0.27M / 0.46M / 0.66M / 0.85M
    [("resnet20", 269_722), ("resnet32", 464_154), ("resnet44", 658_586), ("resnet56", 853_018)],
)
def test_cifar_resnet_param_counts(name, params):
    model = models.create(name, num_classes=10)
    assert sum(p.numel() for p in model.parameters()) == params
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_cifar_resnets_ignore_cifar_stem():
    plain = models.create("resnet8", 10)
    stem = models.create("resnet8", 10, cifar_stem=True)
    assert [p.shape for p in plain.parameters()] == [p.shape for p in stem.parameters()]


def test_densenet_cifar_stem_keeps_full_resolution():
    model = models.create("densenet121", 10, cifar_stem=True)
    conv0 = model.features.conv0
    assert conv0.kernel_size == (3, 3) and conv0.stride == (1, 1)
    assert isinstance(model.features.pool0, nn.Identity)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize("name", ["resnet20", "resnet18"])
def test_norm_none_removes_every_batchnorm(name):
    model = models.create(name, 10, norm="none")
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_unknown_name_lists_close_names():
    with pytest.raises(ConfigError) as err:
        models.create("resnet19", 10)
    message = str(err.value)
    assert "resnet19" in message and "resnet18" in message
    with pytest.raises(ConfigError, match="densenet121"):
        models.create("densnet121", 10)


def test_cifar_stem_on_unsupported_model_is_config_error():
    with pytest.raises(ConfigError, match="cifar_stem"):
        models.create("mobilenet_v3_small", 10, cifar_stem=True)


def test_available_has_torchvision_and_cifar_models():
    names = models.available()
    for name in ("resnet18", "resnet50", "densenet121", "vit_b_16", "resnet20", "resnet56"):
        assert name in names


# ---------------------------------------------------------------- pretrained / fine-tuning


def test_pretrained_checkpoint_starts_from_given_weights_with_new_head(tmp_path):
    torch.manual_seed(1)
    source = models.create("resnet8", num_classes=10)
    path = tmp_path / "last.pt"
    torch.save({"model": source.state_dict(), "epoch": 3, "optimizer": {}}, path)

    torch.manual_seed(2)
    model = models.create("resnet8", num_classes=5, pretrained=str(path))
    assert _state_equal(source.state_dict(), model.state_dict(), skip=("fc.",))
    assert model.fc.weight.shape == (5, 64)
    report = model.pretrained_report
    assert report["new_head"] is True
    assert sorted(report["dropped_shape_mismatch"]) == ["fc.bias", "fc.weight"]


def test_pretrained_plain_state_dict_from_ddp_loads_everything(tmp_path):
    torch.manual_seed(1)
    source = models.create("resnet8", num_classes=10)
    path = tmp_path / "weights.pth"
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, path)
    model = models.create("resnet8", num_classes=10, pretrained=str(path))
    assert _state_equal(source.state_dict(), model.state_dict())
    assert model.pretrained_report["new_head"] is False


def test_pretrained_from_another_architecture_is_config_error(tmp_path):
    path = tmp_path / "r8.pt"
    torch.save(models.create("resnet8", 10).state_dict(), path)
    with pytest.raises(ConfigError, match="do not fit"):
        models.create("resnet20", 10, pretrained=str(path))


def test_pretrained_missing_file_and_bad_weights_name():
    with pytest.raises(ConfigError, match="no such file"):
        models.create("resnet8", 10, pretrained="does/not/exist.pt")
    with pytest.raises(ConfigError, match="IMAGENET1K_V1"):
        models.create("resnet18", 10, pretrained="ResNet18_Weights.NOPE")


def test_torchvision_weights_without_network_is_clear_config_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache
    # this machine has no network; make that hold on machines that do, so nothing downloads
    monkeypatch.setattr("trainlab.models.pretrained._network_reaches", lambda url, timeout_s=3.0: False)
    with pytest.raises(ConfigError) as err:
        models.create("resnet18", 10, pretrained="ResNet18_Weights.IMAGENET1K_V1")
    message = str(err.value)
    assert "not in the torch hub cache" in message and "no network" in message
    assert str(tmp_path) in message and "resnet18-f37072fd.pth" in message


def test_torchvision_weights_from_hub_cache_load_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    import torchvision

    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    torch.manual_seed(3)
    imagenet_like = torchvision.models.resnet18(weights=None)  # stands in for the real file's contents
    cached = hub_cache_path(weights)
    cached.parent.mkdir(parents=True)
    torch.save(imagenet_like.state_dict(), cached)

    model = models.create("resnet18", 10, pretrained="DEFAULT", freeze_backbone=True)
    assert _state_equal(imagenet_like.state_dict(), model.state_dict(), skip=("fc.",))
    assert model.fc.out_features == 10 and model.pretrained_report["new_head"]


@pytest.mark.parametrize("name,head", [("resnet8", "fc"), ("mobilenet_v3_small", "classifier")])
def test_freeze_backbone_trains_only_the_head(name, head):
    model = models.create(name, 10, freeze_backbone=True)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith(head + ".") for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.randn(4, 3, 32, 32)).logsumexp(1).mean().backward()
    opt.step()
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) != n.startswith(head + "."), n


# ---------------------------------------------------------------- CLI


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="trainlab")
    from trainlab.commands.inspect import register_cli

    register_cli(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_inspect_subcommand_json_and_table(capsys):
    args = _parse(["inspect", "resnet8", "--num-classes", "10", "--json"])
    assert args.func(args) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == 75_290 and info["conv_layers"] == 7 and info["last_linear_in_features"] == 64

    args = _parse(["inspect", "resnet8", "--num-classes", "10"])
    assert args.func(args) == 0
    table = capsys.readouterr().out
    assert "75,290" in table and "convolution layers" in table


def _trainlab_script() -> str | None:
    local = Path(sys.executable).parent / "trainlab"
    return str(local) if local.exists() else shutil.which("trainlab")


def test_trainlab_inspect_command_json_and_unknown_name():
    pytest.importorskip("trainlab.commands.cli", reason="the CLI module is not there yet")
    script = _trainlab_script()
    if script is None:
        pytest.skip("the trainlab console script is not installed")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [script, "inspect", "resnet20", "--num-classes", "10", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert (
        info["conv_layers"],
        info["params"],
        info["params_with_grad"],
        info["last_linear_in_features"],
    ) == (
        19,
        269_722,
        269_722,
        64,
    )
    bad = subprocess.run(
        [script, "inspect", "resnet19"], capture_output=True, text=True, env=env, timeout=120
    )
    assert bad.returncode == 2
    assert "resnet18" in bad.stderr + bad.stdout and "Traceback" not in bad.stderr
