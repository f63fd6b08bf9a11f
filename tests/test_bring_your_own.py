"""Bring your own model, data, loss, transforms and callbacks: every guarantee holds for a user's parts too.

The user's code is a module written into the test's temp folder (`mynets.py`: a small CNN, a Dataset class
of PIL images or uint8 tensors whose __getitem__ draws from numpy and `random`, a scaled cross-entropy, an
albumentations pipeline), never inside trainlab. It goes in through `trainlab.fit(model=..., train_data=...)`
and through import paths in a config (`model.name: mynets:make_net`), as a user would.
"""

from __future__ import annotations

import json
import math
import os
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests import prewarmed
from tests.conftest import read_metrics, read_summary, trainlab_cmd

USER_MODULE = '''
import os
import random

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

WIDTH = 16


class SmallCNN(nn.Module):
    def __init__(self, num_classes, width=WIDTH):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        return self.fc(self.body(x))


def make_net(num_classes, width=WIDTH):
    return SmallCNN(num_classes, width)


def not_a_model(num_classes):
    return {"layers": 3}


COLOURS = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0)]


class Quadrants(Dataset):
    """Class k of 4: a square of colour k somewhere in a 16 px noise image (flips and crops keep the class).
    `jitter`: each read also draws a brightness shift from numpy and a dimming from `random`, as a
    hand-written augmentation does."""

    classes = ["red", "green", "blue", "yellow"]

    def __init__(self, n, seed, kind="pil", jitter=False, log=None):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 4, (n,), generator=g).tolist()
        self.noise = torch.randint(0, 90, (n, 16, 16, 3), generator=g, dtype=torch.uint8).numpy()
        self.kind, self.jitter, self.log = kind, jitter, log

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        if self.log:
            with open(f"{self.log}.{os.environ.get('RANK', '0')}", "a") as f:
                f.write(f"{i}\\n")
        image = self.noise[i].copy()
        r, c = divmod(i * 7, 9)
        image[2 + r % 5:8 + r % 5, 2 + c % 5:8 + c % 5] = COLOURS[self.labels[i]]
        if self.jitter:
            image = np.clip(image.astype(np.int16) + np.random.randint(-20, 20), 0, 255).astype(np.uint8)
            if random.random() < 0.5:
                image = (image * 0.9).astype(np.uint8)
        if self.kind == "pil":
            return Image.fromarray(image), self.labels[i]
        return torch.from_numpy(image).permute(2, 0, 1).contiguous(), torch.tensor(self.labels[i])


def make_data(n_train=256, n_val=64, kind="pil", jitter=False, log=None):
    return Quadrants(n_train, 0, kind, jitter, log), Quadrants(n_val, 1, kind, False, None), Quadrants.classes


def one_dataset():
    return Quadrants(32, 0)


class Triples(Quadrants):
    def __getitem__(self, i):
        return super().__getitem__(i) + ("extra",)


def bad_items():
    return Triples(32, 0), Triples(16, 1)


class ScaledCE:
    """Cross-entropy times `scale`: a loss whose values say it is the one used."""

    def __init__(self, scale=10.0):
        self.scale = scale

    def __call__(self, logits, targets):
        return self.scale * F.cross_entropy(logits, targets)


def per_sample(logits, targets):
    return F.cross_entropy(logits, targets, reduction="none")


def alb_train():
    import albumentations as A

    return A.Compose([A.HorizontalFlip(p=0.5), A.GaussianBlur(blur_limit=(3, 3), p=0.3),
                      A.CoarseDropout(num_holes_range=(1, 2), hole_height_range=(2, 3), hole_width_range=(2, 3), p=0.3),
                      A.Affine(translate_percent=(-0.05, 0.05), rotate=(-8, 8), p=0.5)])
'''

FIT_SCRIPT = '''
import sys

import trainlab
from mynets import alb_train, make_data, make_net

run_dir, workers, stop = sys.argv[1], sys.argv[2], sys.argv[3]
train, val, _ = make_data(n_train=128, n_val=64, kind="pil", jitter=True)
callbacks = []
if stop == "signal":
    from tests.drills import SelfSignal

    callbacks.append(SelfSignal("train", 2, 1))
elif stop == "callback":
    from tests.drills import StopAfter

    callbacks.append(StopAfter(3, "enough for now"))
result = trainlab.fit(
    None, "train.epochs=2", "data.batch_size=32", f"data.num_workers={workers}", "optim.lr=0.05",
    "sched.name=cosine", "run.tensorboard=false", "train.threads=1", "run.progress=none", "watch.print_every=3",
    f"run.dir={run_dir}",
    model=make_net, train_data=train, val_data=val, train_transform=alb_train(), callbacks=callbacks,
)
print("STATUS", result.status, "|", result.summary.get("status"), "|", result.run_dir)
'''

