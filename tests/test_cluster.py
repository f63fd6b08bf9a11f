"""What a first multi-process job hits: real torchrun jobs (gloo, 2 processes) on awkward data.

One job recipe covers several defects at once, because each torchrun start costs seconds:
- val_size=33 with val batch 16: rank 0 holds 17 images (2 batches), rank 1 holds 16 (1 batch);
- model.drop_rate=0.3 and mixup: the model and the batch mixer draw random numbers on every rank;
- train.grad_accum=2 over 14 batches of 15 per rank, so the epoch's last window is short; EMA on;
- data.batch_size=auto with a planted per-rank memory limit (tests/drills.py oom_model: the model raises
  torch's OutOfMemoryError above 20 images on rank 0, 17 on rank 1): ranks that would pick 16 and 15 on their
  own must agree on one size (15), and a resume must keep it.
`full` runs it uninterrupted; `resumed` stops it with SIGTERM mid-epoch (both ranks) and runs it again.
model.norm=none, so a single-process evaluation of the saved weights sees what the ranks saw.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests import drills, prewarmed

pytestmark = pytest.mark.timeout(300)

JOB = [
    "data.name=shapes", "data.train_size=420", "data.val_size=33", "data.val_batch_size=16", "data.img_size=16",
    "data.batch_size=auto", "model.name=tests.drills:oom_model", "model.kwargs={limits: '0:20,1:17', drop_rate: 0.3}",
    "model.norm=none", "aug.mixup_alpha=0.4",
    "train.grad_accum=2", "train.ema_decay=0.9", "train.epochs=2", "train.threads=1", "optim.lr=0.05",
    "run.tensorboard=false", "run.progress=none", "watch.print_every=4", "dist.stop_check_every=2",
    "train.nproc=2",
]  # fmt: skip


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def _train(args: list[str], cwd: Path, *drill_specs: tuple[str, dict]) -> subprocess.CompletedProcess:
    extra = [drills.callbacks(*drill_specs)] if drill_specs else []
    return prewarmed.run([sys.executable, "-m", "trainlab", "train", *args, *extra], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=240)  # fmt: skip


def _jsonl(path: Path) -> list[dict]:
    """A JSONL file's records; none when the run never wrote one (events.jsonl of a run without events)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


TIME_COLUMNS = {"data_time_s", "train_time_s", "other_time_s", "epoch_time_s", "images_per_s", "peak_mem_mb",
                "rss_mb", "time", "val_time_s"}  # fmt: skip


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("full")
    proc = _train([*JOB, f"run.dir={root / 'run'}"], root, ("CountCollectives", {"dir": str(root / "collectives")}),
                  ("RankHashes", {"dir": str(root / "hashes")}))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (root / "stdout.txt").write_text(proc.stdout)
    return root


@pytest.fixture(scope="module")
def resumed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resumed")
    run_dir = root / "run"
    stopped = _train([*JOB, f"run.dir={run_dir}"], root, ("SelfSignal", {"phase": "train", "epoch": 1, "batch": 9}))
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    again = _train([*JOB, f"run.dir={run_dir}"], root, ("RankHashes", {"dir": str(root / "hashes")}))
    assert again.returncode == 0, again.stderr[-3000:]
    (root / "stdout.txt").write_text(again.stdout)
    return root


