"""Distributed training end to end: real torchrun jobs on the CPU (gloo, 2 processes).

The jobs are shared between tests (module fixtures) because each torchrun start costs several seconds:
- ``single``: one process, data.batch_size=32 (in this process: no launcher needed);
- ``ddp``: ``trainlab train ... train.nproc=2``, data.batch_size=16 per process (global batch 32),
  with rank 1 slowed by the SlowRank drill of tests/drills.py (a straggler; it changes timings, not the math).

Why the two must agree: both loaders draw one permutation per (seed, epoch); rank r takes positions
r::2 of it in batches of 16, so at optimizer step k the two ranks together hold positions
32k..32k+31, exactly the single process's batch k, and DDP averages the two half-batch gradients
into the full-batch one. ``model.norm=none`` because BatchNorm normalises each rank's half with its own
statistics (SyncBatchNorm, ``model.sync_bn``, has no CPU kernel), which would make the two runs differ
by more than rounding. val_size=120 is not a multiple of 2 x 16, so a padded or double-counted val
tail would show as a different val loss/accuracy.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests import drills, prewarmed
from tests.drills import weights_digest

pytestmark = pytest.mark.timeout(300)

TINY = [
    "data.name=shapes", "data.train_size=256", "data.val_size=120", "data.img_size=16", "model.name=resnet8",
    "train.epochs=2", "run.tensorboard=false", "train.threads=1", "model.norm=none", "optim.lr_scale=linear",
    "watch.print_every=2", "run.progress=none",
]  # fmt: skip
SLOW_RANK = ("SlowRank", {"rank": 1, "seconds": 0.05})  # rank 1 sleeps 50 ms per batch: twice a step's time


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def _hashes_to(folder: Path) -> tuple[str, dict]:
    return ("RankHashes", {"dir": str(folder)})


def _trainlab(args: list[str], cwd: Path, timeout: float = 180, **env: str) -> subprocess.CompletedProcess:
    return prewarmed.run(
        [sys.executable, "-m", "trainlab", "train", *args], cwd=cwd, env=_env(**env),
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def _metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _last_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)["model"]


def _hashes(folder: Path) -> dict[str, str]:
    return {p.stem: p.read_text().strip() for p in sorted(folder.glob("rank*.sha256"))}


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    from trainlab.commands.cli import main

    run_dir = tmp_path_factory.mktemp("single") / "run"
    threads = torch.get_num_threads()
    try:
        assert main(["train", *TINY, "data.batch_size=32", f"run.dir={run_dir}"]) == 0
    finally:
        torch.set_num_threads(threads)
    return run_dir


@pytest.fixture(scope="module")
def ddp(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("ddp")
    args = [*TINY, "data.batch_size=16", "train.nproc=2", "run.dir=run"]
    proc = _trainlab([*args, drills.callbacks(SLOW_RANK, _hashes_to(root / "hashes"))], root)
    return {"proc": proc, "run_dir": root / "run", "hashes": _hashes(root / "hashes"), "args": args}


def test_two_process_run_completes_and_only_rank0_writes(ddp):
    proc, run_dir = ddp["proc"], ddp["run_dir"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "batch 16 x 2 proc x 1 accum = 32 global" in out
    for line in ("Epoch 1/2", "Epoch 2/2", "- Val Loss:", "done in "):  # printed by rank 0 alone
        assert sum(ln.startswith(line) for ln in out.splitlines()) == (2 if line == "- Val Loss:" else 1), line
    names = {p.name for p in run_dir.iterdir()}
    assert {"checkpoints", "config.yaml", "metrics.csv", "steps.jsonl", "summary.json"} <= names
    assert names <= {"checkpoints", "config.yaml", "metrics.csv", "steps.jsonl", "summary.json", "events.jsonl",
                     "trainlab.lock"}  # fmt: skip
    holder = json.loads((run_dir / "trainlab.lock").read_text())  # rank 0 held the run dir for the job
    assert "train.nproc" not in holder["command"]  # a worker (the launcher's command has train.nproc=2)
    assert [r["epoch"] for r in _metrics(run_dir)] == ["1", "2"]  # one writer: no duplicated rows
    steps = [json.loads(line)["step"] for line in (run_dir / "steps.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 16  # 2 epochs x 8 steps, counted once
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["status"], summary["world_size"], summary["global_batch"]) == ("finished", 2, 32)


def test_two_processes_match_one_process_on_the_same_global_batch(single, ddp):
    assert ddp["proc"].returncode == 0, ddp["proc"].stderr[-3000:]
    one, two = _metrics(single), _metrics(ddp["run_dir"])
    assert len(one) == len(two) == 2
    for a, b in zip(one, two):
        assert a["step"] == b["step"] == str(8 * int(a["epoch"]))
        for key in ("train_loss", "train_acc1", "val_loss", "val_acc1", "val_acc5", "lr"):
            assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-4, abs=1e-5), (a["epoch"], key)
    # After 16 steps float reassociation (two half-batch gradients averaged vs one full batch) leaves
    # differences around 1e-4; a wrong shard or a summed instead of averaged gradient is ~100x that.
    w1, w2 = _last_weights(single), _last_weights(ddp["run_dir"])
    assert w1.keys() == w2.keys()
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-3, atol=1e-3, msg=name)
    # Images/s is the job's (both ranks' 256 images per epoch), not rank 0's 128.
    for row in two:
        assert 0.8 * 256 < float(row["images_per_s"]) * float(row["epoch_time_s"]) < 1.2 * 256


def test_every_rank_ends_with_the_same_weights(ddp):
    assert ddp["proc"].returncode == 0, ddp["proc"].stderr[-3000:]
    hashes = ddp["hashes"]
    assert sorted(hashes) == ["rank0", "rank1"]
    assert hashes["rank0"] == hashes["rank1"] == weights_digest(_last_weights(ddp["run_dir"]))


def test_linear_lr_scaling_uses_the_global_batch(ddp):
    assert ddp["proc"].returncode == 0, ddp["proc"].stderr[-3000:]
    assert "lr 0.0125 = optim.lr 0.1 x 32/256 global batch (optim.lr_scale=linear)" in ddp["proc"].stdout
    state = torch.load(ddp["run_dir"] / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    assert state["optimizer"]["param_groups"][0]["initial_lr"] == pytest.approx(0.1 * 32 / 256)


@pytest.fixture(scope="module")
def interrupted(ddp, tmp_path_factory) -> dict:
    """The ddp job stopped by a real SIGTERM in both ranks after batch 3 (the SelfSignal drill). Ranks agree
    on stops every dist.stop_check_every=2 steps, so the job stops after batch index 3, at 4 batches done."""
    root = tmp_path_factory.mktemp("interrupted")
    proc = _trainlab([*ddp["args"], "dist.stop_check_every=2", drills.self_signal("train:1:3")], root)
    if (root / "run").is_dir():  # kept as it was, for the one-process resume
        shutil.copytree(root / "run", root / "snapshot")
    return {"proc": proc, "root": root}


def test_resume_after_sigterm_under_ddp_matches_the_uninterrupted_run(ddp, interrupted):
    stopped, root = interrupted["proc"], interrupted["root"]
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert stopped.stderr.count("stopped by SIGTERM at epoch 1, batch 4") == 1  # said once, by rank 0
    # and nothing after it: torchrun's ChildFailedError traceback and its FAILED table followed (issue 24)
    assert "Traceback" not in stopped.stderr and "ChildFailedError" not in stopped.stderr, stopped.stderr[-3000:]
    assert "FAILED" not in stopped.stderr and "closing signal" not in stopped.stderr, stopped.stderr[-3000:]
    assert (root / "run" / "checkpoints" / "last.pt").is_file()
    again = _trainlab([*ddp["args"], drills.callbacks(_hashes_to(root / "hashes"))], root)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stdout
    resumed = _hashes(root / "hashes")
    assert resumed["rank0"] == resumed["rank1"] == ddp["hashes"]["rank0"]  # bitwise the uninterrupted run
    # The interrupted epoch's figures add up over both ranks' halves (saved as the job's sums).
    for a, b in zip(_metrics(ddp["run_dir"]), _metrics(root / "run")):
        for key in ("train_loss", "train_acc1", "val_loss", "val_acc1"):
            assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-6), (a["epoch"], key)


def test_resume_on_one_process_keeps_the_global_batch(single, interrupted, tmp_path, capsys):
    """The 2 x 16 checkpoint continued by one process: refused with 1 x 16 (the global batch would halve),
    allowed with 1 x 32 (the same samples per step), ending where the 1 x 32 run from scratch ends."""
    from trainlab.commands.cli import main

    assert interrupted["proc"].returncode == 143, interrupted["proc"].stderr[-3000:]
    run_dir = tmp_path / "run"
    shutil.copytree(interrupted["root"] / "snapshot", run_dir)
    threads = torch.get_num_threads()
    try:
        assert main(["train", *TINY, "data.batch_size=16", f"run.dir={run_dir}"]) == 2
        err = capsys.readouterr().err
        assert "global batch is 32 (16 x 2 processes x 1 accum)" in err and "data.batch_size=32" in err
        assert main(["train", *TINY, "data.batch_size=32", f"run.dir={run_dir}"]) == 0
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(_metrics(single), _metrics(run_dir)):
        for key in ("train_loss", "val_loss", "val_acc1"):
            assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-4, abs=1e-5), (a["epoch"], key)
    w1, w2 = _last_weights(single), _last_weights(run_dir)
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-3, atol=1e-3, msg=name)


def test_a_failing_rank_ends_the_job_with_its_error(tmp_path):
    # Straight through torch's launcher this time (the other entry point).
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "trainlab", "train", *TINY, "data.batch_size=16", "run.dir=run",
           drills.callback("FailRank", rank=1, epoch=1, batch=2)]  # fmt: skip
    started = time.monotonic()
    proc = prewarmed.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - started
    assert proc.returncode != 0
    assert "RuntimeError: FailRank drill: rank 1 fails at epoch 1, batch 2" in proc.stderr
    assert elapsed < 60, f"the job took {elapsed:.0f}s to end after rank 1 failed"
    # Rank 0 ends either on gloo's "connection closed" in its next collective or on the agent's SIGTERM,
    # whichever comes first: no status it writes is asserted.


def test_a_rank_s_exit_code_is_the_job_s_through_trainlab_s_launcher(tmp_path):
    """`trainlab train ... train.nproc=2` (the launcher, torch's elastic agent in a process of its own): rank 1
    exits 7 mid-epoch. The job's exit code is 7, as torch's agent recorded it, and rank 1's own line is the
    message: no ChildFailedError traceback or failure table after it."""
    args = [*TINY, "data.train_size=128", "data.val_size=32", "train.epochs=1", "data.batch_size=16", "run.dir=run",
            "train.nproc=2", drills.callback("FailRank", rank=1, epoch=1, batch=1, exit_code=7)]  # fmt: skip
    proc = _trainlab(args, tmp_path, timeout=120)
    assert proc.returncode == 7, proc.stderr[-3000:]
    assert "FailRank drill: rank 1 exits 7 at epoch 1, batch 1" in proc.stderr
    assert "ChildFailedError" not in proc.stderr and "Root Cause" not in proc.stderr, proc.stderr[-3000:]


def test_a_slow_rank_is_reported_as_a_straggler(ddp):
    assert ddp["proc"].returncode == 0, ddp["proc"].stderr[-3000:]
    path = ddp["run_dir"] / "events.jsonl"
    events = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    stragglers = [e for e in events if e["kind"] == "straggler"]
    assert stragglers and stragglers[0]["data"]["rank"] == 1


@pytest.mark.slow
def test_a_streamed_run_stopped_on_2_processes_continues_on_1_without_missing_a_sample(tmp_path, capsys):
    """Issue 26 item 1: the streaming loader gave each rank a contiguous slice of the order, so 2 x 16 stopped
    after 4 steps and resumed as 1 x 32 trained the rest of epoch 1 on another half: 64 of its 256 samples
    never, 64 twice. Now the order has the first job's 2 lanes, kept in the checkpoint."""
    from trainlab.commands.cli import main
    from trainlab.data.shapes import generate_shapes

    seen = tmp_path / "seen"
    stream = [*TINY, "data.loader=stream", "train.epochs=1", "run.dir=run"]
    stop = ("SelfSignal", {"phase": "train", "epoch": 1, "batch": 3})
    first = _trainlab([*stream, "data.batch_size=16", "train.nproc=2", "dist.stop_check_every=2",
                       drills.callbacks(stop, ("SeenSamples", {"dir": str(seen)}))], tmp_path)  # fmt: skip
    assert first.returncode == 143, first.stderr[-3000:]
    threads, cwd = torch.get_num_threads(), os.getcwd()
    try:
        os.chdir(tmp_path)
        assert main(["train", *stream, "data.batch_size=32", drills.callback("SeenSamples", dir=str(seen))]) == 0
    finally:
        torch.set_num_threads(threads)
        os.chdir(cwd)
    assert "resuming from" in capsys.readouterr().out
    records = {p.name: [json.loads(line) for line in p.read_text().splitlines()] for p in seen.glob("*.jsonl")}
    (resumed,) = [r for name, r in records.items() if name.startswith("rank0") and len(r[0]["ids"]) == 32]
    start = resumed[0]["batch"]
    assert start == 4  # 4 steps of 2 x 16 done: batch 4 of 32 is the next step
    trained = [i for r in records.values() for b in r if len(b["ids"]) == 16 and b["batch"] < start for i in b["ids"]]
    trained += [i for b in resumed for i in b["ids"]]
    assert len(trained) == 256 and sorted(trained) == list(range(256)), (256 - len(set(trained)), "never seen")
    labels = generate_shapes(256, 16, 0, "train")[1]  # each batch's labels are those of the samples it names
    assert all(b["labels"] == labels[b["ids"]].tolist() for r in records.values() for b in r)
