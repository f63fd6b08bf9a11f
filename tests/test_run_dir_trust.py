"""What trainlab may do to a run dir (issue 24, items 1, 4 and 5): remove only the folders it made, write no
file through a symbolic link nor into a folder that is not a run dir, and let one process write it at a time.

Everything is planted for real: folders with other runs' files, links to files outside, a second `trainlab
train` on a live run dir, a SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.cli_checks import TINY_RUN, run_in_process, tree
from trainlab.errors import ConfigError
from trainlab.paths import LOCK_FILE, open_no_follow
from trainlab.report import runs_table
from trainlab.runlog.writer import RunLogger, write_json_atomic
from trainlab.state.lock import FileLock, held_by


def _undecodable_dataset(root: Path) -> list[str]:
    """A folder dataset whose training image cannot be decoded: read batch by batch (the DataLoader path),
    the run fails with exit 2 in its first batch, after its run dir and checkpoints/ were made."""
    from tests.test_error_matrix import image_folder

    image_folder(root)
    (root / "train" / "circle" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return ["data.name=folder", f"data.root={root}", "data.loader=torch", "data.img_size=8"]


def _trainlab_run(path: Path, checkpoint: bool = False) -> Path:
    """A folder as a trainlab run leaves it (its summary.json), with a file of the user's beside."""
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps({"status": "finished", "epochs": 1, "run_dir": str(path)}))
    (path / "metrics.csv").write_text("epoch,step\n1,10\n")
    (path / "notes.txt").write_text("my notes\n")
    if checkpoint:
        (path / "checkpoints").mkdir()
        (path / "checkpoints" / "last.pt").write_bytes(b"another run's checkpoint")
    return path


