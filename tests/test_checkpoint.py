"""Checkpoint files: atomic checksummed writes, corruption detection, retention, RNG, stop signals."""

from __future__ import annotations

import errno
import os
import random
import signal

import numpy as np
import pytest
import torch

from trainlab.paths import DiskFullError
from trainlab.state import checkpoint as ckpt
from trainlab.state.checkpoint import (
    CheckpointError,
    capture_rng,
    load_checked,
    restore_rng,
    save_atomic,
)
from trainlab.state.retention import CheckpointManager
from trainlab.state.stops import PreemptionGuard


def make_state(global_step: int = 10, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    model = {"fc.weight": torch.randn(8, 4, generator=gen), "fc.bias": torch.zeros(8)}
    return {"model": model, "epoch": 1, "step_in_epoch": 3, "global_step": global_step,
            "config": {"optim": {"lr": 0.1}}, "metrics_rows": [{"epoch": 0, "val_acc1": 12.5}]}


def test_round_trip_and_plain_torch_load(tmp_path):
    path = tmp_path / "last.pt"
    state = make_state()
    save_atomic(state, path)
    loaded = load_checked(path)
    assert torch.equal(loaded["model"]["fc.weight"], state["model"]["fc.weight"])
    assert loaded["global_step"] == 10 and loaded["config"] == state["config"]
    # Users can still open a checkpoint with torch alone.
    plain = torch.load(path, weights_only=True)
    assert torch.equal(plain["model"]["fc.weight"], state["model"]["fc.weight"])
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left


@pytest.mark.parametrize("keep", ["half", "minus_one_byte"])
def test_truncated_checkpoint_is_reported_with_its_name(tmp_path, keep):
    path = tmp_path / "last.pt"
    save_atomic(make_state(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if keep == "half" else data[:-1])
    with pytest.raises(CheckpointError, match=r"checkpoint .*last\.pt is truncated or corrupt"):
        load_checked(path)


def test_bit_flip_in_payload_is_detected(tmp_path):
    path = tmp_path / "last.pt"
    save_atomic(make_state(), path)
    data = bytearray(path.read_bytes())
    # Flip one bit inside the tensor data (the middle of the archive), not in the zip structure.
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_checked(path)


def test_disk_full_midway_keeps_previous_checkpoint(tmp_path, monkeypatch):
    """A real full disk is not available here, so the write itself is made to fail with ENOSPC
    after part of the new checkpoint has been written (as a full disk would)."""
    path = tmp_path / "last.pt"
    save_atomic(make_state(global_step=5), path)
    before = path.read_bytes()

    real_write = ckpt._HashingWriter.write
    written = {"n": 0}

    def failing_write(self, data):
        if written["n"] > 200:
            raise OSError(errno.ENOSPC, "No space left on device")
        written["n"] += len(data)
        return real_write(self, data)

    monkeypatch.setattr(ckpt._HashingWriter, "write", failing_write)
    with pytest.raises(DiskFullError) as info:  # one line naming the file and its size (issue 17)
        save_atomic(make_state(global_step=99, seed=1), path)
    assert f"disk full writing checkpoint {path}: it needs" in str(info.value)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checked(path)["global_step"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_interrupt_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_atomic(make_state(global_step=5), path)

    def interrupted_fsync(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.os, "fsync", interrupted_fsync)
    with pytest.raises(KeyboardInterrupt):
        save_atomic(make_state(global_step=99), path)
    monkeypatch.undo()
    assert load_checked(path)["global_step"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_top_k_retention_one(tmp_path):
    manager = CheckpointManager(tmp_path, save_top_k=1)
    assert manager.save_best(make_state(), epoch=1, value=50.0).name == "epoch=01-val_acc1=50.00.pt"
    assert manager.save_best(make_state(), epoch=2, value=40.0) is None
    assert manager.save_best(make_state(), epoch=3, value=87.5).name == "epoch=03-val_acc1=87.50.pt"
    assert manager.save_best(make_state(), epoch=4, value=87.5) is None  # a tie keeps the earlier
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch=03-val_acc1=87.50.pt"]


def test_top_k_retention_two_survives_restart(tmp_path):
    manager = CheckpointManager(tmp_path, save_top_k=2)
    for epoch, value in [(1, 10.0), (2, 30.0), (3, 87.5), (4, 20.0)]:
        manager.save_best(make_state(), epoch=epoch, value=value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch=02-val_acc1=30.00.pt", "epoch=03-val_acc1=87.50.pt"]
    # A resumed run rebuilds the ranking from the file names and keeps pruning correctly.
    resumed = CheckpointManager(tmp_path, save_top_k=2)
    assert [(v, e) for v, e, _ in resumed.best()] == [(87.5, 3), (30.0, 2)]
    resumed.save_best(make_state(), epoch=5, value=40.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch=03-val_acc1=87.50.pt", "epoch=05-val_acc1=40.00.pt"]
    none_kept = CheckpointManager(tmp_path / "zero", save_top_k=0)
    assert none_kept.save_best(make_state(), epoch=1, value=99.0) is None
    assert not (tmp_path / "zero").exists()


def test_top_k_min_mode_for_losses(tmp_path):
    manager = CheckpointManager(tmp_path, save_top_k=1, metric="val_loss", mode="min")
    manager.save_best(make_state(), epoch=1, value=2.5)
    manager.save_best(make_state(), epoch=2, value=1.25)
    manager.save_best(make_state(), epoch=3, value=float("nan"))
    assert [p.name for p in tmp_path.iterdir()] == ["epoch=02-val_loss=1.25.pt"]


def test_periodic_keeps_newest(tmp_path):
    manager = CheckpointManager(tmp_path, keep_periodic=2)
    for step in (100, 200, 300):
        path = manager.save_periodic(make_state(global_step=step), global_step=step)
    assert path.name == "periodic-step=0000300.pt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["periodic-step=0000200.pt", "periodic-step=0000300.pt"]


def test_resumable_picks_newest_and_falls_back_past_truncated(tmp_path):
    manager = CheckpointManager(tmp_path, keep_periodic=3)
    assert manager.resumable() is None
    manager.save_last(make_state(global_step=150))
    manager.save_periodic(make_state(global_step=100), global_step=100)
    manager.save_periodic(make_state(global_step=200), global_step=200)
    newest = manager.save_periodic(make_state(global_step=300), global_step=300)
    path, state = manager.resumable()
    assert path == newest and state["global_step"] == 300 and manager.skipped == []

    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 3])  # a hard kill while copying, a full disk...
    path, state = manager.resumable()
    assert path.name == "periodic-step=0000200.pt" and state["global_step"] == 200
    assert [p for p, _ in manager.skipped] == [newest]
    assert "truncated or corrupt" in manager.skipped[0][1]

    # last.pt wins a tie with a periodic file of the same step.
    manager.save_last(make_state(global_step=200))
    path, _ = manager.resumable()
    assert path.name == "last.pt"


def test_stale_temp_file_from_a_killed_writer_is_removed(tmp_path):
    dead_pid = 2**22 + 12345  # above the default pid_max: no such process
    stale = tmp_path / f".last.pt.tmp-{dead_pid}"
    stale.write_bytes(b"half a checkpoint")
    CheckpointManager(tmp_path)
    assert not stale.exists()


def test_rng_capture_restore_reproduces_draws():
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = capture_rng()
    first = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist())
    random.random(), np.random.rand(5), torch.rand(5)  # move all generators on
    restore_rng(state)
    again = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist())
    assert again == first


def test_rng_state_survives_a_checkpoint_file(tmp_path):
    torch.manual_seed(7)
    save_atomic({"rng": capture_rng(), "global_step": 0}, tmp_path / "last.pt")
    expected = torch.rand(4)
    torch.rand(10)
    restore_rng(load_checked(tmp_path / "last.pt")["rng"])
    assert torch.equal(torch.rand(4), expected)


def test_preemption_guard_sets_flag_and_restores_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with PreemptionGuard() as guard:
        os.kill(os.getpid(), signal.SIGTERM)
        assert guard.requested and guard.signal_name == "SIGTERM"
        with guard.saving():
            os.kill(os.getpid(), signal.SIGTERM)  # a second signal during a save: absorbed
            os.kill(os.getpid(), signal.SIGINT)
            assert guard.is_saving
        assert guard.extra_signals == 2 and guard.signal_name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_preemption_guard_usr1():
    with PreemptionGuard() as guard:
        assert not guard.requested
        os.kill(os.getpid(), signal.SIGUSR1)
        assert guard.requested and guard.signal_name == "SIGUSR1"


def test_plain_torch_file_loads_but_truncated_trainlab_file_is_still_verified(tmp_path):
    plain = tmp_path / "by_hand.pt"
    torch.save(make_state(global_step=3), plain)
    assert load_checked(plain)["global_step"] == 3  # e.g. run.resume=PATH or eval on a user's file
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checked(plain, require_checksum=True)
    ours = tmp_path / "last.pt"
    save_atomic(make_state(), ours)
    for cut in (1, 30, 89):  # inside the trailer: the zip may still parse, the checksum must not pass
        ours_cut = tmp_path / f"cut{cut}.pt"
        ours_cut.write_bytes(ours.read_bytes()[:-cut])
        with pytest.raises(CheckpointError, match=rf"cut{cut}\.pt is truncated or corrupt"):
            load_checked(ours_cut)
