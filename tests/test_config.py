"""Config loading: base: chains, overrides, and every config error a user can make (one line, exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainlab.commands.cli import main
from trainlab.config import load_config
from trainlab.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_base_chain_relative_to_including_file_and_overrides(tmp_path):
    write(tmp_path / "common" / "root.yaml", "optim:\n  lr: 0.3\n  momentum: 0.8\ntrain:\n  epochs: 7\n")
    write(tmp_path / "common" / "mid.yaml", "base: root.yaml\noptim:\n  lr: 0.2\n")
    leaf = write(tmp_path / "exp" / "leaf.yaml", "base: ../common/mid.yaml\ndata:\n  batch_size: 64\n")
    cfg = load_config(leaf, ["train.epochs=3", "optim.nesterov=true"])
    assert cfg.optim.lr == 0.2  # the nearer file wins
    assert cfg.optim.momentum == 0.8  # inherited from the root of the chain
    assert cfg.data.batch_size == 64
    assert cfg.train.epochs == 3  # the command line wins over every file
    assert cfg.optim.nesterov is True


def test_seed_004_tiny_inherits_base():
    cfg = load_config(REPO / "configs" / "tiny.yaml")
    assert cfg.model.name == "resnet50" and cfg.model.num_classes == 5
    assert cfg.train.device == "cpu" and cfg.data.root == "/data/imagenet-tiny"


@pytest.mark.parametrize(
    "files, overrides, expected",
    [
        ({"a.yaml": "base: a.yaml\n"}, [], "cycle"),
        ({"a.yaml": "base: b.yaml\n", "b.yaml": "base: a.yaml\n"}, [], "cycle"),
        ({"a.yaml": "base: missing.yaml\n"}, [], "missing.yaml"),
        ({"a.yaml": "optim:\n  lrr: 0.1\n"}, [], "did you mean 'optim.lr'"),
        ({"a.yaml": "optimizer:\n  lr: 0.1\n"}, [], "unknown config key 'optimizer'"),
        ({"a.yaml": "optim: [1, 2\n"}, [], "cannot parse YAML"),
        ({"a.yaml": "- 1\n- 2\n"}, [], "must be a mapping"),
        ({}, ["optim.lr=fast"], "'optim.lr' (expected float)"),
        ({}, ["train.epochs=2.5"], "'train.epochs' (expected int)"),
        ({}, ["train.deterministic=maybe"], "'train.deterministic' (expected bool)"),
        ({}, ["data.batch_size=-3"], "data.batch_size"),
        ({}, ["data.batch_size=big"], "positive int or 'auto'"),
        ({}, ["data.name=imagenet"], "choose one of: shapes, cifar10"),
        ({}, ["model.norm=layer"], "model.norm"),
        ({}, ["optim.name=lion"], "optim.name"),
        ({}, ["sched.name=poly"], "sched.name"),
        ({}, ["train.precision=16"], "train.precision"),
        ({}, ["train.compile=fast"], "train.compile"),
        ({}, ["train.device=gpu"], "train.device"),
        ({}, ["train.epochs=0"], "train.epochs=0 must be in [1, 1000000]"),
        ({}, ["log.trackers=5"], "(expected list[str])"),  # was 'expected list[str)': the bracket was stripped
        ({}, ["data.mean=[1,2]"], "data.mean=[1.0, 2.0] must be three numbers"),
        ({}, ["data.name=folder"], "needs data.root"),
        ({}, ["lr=0.1"], "did you mean 'optim.lr'"),
        ({}, ["optim.lr"], "is not key=value"),
        ({}, ["watch.on_nonfinite=ignore"], "watch.on_nonfinite"),
    ],
)
def test_config_errors_name_the_key_and_the_fix(tmp_path, files, overrides, expected):
    for name, text in files.items():
        write(tmp_path / name, text)
    path = tmp_path / "a.yaml" if files else None
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_cli_config_error_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["train", "optim.lrr=0.1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "optim.lrr" in err and "optim.lr" in err
    assert not (tmp_path / "runs").exists()


def test_missing_config_file_exit_2(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