def _contents(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_failed_start_removes_only_the_folders_it_made(tmp_path):
    data = _undecodable_dataset(tmp_path / "images")
    work = tmp_path / "work"
    _trainlab_run(work / "victim")
    _trainlab_run(work / "other", checkpoint=True)
    before, files = tree(work), _contents(work)
    for run_dir, says in [
        ("work/new/../victim", "cannot decode image"),  # '..' out of a folder made for it: the victim itself
        ("work/newexp/..", "not a trainlab run dir"),  # work: another run's checkpoints inside
        ("work/fresh/a/b", "cannot decode image"),  # three new folders: all three go again
        ("work/fresh/../fresh2", "cannot decode image"),
    ]:
        result = run_in_process(["train", *TINY_RUN, *data, f"run.dir={run_dir}"], tmp_path)
        assert result.returncode == 2 and says in result.stderr, (run_dir, result.stderr)
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert tree(work) == before, f"run.dir={run_dir}: removed or left behind in {work}"
        after = _contents(work)
        assert {k: v for k, v in after.items() if k != "victim/summary.json"} == {
            k: v for k, v in files.items() if k != "victim/summary.json"}  # the run's own status went there


def test_a_foreign_folder_and_links_inside_a_run_dir_are_refused(tmp_path):
    outside = tmp_path / "outside"  # someone else's folder that happens to hold files of the same names
    outside.mkdir()
    for name in ("config.yaml", "metrics.csv", "steps.jsonl", "events.jsonl"):
        (outside / name).write_text(f"{name}: not trainlab's\n")
    (tmp_path / "link").symlink_to(outside)
    run_dir = _trainlab_run(tmp_path / "run")
    for name in ("config.yaml", "steps.jsonl", "events.jsonl"):
        (run_dir / name).symlink_to(outside / name)
    files = _contents(outside)
    for where, says in [("outside", "is not a trainlab run dir"), ("link", "is not a trainlab run dir"),
                        ("run", "config.yaml is a symbolic link")]:  # fmt: skip
        before = tree(tmp_path)
        result = run_in_process(["train", *TINY_RUN, f"run.dir={where}"], tmp_path)
        assert result.returncode == 2 and says in result.stderr, (where, result.stderr)
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert tree(tmp_path) == before and _contents(outside) == files

    # a link planted while a run writes: every writer opens with O_NOFOLLOW and refuses it
    live = tmp_path / "live"
    live.mkdir()
    logger = RunLogger(live)
    logger.append_metrics({"epoch": 1, "step": 1})
    (live / "metrics.csv").unlink()
    (live / "metrics.csv").symlink_to(outside / "metrics.csv")
    (live / "steps.jsonl").symlink_to(outside / "steps.jsonl")
    (live / f".summary.json.tmp-{os.getpid()}").symlink_to(outside / "events.jsonl")
    for write in (lambda: logger.append_metrics({"epoch": 2, "step": 2}), lambda: logger.log_step({"step": 3}),
                  lambda: write_json_atomic(live / "summary.json", {"status": "running"}),
                  lambda: open_no_follow(live / "steps.jsonl", "a")):  # fmt: skip
        with pytest.raises(ConfigError, match="is a symbolic link"):
            write()
    assert _contents(outside) == files


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_one_writer_per_run_dir_and_a_killed_run_leaves_no_lock(tmp_path):
    """A second `trainlab train` on a live run dir is refused in one line naming the holder; `trainlab runs`
    shows the run as running while its lock is held, and not once it is SIGKILLed (its DataLoader worker,
    which outlives it for seconds, does not keep the lock)."""
    run_dir = tmp_path / "runs" / "shared"
    argv = [*TINY_RUN, "data.train_size=320", "train.epochs=200", "data.loader=torch", "data.num_workers=1",
            "data.persistent_workers=true", f"run.dir={run_dir}"]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen([sys.executable, "-m", "trainlab", "train", *argv], cwd=tmp_path, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        _wait(lambda: held_by(run_dir) is not None or first.poll() is not None, 120, "the first run's lock")
        holder = held_by(run_dir)
        assert holder is not None and holder.pid == first.pid and holder.host == socket.gethostname()
        # the second: the same command, here in this process (the lock is the first process's either way)
        second = run_in_process(["train", *argv], tmp_path)
        lines = second.stderr.strip().splitlines()
        assert second.returncode == 2 and len(lines) == 1 and "Traceback" not in second.stderr, second.stderr
        assert f"is in use by trainlab (pid {first.pid} on {socket.gethostname()}, since " in lines[0], lines[0]
        _wait(lambda: (run_dir / "metrics.csv").is_file() or first.poll() is not None, 120, "the first epoch")
        assert first.poll() is None, first.stderr.read() if first.stderr else ""  # the first run goes on
        assert runs_table(tmp_path / "runs").splitlines()[2].split()[:2] == ["shared", "running"]
        workers = psutil.Process(first.pid).children()
        assert workers, "the first run has its DataLoader worker (persistent_workers)"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    assert any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)  # outlives the run...
    # ...but the lock went with the run at once
    _wait(lambda: held_by(run_dir) is None, 2, "the lock to be free after the SIGKILL")
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "running"  # what the file says
    assert runs_table(tmp_path / "runs").splitlines()[2].split()[:2] == ["shared", "interrupted"]  # the truth
    epochs = [line.split(",")[0] for line in (run_dir / "metrics.csv").read_text().splitlines()[1:]]
    assert epochs == [str(e) for e in range(1, len(epochs) + 1)]  # one writer: every epoch once, in order
    lock = FileLock(run_dir)  # nothing stale: the next process gets it
    assert lock.acquire().pid == os.getpid()
    lock.release()
    assert (run_dir / LOCK_FILE).is_file()


def test_a_stop_signal_after_done_leaves_a_finished_run_exit_0(tmp_path):
    """The interpreter takes seconds to exit after "done"; a SIGTERM then (a scheduler ending the job) killed
    the process and a finished run exited 143. It has nothing left to stop: exit 0."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "trainlab", "train", *TINY_RUN, "run.dir=run"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("done in"):
            proc.send_signal(signal.SIGTERM)
            break
    proc.stdout.read()
    assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "finished"


def test_a_run_refused_by_the_lock_removes_nothing(tmp_path):
    """While a refused run waits for the lock, the holder writes; the refused run's clean-up must not take
    what appeared meanwhile for its own (it took the holder's summary.json temp file, which then crashed)."""
    import threading

    run_dir = _trainlab_run(tmp_path / "run")
    holder = FileLock(run_dir)  # another run holds it (a second open file: flock refuses this process too)
    holder.acquire()
    written: list[str] = []
    done = threading.Event()

    def keep_writing() -> None:  # the holder at work: a new file every 10 ms
        while not done.is_set():
            name = f".summary.json.tmp-{len(written)}"
            (run_dir / name).write_text("{}")
            written.append(name)
            time.sleep(0.01)

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        result = run_in_process(["train", *TINY_RUN, f"run.dir={run_dir}"], tmp_path)
    finally:
        done.set()
        writer.join()
        holder.release()
    assert result.returncode == 2 and "is in use by trainlab" in result.stderr, result.stderr
    gone = [name for name in written if not (run_dir / name).exists()]
    assert not gone and (run_dir / "notes.txt").is_file(), f"the refused run removed {gone[:3]}"