def test_uneven_val_shards_count_every_image_once(full):
    """Item 1: ranks with 2 and 1 val batches finish validation, and the job's figures are those of one
    process evaluating all 33 images with the saved weights."""
    rows = _metrics(full / "run")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    # --raw: the row's val_acc1 is the raw weights' (the run has an EMA, which eval would score if it won)
    proc = prewarmed.run([sys.executable, "-m", "trainlab", "eval", str(full / "run" / "checkpoints" / "last.pt"),
                           "--raw", "--json"], env=_env(), capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    single = json.loads(proc.stdout)
    assert single["val_samples"] == 33
    assert float(rows[-1]["val_acc1"]) == pytest.approx(single["val_acc1"], abs=1e-5)  # the CSV keeps 6 decimals
    assert float(rows[-1]["val_loss"]) == pytest.approx(single["val_loss"], rel=1e-5)


def test_auto_batch_is_agreed_over_ranks(full):
    """Item 2: each rank searches its own device; the job takes the smallest answer on every rank."""
    out = (full / "stdout.txt").read_text()
    assert "data.batch_size=auto: 15 per process" in out
    assert "batch 15 x 2 proc x 2 accum = 60 global" in out
    saved = torch.load(full / "run" / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    assert saved["config"]["data"]["batch_size"] == 15


def test_ranks_draw_their_own_random_numbers(full):
    """Item 3: dropout masks and mixup draws differ between ranks; each rank's streams are saved."""
    saved = torch.load(full / "run" / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    states = saved["rng_per_rank"]
    assert len(states) == 2
    assert not torch.equal(torch.as_tensor(states[0]["torch"]), torch.as_tensor(states[1]["torch"]))


def test_resume_of_a_random_model_under_ddp_is_bitwise(full, resumed):
    """Items 2, 3, 10: an auto-batch DDP run of a dropout model with mixup, EMA and a short accumulation
    window, stopped mid-epoch and resumed, ends with the same weights on both ranks as the uninterrupted
    run, the same metrics, and the same steps.jsonl and events.jsonl (time columns and the stop's own
    events aside)."""
    hashes = lambda root: {p.stem: p.read_text() for p in sorted((root / "hashes").glob("rank*.sha256"))}  # noqa: E731
    assert hashes(full) == hashes(resumed) and len(hashes(full)) == 2
    a, b = torch.load(full / "run" / "checkpoints" / "last.pt", map_location="cpu", weights_only=False), \
        torch.load(resumed / "run" / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    ema_a, ema_b = a["ema"]["module"], b["ema"]["module"]  # the EMA weights, not only the raw ones
    assert ema_a and ema_a.keys() == ema_b.keys()
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    for ra, rb in zip(_metrics(full / "run"), _metrics(resumed / "run")):
        assert {k: v for k, v in ra.items() if k not in TIME_COLUMNS} == {
            k: v for k, v in rb.items() if k not in TIME_COLUMNS}
    keep = ("step", "epoch", "loss", "lr", "grad_norm")
    steps_a = [{k: r.get(k) for k in keep} for r in _jsonl(full / "run" / "steps.jsonl")]
    steps_b = [{k: r.get(k) for k in keep} for r in _jsonl(resumed / "run" / "steps.jsonl")]
    assert steps_a == steps_b
    events = lambda root: [(e["kind"], e["step"], e["message"]) for e in _jsonl(root / "run" / "events.jsonl")  # noqa: E731
                           if e["kind"] not in ("preempted", "resumed", "straggler", "data_bottleneck")]
    assert events(full) == events(resumed)


def test_monitor_logs_the_gradient_norm(full):
    """Item 6: steps.jsonl carries the gradient norm of the step (it used to read zeroed gradients: null)."""
    norms = [r["grad_norm"] for r in _jsonl(full / "run" / "steps.jsonl")]
    assert norms and all(n is not None and math.isfinite(n) and n > 0 for n in norms)


def test_bookkeeping_collectives_are_rare(full):
    """Item 5: while training, ranks agree on stops every dist.stop_check_every=2 steps and compare step
    times once per logged interval (every 4 micro-batches); nothing else talks between ranks per step."""
    for rank in (0, 1):
        record = json.loads((full / "collectives" / f"rank{rank}.json").read_text())
        boundaries, micro = record["boundaries"], record["micro_batches"]
        assert boundaries == 2 * 7 and micro == 2 * 14
        in_training = record["by_phase"]["train"]
        assert in_training <= boundaries // 2 + micro // 4, record


def test_compile_keeps_no_sync_under_accumulation(tmp_path):
    """Item 4: with train.compile the model is torch.compile's wrapper around DDP; accumulation micro-steps
    must still skip DDP's gradient all-reduce. A real one-process gloo group; compile is lazy, so nothing
    is compiled here."""
    import torch.distributed as dist

    from trainlab.distributed import maybe_no_sync

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 2))
        compiled = torch.compile(ddp)
        with maybe_no_sync(compiled, True):
            assert ddp.require_backward_grad_sync is False
        assert ddp.require_backward_grad_sync is True
    finally:
        dist.destroy_process_group()


def test_hook_time_is_not_compute(tmp_path):
    """Item 14: host work in the step-boundary hook (checkpoint writes, stop agreement; here a planted
    40 ms sleep per optimizer step) counts as `other`, not as compute, and the split still adds up."""
    from tests.conftest import TINY

    args = [*TINY, "train.epochs=1", "data.batch_size=32", f"run.dir={tmp_path / 'run'}"]
    proc = prewarmed.run([sys.executable, "-m", "trainlab", "train", *args, drills.callback("SlowHook", seconds=0.04)],
                          env=_env(), capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    row = _metrics(tmp_path / "run")[0]
    steps = json.loads((tmp_path / "run" / "summary.json").read_text())["watch"]["steps"]
    assert steps == 10
    planted = 0.04 * steps
    data, compute, other, epoch = (float(row[k]) for k in ("data_time_s", "train_time_s", "other_time_s",
                                                           "epoch_time_s"))  # fmt: skip
    assert other >= planted * 0.95
    assert compute <= epoch - planted
    assert data + compute + other == pytest.approx(epoch, abs=2e-6)  # metrics.csv rounds each to 6 decimals
