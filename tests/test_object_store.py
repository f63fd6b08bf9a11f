"""Run dirs on object storage against a real S3-compatible server (moto's server mode on the loopback, see
s3_server.py) with the real s3fs client: a run to s3:// stopped mid-epoch, its cache deleted (a fresh
machine), the same command continuing from the bucket to the bitwise end of an uninterrupted local run; a
SIGKILL during an upload; the server going away mid-run; bad URLs, buckets and credentials at start."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests import drills, prewarmed
from tests.conftest import TINY, read_metrics
from tests.drills import self_signal
from tests.s3_server import S3Server, kill_on_put
from trainlab.state.checkpoint import load_checked

pytestmark = pytest.mark.timeout(300)
SRC = str(Path(__file__).resolve().parents[1] / "src")
TIME_COLUMNS = {"data_time_s", "train_time_s", "other_time_s", "epoch_time_s", "val_time_s", "images_per_s",
                "time", "peak_mem_mb", "rss_mb"}  # fmt: skip
ARGS = [*TINY, "run.progress=none", "data.loader=tensor"]


@pytest.fixture(scope="module")
def s3():
    server = S3Server()
    server.start()
    server.setup_credentials()
    yield server
    server.stop()


def _env(s3: S3Server, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAINLAB_", "AWS_"))}
    env.update(s3.env, PYTHONPATH=SRC + os.pathsep + env.get("PYTHONPATH", ""), PYTHONUNBUFFERED="1", **extra)
    return env


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "trainlab", *args]


def _train(s3: S3Server, url: str, cache: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return prewarmed.run(_cmd("train", *ARGS, f"run.dir={url}", f"run.cache_dir={cache}", *extra),
                          env=env or _env(s3), capture_output=True, text=True, timeout=240)  # fmt: skip


def _bucket_checkpoint(s3: S3Server, key: str, tmp: Path) -> dict:
    local = tmp / key.replace("/", "_")
    s3.filesystem().get_file(f"runs/{key}", str(local))
    return load_checked(local, require_checksum=True)


def _assert_same_run(reference: Path, state: dict, run_dir: Path) -> None:
    ref = torch.load(reference / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["model"]
    different = [k for k in ref if not torch.equal(ref[k], state["model"][k])]
    assert not different, f"weights differ from the uninterrupted run: {different[:4]}"
    rows_ref, rows = read_metrics(reference), read_metrics(run_dir)
    assert len(rows) == len(rows_ref) == 2
    for a, b in zip(rows_ref, rows):
        assert {k: v for k, v in a.items() if k not in TIME_COLUMNS} == {k: v for k, v in b.items()
                                                                          if k not in TIME_COLUMNS}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The same training uninterrupted, in a local run dir."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINLAB_")}
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    proc = prewarmed.run(_cmd("train", *ARGS, f"run.dir={run_dir}"), env=env, capture_output=True, text=True,
                          timeout=240)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="module")
def continued(s3, tmp_path_factory) -> dict:
    """A run to s3:// stopped by SIGTERM mid-epoch 2, its cache deleted, the same command re-issued."""
    root = tmp_path_factory.mktemp("continued")
    url, cache = "s3://runs/exp/a", root / "cache"
    stopped = _train(s3, url, cache, self_signal("train:2:3"))  # SIGTERM to itself at epoch 2, batch 3
    after_stop = {"summary": json.loads(s3.filesystem().cat_file("runs/exp/a/summary.json"))}
    after_stop["last"] = _bucket_checkpoint(s3, "exp/a/checkpoints/last.pt", root)
    shutil.rmtree(cache)  # the machine is gone with its disk
    again = _train(s3, url, cache)
    return {"stopped": stopped, "again": again, "after_stop": after_stop, "root": root, "cache": cache}


@pytest.mark.slow
def test_stopped_run_continues_from_the_bucket_on_a_fresh_machine(s3, reference, continued):
    stopped, again = continued["stopped"], continued["again"]
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert f"working in the cache {continued['cache']}" in stopped.stdout  # the start line names the cache
    assert "checkpoint saved to s3://runs/exp/a/checkpoints/last.pt" in stopped.stderr
    assert continued["after_stop"]["summary"]["status"] == "stopped"  # the stop's files went up before exit
    last = continued["after_stop"]["last"]
    assert (last["epoch"], last["step_in_epoch"]) == (2, 4)

    assert again.returncode == 0, again.stderr[-3000:]
    assert "downloaded" in again.stdout and "resuming from" in again.stdout
    state = _bucket_checkpoint(s3, "exp/a/checkpoints/last.pt", continued["root"])
    _assert_same_run(reference, state, continued["cache"])
    summary = json.loads(s3.filesystem().cat_file("runs/exp/a/summary.json"))
    assert summary["status"] == "finished" and summary["run_dir"] == "s3://runs/exp/a"
    names = {p.rsplit("/", 1)[-1] for p in s3.filesystem().find("runs/exp/a")}
    assert {"config.yaml", "metrics.csv", "steps.jsonl", "events.jsonl", "summary.json", "last.pt"} <= names
    assert not [n for n in names if ".tmp" in n or "probe" in n]