BASE = ["train.threads=1", "run.tensorboard=false", "run.progress=none", "watch.print_every=4"]


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("user") / "code"
    folder.mkdir()
    (folder / "mynets.py").write_text(textwrap.dedent(USER_MODULE))
    (folder / "brokenmod.py").write_text("def make(:\n    pass\n")
    (folder / "fit_script.py").write_text(textwrap.dedent(FIT_SCRIPT))
    (folder / "mine.yaml").write_text(textwrap.dedent("""\
        model:
          name: mynets:make_net
          kwargs: {width: 16}
        data:
          name: mynets:make_data
          kwargs: {n_train: 256, n_val: 64, kind: pil}
          batch_size: 32
        optim: {lr: 0.01}  # ten times a cross-entropy: a tenth of its LR
        sched: {name: cosine}
        train:
          epochs: 3
          loss: mynets:ScaledCE
          loss_kwargs: {scale: 10.0}
    """))
    return folder


def _env(user_dir: Path) -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join([str(user_dir), os.environ.get("PYTHONPATH", "")])}  # fmt: skip


def _weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["model"]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


@pytest.fixture(scope="module")
def cli_run(user_dir, tmp_path_factory) -> dict:
    """`trainlab train mine.yaml` from another folder: the config names the user's model, data and loss by
    import path; the module is found beside the config file."""
    cwd = tmp_path_factory.mktemp("elsewhere")
    env = {**_env(user_dir), "PYTHONPATH": os.environ.get("PYTHONPATH", "")}  # found through the config's folder
    proc = prewarmed.run(trainlab_cmd("train", str(user_dir / "mine.yaml"), *BASE, "run.dir=run"), cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=240)  # fmt: skip
    return {"proc": proc, "run_dir": cwd / "run", "cwd": cwd, "env": env}


