"""timm's models through `model.name=timm/<name>`: built by timm, trained by trainlab, starting weights from a
local file, dropout knobs passed through, unknown names answered with the closest ones."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import TINY, read_metrics, run_trainlab
from trainlab import models
from trainlab.errors import ConfigError

timm = pytest.importorskip("timm", reason="timm is not installed (pip install 'trainlab[timm]')")


def test_a_timm_model_trains_with_trainlab(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_trainlab("train", *TINY, "model.name=timm/test_byobnet", "train.epochs=1",
                        "train.max_steps_per_epoch=3", "model.drop_path_rate=0.05", f"run.dir={run_dir}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_metrics(run_dir)
    assert len(rows) == 1 and int(rows[0]["step"]) == 3 and float(rows[0]["train_loss"]) > 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["model"] == "timm/test_byobnet" and summary["params"] > 0
    # the checkpoint holds timm's own parameter names: it is that architecture, with 10 outputs
    state = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)["model"]
    assert state["head.fc.weight"].shape[0] == 10


def test_drop_rates_reach_the_timm_model():
    plain = models.create("timm/test_vit", 7)
    dropped = models.create("timm/test_vit", 7, drop_rate=0.3, drop_path_rate=0.2)
    rates = [m.drop_prob for m in dropped.modules() if type(m).__name__ == "DropPath"]
    assert rates and max(rates) == pytest.approx(0.2)  # the last block gets the full rate
    assert not [m for m in plain.modules() if type(m).__name__ == "DropPath"]
    assert dropped.head_drop.p == pytest.approx(0.3) and plain.head_drop.p == 0.0
    with pytest.raises(ConfigError, match="timm/"):
        models.create("resnet8", 10, drop_path_rate=0.1)
    with pytest.raises(ConfigError, match="CIFAR ResNets"):  # they take model.drop_rate; torchvision's don't
        models.create("resnet18", 10, drop_rate=0.1)


def test_pretrained_from_a_local_file_with_a_new_head(tmp_path):
    source = models.create("timm/test_resnet", 1000)
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    model = models.create("timm/test_resnet", 5, pretrained=str(path))
    report = model.pretrained_report
    assert report["new_head"] and report["dropped_shape_mismatch"] == ["fc.weight", "fc.bias"]
    mine, theirs = model.state_dict(), source.state_dict()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine if not k.startswith("fc."))
    # a file that would need code to unpickle is refused (weights_only), with a one-line reason
    torch.save({"model": source.state_dict(), "extra": ConfigError("x")}, tmp_path / "pickled.pt")
    with pytest.raises(ConfigError, match="cannot read it as weights"):
        models.create("timm/test_resnet", 5, pretrained=str(tmp_path / "pickled.pt"))


def test_unknown_timm_name_is_one_line_with_closest_names_exit_2(capsys):
    from trainlab.commands.cli import main

    with pytest.raises(ConfigError, match="timm/convnext_atto"):
        models.create("timm/convnext_ato", 10)
    assert main(["inspect", "timm/resnet5O"]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "timm/resnet50" in err, err
    assert main(["inspect", "timm/test_convnext", "--num-classes", "10", "--img-size", "32", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == sum(p.numel() for p in models.create("timm/test_convnext", 10).parameters())
    assert info["params_with_grad"] == info["params"] and info["flops_per_image"] > 0
