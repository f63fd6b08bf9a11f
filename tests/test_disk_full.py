"""A full disk while writing a checkpoint, the run logs or a pack: one line naming the file and the space
it needs, the previous checkpoint intact, no temp files left (issue 17).

Two ways to fill a disk for real: /dev/full's device (every write fails with ENOSPC), made where a writer's
file or temp file goes (a device node, not a symlink: trainlab writes no file through a link in a run dir);
and a 1 MB tmpfs. Both need root (mknod, mount) and a file system that allows them; their tests skip with
the reason otherwise.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
from pathlib import Path

import pytest
import torch

from tests.cli_checks import TINY_RUN, run_in_process, run_subprocess
from tests.test_error_matrix import image_folder
from trainlab.paths import DiskFullError
from trainlab.runlog.writer import RunLogger
from trainlab.state.checkpoint import load_checked, save_atomic, temp_path_for

DEV_FULL = Path("/dev/full")
needs_dev_full = pytest.mark.skipif(not DEV_FULL.exists(), reason="needs /dev/full (Linux)")


def fill_with(path: Path) -> None:
    """Make the next write to `path` fail with ENOSPC: it becomes a device node of /dev/full's kind."""
    device = os.stat(DEV_FULL).st_rdev
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, device)
        os.close(os.open(path, os.O_WRONLY))  # a 'nodev' mount refuses to open device nodes
    except (PermissionError, OSError) as exc:
        with contextlib.suppress(OSError):
            path.unlink()
        pytest.skip(f"cannot make a /dev/full device node at {path} ({exc.strerror or exc})")


def state(seed: int) -> dict:
    torch.manual_seed(seed)
    return {"epoch": seed, "model": {"w": torch.randn(256, 256)}}


@needs_dev_full
def test_checkpoint_on_a_full_disk_keeps_the_previous_one(tmp_path):
    path = tmp_path / "checkpoints" / "last.pt"
    save_atomic(state(1), path)
    fill_with(temp_path_for(path))  # the next save's temp file lands on a full device
    with pytest.raises(DiskFullError) as caught:
        save_atomic(state(2), path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    assert "it needs 25" in message and "KB" in message  # a 256x256 float32 tensor: 256 KB and change
    assert "previous last.pt is unchanged" in message
    kept = load_checked(path, require_checksum=True)
    assert kept["epoch"] == 1 and torch.equal(kept["model"]["w"], state(1)["model"]["w"])
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # the temp file is gone


@needs_dev_full
@pytest.mark.parametrize("log", ["metrics.csv", "steps.jsonl", "events.jsonl", "summary.json"])
def test_run_logs_on_a_full_disk(tmp_path, log):
    logger = RunLogger(tmp_path)  # no trackers: the run-dir files alone
    logger.append_metrics({"epoch": 1, "train_loss": 1.0})  # a good first row
    write = {
        "metrics.csv": lambda: logger.append_metrics({"epoch": 2, "train_loss": 0.5}),
        "steps.jsonl": lambda: logger.log_step({"step": 1, "loss": 0.5}),
        "events.jsonl": lambda: logger.log_event({"kind": "x", "message": "m"}),
        "summary.json": lambda: logger.write_summary({"status": "running"}),
    }[log]
    target = tmp_path / log
    if log == "summary.json":  # written atomically: the temp file is what hits the full disk
        fill_with(target.with_name(f".{log}.tmp-{os.getpid()}"))
    else:
        if target.exists():
            target.unlink()
        fill_with(target)
    with pytest.raises(DiskFullError) as caught:
        write()
    assert "\n" not in str(caught.value) and f"disk full writing {target}" in str(caught.value)
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_pack_checks_the_space_first(tmp_path):
    """The arrays are memory-mapped (a full disk there is a SIGBUS): the packer refuses up front."""
    src = image_folder(tmp_path / "src")
    with tiny_tmpfs(tmp_path / "small", "16k") as mount:
        before = sorted(os.listdir(mount))
        result = run_in_process(["data", "pack", str(src), str(mount / "packed"), "--img-size", "64",
                                 "--workers", "1"], tmp_path)  # fmt: skip
        assert result.returncode == 1, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "disk full writing packed dataset" in lines[0] and "needs" in lines[0]
        assert sorted(os.listdir(mount)) == before


@contextlib.contextmanager
def tiny_tmpfs(where: Path, size: str):
    where.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({proc.stderr.strip() or 'not root'})")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)


def test_training_on_a_small_file_system(tmp_path):
    """A real run whose second checkpoint does not fit: exit 1, one line, the first last.pt intact."""
    with tiny_tmpfs(tmp_path / "small", "1m") as mount:
        run_dir = mount / "run"
        argv = ["train", *TINY_RUN, "train.epochs=3", "run.save_top_k=0", f"run.dir={run_dir}"]
        result = run_subprocess(argv, tmp_path)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert len(lines) == 1 and "disk full writing checkpoint" in lines[0], result.stderr
        assert f"{run_dir}/checkpoints/last.pt" in lines[0] and "it needs" in lines[0]
        assert "previous last.pt is unchanged" in lines[0]
        kept = load_checked(run_dir / "checkpoints" / "last.pt", require_checksum=True)
        assert kept["epoch"] == 2 and kept["phase"] == "train"  # saved after epoch 1, ready for epoch 2
        assert not [p for p in (run_dir / "checkpoints").iterdir() if ".tmp" in p.name]