def test_cli_trains_an_import_path_model_data_and_loss_above_chance(cli_run):
    proc, run_dir = cli_run["proc"], cli_run["run_dir"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mynets:make_net" in proc.stdout and "your Dataset (256 train, 64 val, 4 classes)" in proc.stdout
    rows = read_metrics(run_dir)
    assert len(rows) == 3 and float(rows[-1]["val_acc1"]) > 70.0  # chance is 25%
    # the loss is the user's: ten times a cross-entropy that starts near ln(4)
    first = _jsonl(run_dir / "steps.jsonl")[0]
    assert first["loss"] > 5 * math.log(4), first
    saved = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert saved["config"]["model"]["name"] == "mynets:make_net" and saved["config"]["model"]["kwargs"] == {"width": 16}
    assert saved["config"]["train"]["loss_kwargs"] == {"scale": 10.0}


def test_eval_rebuilds_the_model_from_the_checkpoints_import_paths(cli_run, user_dir, tmp_path, capsys, monkeypatch):
    from trainlab.commands.cli import main

    run_dir = cli_run["run_dir"]
    assert cli_run["proc"].returncode == 0
    monkeypatch.chdir(tmp_path)  # the checkpoint's run.config_dir finds mynets, wherever eval runs
    assert main(["eval", str(run_dir / "checkpoints" / "last.pt"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["val_samples"] == 64
    assert result["val_acc1"] == pytest.approx(float(read_metrics(run_dir)[-1]["val_acc1"]), abs=1e-4)
    # the pretrained-baseline check: the same weights as a plain state_dict, the model and data by name
    weights = tmp_path / "net.pth"
    torch.save(_weights(run_dir), weights)
    monkeypatch.syspath_prepend(str(user_dir))
    data = ["data.name=mynets:make_data", "data.kwargs={n_train: 256, n_val: 64, kind: pil}"]
    assert main(["eval", "--model", "mynets:make_net", "--weights", str(weights), *data, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["val_acc1"] == pytest.approx(result["val_acc1"], abs=1e-4)
    assert main(["eval", "--model", "resnet8", "--weights", str(weights), *data]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "do not fit model.name=resnet8" in err, err


def test_fit_with_python_objects_trains_and_returns_the_summary(user_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(user_dir))
    import mynets

    import trainlab
    from tests.drills import Record

    train, val, _ = mynets.make_data(kind="tensor")
    seen = []

    class Spy(trainlab.Callback):
        def on_epoch_end(self, run, row):
            seen.append(row["epoch"])

    result = trainlab.fit(None, *BASE, "train.epochs=3", "data.batch_size=32", "optim.lr=0.05", "sched.name=cosine",
                          f"run.dir={tmp_path / 'run'}", model=mynets.SmallCNN(4), train_data=train, val_data=val,
                          loss_fn=mynets.ScaledCE(1.0), callbacks=[Spy(), Record(str(tmp_path / "hooks.jsonl"))])  # fmt: skip
    assert result.status == "finished" and result.run_dir == tmp_path / "run"
    assert result.summary == read_summary(tmp_path / "run")
    assert result.summary["best_val_acc1"] > 70.0 and seen == [1, 2, 3]
    hooks = _jsonl(tmp_path / "hooks.jsonl")
    calls = [h["hook"] for h in hooks]
    assert calls[0] == "on_train_start" and calls[-1] == "on_train_end" and hooks[-1]["status"] == "finished"
    assert [h["step"] for h in hooks if h["hook"] == "on_step_end"] == list(range(1, 25))  # 3 epochs x 8 steps
    assert [h["step"] for h in hooks if h["hook"] == "on_log"] == [r["step"] for r in _jsonl(result.run_dir / "steps.jsonl")]
    assert {Path(h["path"]).name for h in hooks if h["hook"] == "on_checkpoint"} >= {"last.pt"}
    saved = json.loads(json.dumps(read_summary(tmp_path / "run")))
    assert saved["model"] == "<mynets.SmallCNN>" and saved["data"] == "<mynets.Quadrants>"
    assert "your Dataset (256 train, 64 val, 4 classes)" in capsys.readouterr().out


@pytest.fixture(scope="module")
def reference(user_dir, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    proc = prewarmed.run([sys.executable, str(user_dir / "fit_script.py"), str(run_dir), "0", "none"],
                          env=_env(user_dir), capture_output=True, text=True, timeout=240)  # fmt: skip
    assert proc.returncode == 0 and "STATUS finished" in proc.stdout, proc.stderr[-3000:]
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize("workers,stop", [("0", "signal"), ("2", "signal"), ("0", "callback")])
def test_a_stopped_script_run_again_continues_bitwise(user_dir, reference, tmp_path, workers, stop):
    """SIGTERM mid-epoch 2 (the process signals itself: tests/drills.py SelfSignal) or a callback's
    request_stop: fit writes the checkpoint and returns "stopped"; the same script again continues and ends
    with the weights of the uninterrupted run, bit for bit, with 0 or 2 loader workers (the albumentations
    pipeline and the Dataset's own numpy/random draws included)."""
    run_dir = tmp_path / "run"
    script = [sys.executable, str(user_dir / "fit_script.py"), str(run_dir), workers]
    first = prewarmed.run([*script, stop], env=_env(user_dir), capture_output=True, text=True, timeout=240)
    assert first.returncode == 0, first.stderr[-3000:]
    expected = "STATUS stopped |" if stop == "signal" else "STATUS stopped by callback: enough for now |"
    assert expected in first.stdout, first.stdout[-2000:]
    assert (run_dir / "checkpoints" / "last.pt").is_file() and read_summary(run_dir)["status"] == "stopped"
    again = prewarmed.run([*script, "none"], env=_env(user_dir), capture_output=True, text=True, timeout=240)
    assert again.returncode == 0 and "STATUS finished" in again.stdout, again.stderr[-3000:]
    a, b = _weights(reference), _weights(run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    keep = ("epoch", "train_loss", "val_loss", "val_acc1")
    assert [{k: r[k] for k in keep} for r in read_metrics(reference)] == [{k: r[k] for k in keep}
                                                                          for r in read_metrics(run_dir)]


@pytest.mark.slow
def test_two_processes_shard_an_import_path_dataset_once_per_epoch(user_dir, tmp_path):
    """train.nproc=2 with the user's model and Dataset by import path: each rank takes r::2 of the epoch's
    permutation, so every train sample is read once per epoch by one rank."""
    log = tmp_path / "reads"
    args = ["model.name=mynets:make_net", "data.name=mynets:make_data",
            f"data.kwargs={{n_train: 128, n_val: 32, kind: tensor, log: '{log}'}}", "data.batch_size=16",
            "train.epochs=2", "train.nproc=2", "optim.lr=0.05", *BASE, "run.dir=run"]  # fmt: skip
    proc = prewarmed.run(trainlab_cmd("train", *args), cwd=tmp_path, env=_env(user_dir), capture_output=True,
                          text=True, timeout=240)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    reads = {rank: [int(x) for x in Path(f"{log}.{rank}").read_text().split()] for rank in (0, 1)}
    # each rank's first read is trainlab's look at sample 0 (its type and size), then two epochs of 64
    epochs = {rank: (r[1:65], r[65:]) for rank, r in reads.items()}
    for epoch in (0, 1):
        mine, theirs = set(epochs[0][epoch]), set(epochs[1][epoch])
        assert len(epochs[0][epoch]) == len(mine) == 64 and len(theirs) == 64
        assert mine.isdisjoint(theirs) and mine | theirs == set(range(128))
    assert epochs[0][0] != epochs[0][1]  # a new permutation each epoch


def test_the_watch_says_a_user_model_at_a_hopeless_lr_does_not_learn(user_dir, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(user_dir))
    import mynets

    import trainlab

    train, val, _ = mynets.make_data(n_train=512, kind="tensor")
    result = trainlab.fit(None, *BASE, "train.epochs=4", "data.batch_size=16", "optim.lr=1e-6", "sched.name=constant",
                          "watch.print_every=2", f"run.dir={tmp_path / 'run'}", model=mynets.make_net,
                          train_data=train, val_data=val)  # fmt: skip
    events = [e for e in _jsonl(tmp_path / "run" / "events.jsonl") if e["kind"] == "not_learning"]
    assert events, _jsonl(tmp_path / "run" / "events.jsonl")
    planned = 4 * 512 // 16
    assert events[0]["step"] <= planned // 4, (events[0], planned)
    assert result.summary["events"].get("not_learning", 0) >= 1


def test_doctor_examines_the_users_model_data_and_loss(user_dir, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(user_dir))
    import mynets

    import trainlab

    train, val, _ = mynets.make_data(kind="tensor")
    verdicts = trainlab.doctor(None, "data.batch_size=32", "train.threads=1", model=mynets.make_net,
                               train_data=train, val_data=val, loss_fn=mynets.ScaledCE(10.0), out=tmp_path / "doc",
                               printer=lambda line: None)  # fmt: skip
    checks = {v.check: v for v in verdicts}
    assert {"config_smells", "input_stats", "label_histogram", "sample_grid", "initial_loss", "overfit_batch",
            "parameters", "lr_range", "label_signal", "throughput"} <= set(checks)  # fmt: skip
    assert (tmp_path / "doc" / "doctor.json").is_file() and (tmp_path / "doc" / "samples.png").is_file()
    # the loss the doctor examined is the user's: ten times ln(4) at the initial weights
    assert checks["initial_loss"].figures["loss"] > 5 * math.log(4)
    assert checks["label_signal"].status == "ok"


def test_an_iterable_of_batches_trains_and_resumes_exactly(tmp_path, capsys):
    """A plain DataLoader(shuffle=True) passed as it is: a callback stops the run mid-epoch; fit again continues
    and ends where the uninterrupted run ends (its shuffle draws from torch's generator, whose state at the
    epoch's start the checkpoint keeps)."""
    from torch.utils.data import DataLoader, TensorDataset

    import trainlab
    from tests.drills import StopAfter

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 255, (160, 3, 8, 8), generator=g, dtype=torch.uint8)
    y = (x[:, 0].float().mean((1, 2)) > 127).long()

    def loaders():
        return (DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True),
                DataLoader(TensorDataset(x[:48], y[:48]), batch_size=16))  # fmt: skip

    def fit(run_dir, callbacks=()):
        train, val = loaders()
        return trainlab.fit(None, *BASE, "train.epochs=2", "model.name=resnet8", "model.num_classes=2",
                            "optim.lr=0.05", f"run.dir={run_dir}", train_data=train, val_data=val,
                            callbacks=list(callbacks))  # fmt: skip

    whole = fit(tmp_path / "whole")
    assert "is exact only if the iterable yields the same batches again" in capsys.readouterr().out
    stopped = fit(tmp_path / "parts", [StopAfter(13, "mid-epoch 2")])
    assert stopped.status == "stopped by callback: mid-epoch 2"
    assert fit(tmp_path / "parts").status == "finished" and whole.status == "finished"
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "parts")
    assert all(torch.equal(a[k], b[k]) for k in a)


BAD_INPUTS = [
    (["model.name=nosuchmod:make"], "no module named 'nosuchmod' (looked in"),
    (["model.name=mynets:make_nett"], "has no attribute 'make_nett'; closest: make_net"),
    (["model.name=mynets:WIDTH"], "not a callable"),
    (["model.name=mynets:not_a_model"], "returned dict, expected an nn.Module"),
    (["model.name=mynets:make_net", "model.kwargs={depth: 3}"], "unexpected keyword argument 'depth'"),
    (["data.name=mynets:one_dataset"], "expected (train, val) or (train, val, class_names)"),
    (["data.name=mynets:bad_items"], "train_data[0] is a tuple of 3; expected (image, label)"),
    (["model.name=brokenmod:make"], "importing brokenmod failed: SyntaxError"),
    (["train.loss=mynets:per_sample"], "the loss returned (32,); it must return a scalar"),
    (["aug.train_transform=not a path"], "aug.train_transform='not a path' is not valid"),
]  # fmt: skip


@pytest.mark.parametrize("overrides,says", BAD_INPUTS, ids=[b[1][:30] for b in BAD_INPUTS])
def test_bad_import_inputs_are_one_line_exit_2_and_leave_nothing(user_dir, tmp_path, capsys, monkeypatch,
                                                                 overrides, says):  # fmt: skip
    from trainlab.commands.cli import main

    monkeypatch.syspath_prepend(str(user_dir))
    monkeypatch.chdir(tmp_path)
    data = [] if any(o.startswith("data.name") for o in overrides) else [
        "data.name=mynets:make_data", "data.kwargs={n_train: 64, n_val: 32}"]  # fmt: skip
    code = main(["train", *BASE, "data.batch_size=32", "train.epochs=1", *data, *overrides, "run.dir=run"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and says in err, err
    assert not (tmp_path / "run").exists()


def test_a_bad_import_path_from_the_shell_is_one_line(user_dir, tmp_path):
    proc = prewarmed.run(trainlab_cmd("train", "model.name=mynets:make_nett", "train.epochs=1", "run.dir=run"),
                          cwd=tmp_path, env=_env(user_dir), capture_output=True, text=True, timeout=180)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == ("trainlab: error: model.name=mynets:make_nett: mynets has no attribute "
                                   "'make_nett'; closest: make_net, make_data")


@pytest.mark.slow
def test_the_readmes_example_runs_as_written(tmp_path):
    """The README's "Bring your own" example, copied out of the README and run as a script."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Bring your own model, data, loss and transforms", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "example.py").write_text(code)
    proc = prewarmed.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=240, env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = next(line for line in proc.stdout.splitlines() if line.startswith("finished "))
    status, run_dir, best = result.split()
    assert Path(tmp_path / run_dir).is_dir() and float(best) > 90.0
    assert "label_signal" in proc.stdout  # the doctor's verdicts on the same parts


def test_float_images_go_in_as_they_are_and_fit_again_continues_the_unfinished_run(user_dir, tmp_path, capsys,
                                                                                   monkeypatch):  # fmt: skip
    """A Dataset of float tensors (its own normalisation done) is the model's input as it is; a fit stopped by a
    callback without run.dir is continued by the same fit again, in the same runs/<name>-<time> folder."""
    monkeypatch.syspath_prepend(str(user_dir))
    monkeypatch.chdir(tmp_path)
    import mynets

    import trainlab
    from tests.drills import StopAfter

    class Floats(torch.utils.data.Dataset):
        def __init__(self, base):
            self.base, self.classes = base, base.classes

        def __len__(self):
            return len(self.base)

        def __getitem__(self, i):
            image, label = self.base[i]
            return (image.float() / 255.0 - 0.5) / 0.25, label

    train, val, _ = mynets.make_data(n_train=128, n_val=32, kind="tensor")
    args = (None, *BASE, "train.epochs=2", "data.batch_size=32", "optim.lr=0.05")
    parts = dict(model=mynets.make_net, train_data=Floats(train), val_data=Floats(val))
    stopped = trainlab.fit(*args, **parts, callbacks=[StopAfter(3, "test")])
    assert stopped.status == "stopped by callback: test"
    assert "your dataset's float tensors as they are" in capsys.readouterr().out
    again = trainlab.fit(*args, **parts)
    assert again.status == "finished" and again.run_dir == stopped.run_dir
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [stopped.run_dir.name]
    assert len(read_metrics(again.run_dir)) == 2
