"""Progressive resizing: data.img_size=[[fraction, size], ...] trains each epoch at its scheduled size on
every loader, evaluates at the final size, and a run stopped mid-schedule resumes bit for bit."""

from __future__ import annotations

import os

import pytest
import torch

from tests import prewarmed
from tests.conftest import TINY, read_metrics, trainlab_cmd
from tests.drills import self_signal
from trainlab.config import load_config
from trainlab.data import build_data
from trainlab.errors import ConfigError

SCHEDULE = "data.img_size=[[0,12],[0.5,16]]"


@pytest.mark.parametrize("loader", ["tensor", "torch", "stream"])
def test_each_epoch_trains_at_its_scheduled_size_and_val_at_the_last(loader):
    cfg = load_config(None, [SCHEDULE, "train.epochs=4", "data.train_size=64", "data.val_size=32",
                             "data.batch_size=32", f"data.loader={loader}"])  # fmt: skip
    bundle = build_data(cfg, torch.device("cpu"))
    sizes = [next(bundle.train.batches(epoch))[0].shape[-2:] for epoch in (1, 2, 3, 4)]
    assert sizes == [(12, 12), (12, 12), (16, 16), (16, 16)]
    assert next(bundle.val.batches(1))[0].shape[-2:] == (16, 16)
    assert "progressive sizes 12 px from 0, 16 px from 0.5 of training (eval at 16 px)" in bundle.summary


@pytest.mark.parametrize("bad", ["[[0.1,12]]", "[[0,12],[0.5]]", "[[0,12],[1,16]]", "[[0,16],[0.5,-2]]", "abc"])
def test_malformed_schedules_are_refused_with_the_fix(bad):
    with pytest.raises(ConfigError, match="data.img_size"):
        load_config(None, [f"data.img_size={bad}"])


def _train(run_dir, drill=None):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = [*TINY, SCHEDULE, "data.train_size=160", "data.val_size=64", "data.memory_budget_gb=0.0001",
            f"run.dir={run_dir}", *([self_signal(drill)] if drill else [])]  # fmt: skip  (over the budget: streams)
    return prewarmed.run(trainlab_cmd("train", *args), env=env, capture_output=True, text=True, timeout=240)


def test_a_run_stopped_mid_schedule_resumes_bitwise_on_the_streaming_loader(tmp_path):
    reference = _train(tmp_path / "ref")
    assert reference.returncode == 0, reference.stderr[-2000:]
    log = reference.stdout + reference.stderr
    assert "data: stream loader (a 0.00" in log and "exceed data.memory_budget_gb=0.0001" in log, log[-2000:]
    stopped = _train(tmp_path / "run", drill="train:2:2")  # epoch 2 trains at 16 px: stop inside it
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    resumed = _train(tmp_path / "run")
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    def weights(run):
        return torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)["model"]

    a, b = weights(tmp_path / "ref"), weights(tmp_path / "run")
    assert all(torch.equal(a[k], b[k]) for k in a), "weights differ after resume"
    assert [r["val_loss"] for r in read_metrics(tmp_path / "ref")] == [
        r["val_loss"] for r in read_metrics(tmp_path / "run")
    ]