def test_report_runs_and_eval_read_the_bucket(s3, continued, capsys, monkeypatch):
    """In this process (the CLI's main): the readers download what they read into a temporary folder."""
    from trainlab.commands.cli import main

    assert continued["again"].returncode == 0, continued["again"].stderr[-3000:]
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    capsys.readouterr()
    assert main(["report", "--text", "s3://runs/exp/a"]) == 0
    assert "finished" in capsys.readouterr().out
    assert main(["runs", "s3://runs/exp"]) == 0
    table = capsys.readouterr().out
    assert "finished" in table and "a " in table
    threads = torch.get_num_threads()
    try:
        assert main(["eval", "s3://runs/exp/a/checkpoints/last.pt", "--json"]) == 0
    finally:
        torch.set_num_threads(threads)
    result = json.loads(capsys.readouterr().out)
    assert result["checkpoint"] == "s3://runs/exp/a/checkpoints/last.pt"
    assert result["val_acc1"] == pytest.approx(float(read_metrics(continued["cache"])[-1]["val_acc1"]), abs=1e-4)


@pytest.mark.slow
def test_a_kill_during_an_upload_keeps_the_previous_checkpoint_and_an_outage_is_survived(s3, reference, tmp_path):
    """SIGKILL while the server reads last.pt's body (after epoch 2): the bucket keeps epoch 1's, whole. The
    same command on a fresh cache continues from it while the server goes away after its first upload and
    comes back 6 s later: a warning, training goes on, the uploads follow, the end is the uninterrupted run's."""
    url, cache = "s3://runs/exp/killed", tmp_path / "cache"
    proc = subprocess.Popen(_cmd("train", *ARGS, f"run.dir={url}", f"run.cache_dir={cache}"), env=_env(s3),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    s3.on_put = kill_on_put(lambda: proc.pid, "/exp/killed/checkpoints/last.pt", nth=2)
    try:
        out, err = proc.communicate(timeout=240)
    finally:
        s3.on_put = None
    assert proc.returncode == -9, err[-3000:]
    kept = _bucket_checkpoint(s3, "exp/killed/checkpoints/last.pt", tmp_path)  # verified by its sha256
    assert (kept["epoch"], kept["phase"]) == (2, "train")  # epoch 1's, whole
    shutil.rmtree(cache)

    first = {"done": False}

    def down_after_first_checkpoint(path: str) -> None:
        if path.endswith("/exp/killed/checkpoints/last.pt") and not first["done"]:
            first["done"] = True
            s3.outage(6.0)

    s3.after_put = down_after_first_checkpoint
    try:
        again = _train(s3, url, cache, "run.upload_wait_s=60")
    finally:
        s3.after_put = None
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stdout and "(epoch 2, step 10)" in again.stdout
    assert "which has ended: taking it over" in again.stdout  # the killed run's lease: its pid is gone
    events = [json.loads(line) for line in (cache / "events.jsonl").read_text().splitlines()]
    kinds = [e["kind"] for e in events]
    assert "upload_failed" in kinds and "upload_recovered" in kinds, kinds
    failed = next(e for e in events if e["kind"] == "upload_failed")
    assert failed["severity"] == "warning" and "training goes on" in failed["message"]
    assert "cannot upload to s3://runs/exp/killed" in again.stderr
    state = _bucket_checkpoint(s3, "exp/killed/checkpoints/last.pt", tmp_path)
    _assert_same_run(reference, state, cache)
    summary = json.loads(s3.filesystem().cat_file("runs/exp/killed/summary.json"))
    assert summary["status"] == "finished" and "not_uploaded" not in summary
    bucket_events = s3.filesystem().cat_file("runs/exp/killed/events.jsonl").decode()
    assert "upload_recovered" in bucket_events


def test_one_writer_per_store_run_dir_across_machines(s3, tmp_path):
    """Two machines on one s3:// run dir (each its own cache: the file lock sees only its own): the second is
    refused in one line naming the first while its lease is renewed; a lease left by a process of this machine
    that has ended is taken at once; one left by a lost machine (another host) is waited for until it runs out."""
    import time

    from trainlab.state.lease import LEASE_FILE

    url, lease = "s3://runs/exp/leased", f"runs/exp/leased/{LEASE_FILE}"
    fs = s3.filesystem()
    first = subprocess.Popen(_cmd("train", *ARGS, f"run.dir={url}", f"run.cache_dir={tmp_path / 'one'}", "run.lease_s=4",
                                  drills.callback("SlowHook", seconds=0.5)),
                             env=_env(s3), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.time() + 120
        while not fs.exists(lease) and first.poll() is None and time.time() < deadline:
            time.sleep(0.2)
            fs.invalidate_cache()
        assert first.poll() is None, first.communicate()[1][-3000:]
        holder = json.loads(fs.cat_file(lease))["holder"]
        assert holder["pid"] == first.pid

        second = _train(s3, url, tmp_path / "two", "run.lease_s=4")
        assert second.returncode == 2, second.stderr[-3000:]
        lines = [ln for ln in second.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and "Traceback" not in second.stderr, second.stderr
        assert f"run.dir {url} is in use by trainlab (pid {first.pid} on" in lines[0] and "renewed until" in lines[0]
        assert "waiting up to 4 s for the lease" in second.stdout
        assert not (tmp_path / "two").exists()  # nothing trained, nothing left behind
        assert first.poll() is None  # the first run was never disturbed
    finally:
        first.kill()
        first.communicate()

    taken = _train(s3, url, tmp_path / "two", "train.epochs=1")  # the holder was SIGKILLed on this machine
    assert taken.returncode == 0, taken.stderr[-3000:]
    assert f"held by pid {first.pid}" in taken.stdout and "which has ended: taking it over" in taken.stdout
    assert not fs.exists(lease)  # released at the end: this process wrote it

    lost = {"holder": {"host": "lost-spot-instance", "pid": 4242, "since": "2026-12-04T00:00:00", "command": ""},
            "token": "theirs", "expires": time.time() + 3}  # fmt: skip
    fs.pipe_file(f"runs/exp/lost/{LEASE_FILE}", json.dumps(lost).encode())
    started = time.monotonic()
    after = _train(s3, "s3://runs/exp/lost", tmp_path / "three", "train.epochs=1")
    assert after.returncode == 0, after.stderr[-3000:]
    assert "held by pid 4242 on lost-spot-instance" in after.stdout and time.monotonic() - started > 2.5


@pytest.mark.parametrize("case", ["protocol", "bucket", "credentials", "unreachable", "never"])
def test_a_store_that_cannot_be_used_is_one_line_and_exit_2(s3, tmp_path, case, capsys):
    """Checked before anything is built or trained (in this process: no subprocess start to pay)."""
    from trainlab.commands.cli import main

    url, extra, expected = {
        "protocol": ("nosuch://runs/x", [], "is not a storage URL fsspec knows"),
        "bucket": ("s3://no-such-bucket/x", [], "bucket 'no-such-bucket' does not exist"),
        "credentials": ("s3://runs/x", ["run.storage_options={key: AKIAWRONG, secret: wrong}"],
                        "the store refused the credentials"),
        "unreachable": ("s3://runs/x", ["run.storage_options={endpoint_url: 'http://127.0.0.1:9'}"],
                        "cannot reach the store"),
        "never": ("s3://runs/exp/never", ["run.resume=never"], "already holds a run and run.resume=never"),
    }[case]  # fmt: skip
    if case == "never":
        s3.filesystem().pipe_file("runs/exp/never/summary.json", b'{"status": "stopped"}')
    saved = {k: os.environ.get(k) for k in s3.env}
    os.environ.update(s3.env)
    try:
        code = main(["train", *ARGS, f"run.dir={url}", f"run.cache_dir={tmp_path / 'cache'}", *extra])
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "cache" / "checkpoints").exists()  # nothing was built


def test_what_the_store_did_not_take_stays_pending_then_goes_up(s3, tmp_path):
    """The store side alone (RunStore, in this process): a store that refuses every upload keeps the files
    pending, the cache keeps them (the checkpoint manager is told not to prune them), the end names them; a
    later command with the store back uploads them."""
    from trainlab.state.remote import RunStore
    from trainlab.state.retention import CheckpointManager

    cache = tmp_path / "cache"
    events: list[tuple] = []
    dead = {"endpoint_url": "http://127.0.0.1:9", "key": s3.env["AWS_ACCESS_KEY_ID"],
            "secret": s3.env["AWS_SECRET_ACCESS_KEY"], "config_kwargs": {"retries": {"max_attempts": 1}}}  # fmt: skip
    down = RunStore("s3://runs/exp/pending", cache, dead, on_event=lambda *a, **k: events.append(a))
    manager = CheckpointManager(cache / "checkpoints", keep_periodic=1)
    manager.hold = down.holds
    first = manager.save_periodic({"weights": torch.ones(3)}, 1)
    down.push_checkpoints([first], 1)
    (cache / "summary.json").write_text('{"status": "finished"}')
    second = manager.save_periodic({"weights": torch.ones(3) * 2}, 2)  # would prune step 1: it is pending
    assert first.exists() and second.exists()
    assert [e[0] for e in events] == ["upload_failed"]  # one warning per outage
    missing = down.finish(0.0, say=lambda line: events.append(("said", line)))
    assert missing == ["checkpoints/periodic-step=0000001.pt", "summary.json"]
    assert "not uploaded to s3://runs/exp/pending yet" in events[-1][1]

    live = {"endpoint_url": s3.endpoint, "key": s3.env["AWS_ACCESS_KEY_ID"], "secret": s3.env["AWS_SECRET_ACCESS_KEY"]}
    back = RunStore("s3://runs/exp/pending", cache, live)
    back.pull(say=lambda line: None)  # a later command: the cache's notes say what is pending
    assert back.finish(5.0) == []
    stored = s3.filesystem().find("runs/exp/pending")
    assert "runs/exp/pending/checkpoints/periodic-step=0000002.pt" in stored
    assert "runs/exp/pending/summary.json" in stored
