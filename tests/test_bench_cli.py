"""`trainlab bench ...` through the real CLI on a tiny synthetic config."""

from __future__ import annotations

import json
import os

import pytest
import torch

from trainlab.commands.cli import main
from trainlab.train.batch_finder import search_max_batch, with_margin

TINY = ["data.name=shapes", "data.train_size=192", "data.val_size=32", "data.img_size=16", "data.batch_size=32",
        "train.device=cpu"]  # fmt: skip


def test_bench_loader_json_schema(capsys):
    rc = main(["bench", "loader", *TINY, "--workers", "0", "--batches", "3", "--json"])
    out = capsys.readouterr().out
    assert rc == 0, out
    result = json.loads(out)
    loaders = [(r["loader"], r.get("num_workers")) for r in result["results"]]
    assert loaders == [("torch", 0), ("tensor", None)]
    assert all(r["images_per_s"] > 0 for r in result["results"])
    assert result["recommended"]["loader"] in ("torch", "tensor")
    assert result["recommended"]["images_per_s"] == max(r["images_per_s"] for r in result["results"])


def test_bench_loader_reads_a_config_file_and_reports_a_missing_one(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text("data:\n  name: shapes\n  train_size: 96\n  img_size: 16\n  batch_size: 16\n")
    assert main(["bench", "loader", str(config), "train.device=cpu", "--workers", "0", "--batches", "2"]) == 0
    assert "recommended: data.loader=" in capsys.readouterr().out
    assert main(["bench", "loader", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert "nope.yaml" in err and "Traceback" not in err


def test_bench_step_breaks_the_step_down(capsys):
    rc = main(["bench", "step", *TINY, "model.name=resnet8", "--steps", "2", "--json"])
    out = capsys.readouterr().out
    assert rc == 0, out
    result = json.loads(out)
    assert set(result["phases_ms"]) == {"data_wait", "host_to_device", "forward", "backward", "optimizer"}
    assert result["phases_ms"]["forward"] > 0 and result["phases_ms"]["backward"] > 0
    assert sum(result["phases_ms"].values()) <= result["step_ms"] * 1.05  # the parts fit in the wall time
    assert result["images_per_s"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU message")
def test_bench_batch_needs_a_gpu(capsys):
    assert main(["bench", "batch", "train.device=cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs a GPU" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("limit", [1, 7, 8, 300, 1000, 5000])
def test_search_max_batch_finds_the_limit(limit):
    tried = []

    def fits(n: int) -> bool:
        tried.append(n)
        return n <= limit

    found = search_max_batch(fits)
    assert found <= limit and found >= limit * (1 - 1 / 64) - 1
    assert len(tried) < 30
    assert with_margin(found) <= 0.9 * found or found < 2


def test_find_max_batch_obeys_a_planted_memory_limit(monkeypatch):
    """The search through its real entry point, on the CPU, with real training steps: a model that runs out of
    memory above 300 images per batch (tests/drills.py oom_model raises torch's OutOfMemoryError, as a full GPU
    does) is found to within the bisection's resolution, less the 10% margin; per rank (RANK) its own limit.
    With no limit, a CPU search stops at CPU_BATCH_CAP."""
    from trainlab.config import load_config
    from trainlab.train.batch_finder import CPU_BATCH_CAP, find_max_batch, with_margin

    small = ["train.device=cpu", "data.img_size=8", "model.name=tests.drills:oom_model"]
    cfg = load_config(None, [*small, "model.kwargs={limits: '300'}"])
    assert find_max_batch(cfg, torch.device("cpu")) == 264  # largest found 296..300 -> x0.9 -> multiple of 8
    cfg = load_config(None, [*small, "model.kwargs={limits: '0:300,1:40'}"])
    monkeypatch.setenv("RANK", "1")
    assert find_max_batch(cfg, torch.device("cpu")) == 32
    monkeypatch.delenv("RANK")
    cfg = load_config(None, ["train.device=cpu", "data.img_size=8", "model.name=resnet8"])
    assert find_max_batch(cfg, torch.device("cpu")) == with_margin(CPU_BATCH_CAP)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_find_max_batch_on_gpu_trains_at_the_found_batch():
    """On a GPU the answer is real: a training step at the found batch runs without running out of memory,
    and after the search the peak-memory counter no longer shows the search's near-OOM peak."""
    from trainlab.config import load_config
    from trainlab.train import optim
    from trainlab.train.batch_finder import _fits, find_max_batch, model_setup

    cuda = torch.device("cuda")
    cfg = load_config(None, ["model.name=resnet18", "model.cifar_stem=true", "data.img_size=32"])
    batch = find_max_batch(cfg, cuda)
    assert batch >= 64
    assert torch.cuda.max_memory_allocated(cuda) < 0.5 * torch.cuda.get_device_properties(cuda).total_memory
    model, precision, channels_last = model_setup(cfg, cuda, 10)
    opt = optim.build_optimizer(model, cfg.optim, 256)
    assert _fits(model, opt, batch, 32, 10, cuda, precision, channels_last)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_bench_loader_recommends_no_more_workers_than_usable_cpus(capsys):
    """On a machine with 2 cores `bench loader` recommended data.num_workers=4, where torch itself warns that 2
    is the most. With this process held to one CPU (its affinity, what os.sched_getaffinity reads), a
    setting above it is not measured, its row says why, and no recommendation is above it."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        rc = main(["bench", "loader", *TINY, "--workers", "0,2", "--batches", "2", "--json"])
    finally:
        os.sched_setaffinity(0, before)
    out = capsys.readouterr().out
    assert rc == 0, out
    result = json.loads(out)
    rows = {(r["loader"], r.get("num_workers")): r for r in result["results"]}
    assert rows[("torch", 2)]["images_per_s"] is None, rows
    assert rows[("torch", 2)]["note"] == "more workers than the 1 CPU this process may use", rows
    assert result["recommended"].get("num_workers", 0) <= 1 and result["usable_cpus"] == 1
