"""Experiment trackers for real: a short `trainlab train` logs to MLflow (its embedded SQLite store) and to
wandb (offline), is stopped by SIGTERM mid-epoch and resumed; what the trackers hold is read back through
MLflow's client and wandb's offline run files and compared with the run dir's own metrics.csv.

Both trackers share one interrupted run and its resume (MLflow's import and store set-up are slow).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests import prewarmed
from tests.conftest import TINY, read_metrics, trainlab_cmd
from tests.drills import self_signal

mlflow = pytest.importorskip("mlflow", reason="MLflow not installed (pip install 'trainlab[mlflow]')")
wandb_pb = pytest.importorskip("wandb.proto.wandb_internal_pb2", reason="wandb not installed (trainlab[wandb])")

BASE = [*TINY, "train.epochs=2", "log.upload_checkpoints=true"]


def train(run_dir: Path, *extra: str, drill: str | None = None, env_extra: dict | None = None):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline", **(env_extra or {})}
    drills = [self_signal(drill)] if drill else []
    return prewarmed.run(trainlab_cmd("train", *BASE, *extra, *drills, f"run.dir={run_dir}"), env=env,
                          capture_output=True, text=True, timeout=240, cwd=run_dir.parent)  # fmt: skip


def flat(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def wandb_records(path: Path):
    """The records of a wandb transaction log (`run-<id>.wandb`), parsed with wandb's own protobuf classes.
    wandb >= 0.2x reads these files in its Go core only, so the framing (a 7-byte file header, then
    LevelDB-log blocks of 32 KiB whose records carry crc, length and a full/first/middle/last type) is
    unpacked here."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb transaction log"
    pos, payload, block = 7, b"", 32768
    while pos + 7 <= len(data):
        left = block - pos % block
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if left < 7 or kind == 0:  # block trailer / padding
            pos += left
            continue
        payload += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full, or the last piece of a split record
            record = wandb_pb.Record()
            record.ParseFromString(payload)
            yield record
            payload = b""


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)  # wandb keeps "a/b" keys as nested parts


@pytest.fixture(scope="module")
def interrupted_and_resumed(tmp_path_factory):
    """One run with both trackers, SIGTERM at epoch 2 (of 2) batch 3, then the same command to the end."""
    root = tmp_path_factory.mktemp("trackers")
    run_dir = root / "runs" / "tracked"
    run_dir.parent.mkdir()
    first = train(run_dir, "log.trackers=[mlflow,wandb]", drill="train:2:3")
    assert first.returncode == 143, first.stderr[-3000:]
    second = train(run_dir, "log.trackers=[mlflow,wandb]")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "tracker_failed" not in (run_dir / "events.jsonl").read_text()
    assert " failed in " not in first.stderr + second.stderr, first.stderr + second.stderr
    return run_dir


def test_mlflow_holds_the_run_once_with_its_config_and_every_epoch(interrupted_and_resumed):
    run_dir = interrupted_and_resumed
    from mlflow.tracking import MlflowClient

    store = run_dir.parent / "mlflow.db"
    assert store.is_file(), "the default store is beside the run dirs"
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("trainlab")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, f"the resume opened a second MLflow run: {[r.info.run_id for r in runs]}"
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked"

    config = flat(OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml")))
    # the first process had the stop drill in train.callbacks (a key a resume may change); MLflow keeps the
    # params of the run's start
    params = {k: v for k, v in run.data.params.items() if k != "train.callbacks"}
    assert params == {k: "" if v is None else str(v) for k, v in config.items() if k != "train.callbacks"}

    rows = read_metrics(run_dir)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for column in rows[0]:
        expected = {int(r["epoch"]): float(r[column]) for r in rows if r[column] != ""}
        history = client.get_metric_history(run.info.run_id, column)
        got = {m.step: m.value for m in history}
        assert len(history) == len(got), f"{column}: an epoch logged twice: {[m.step for m in history]}"
        assert got == expected, f"{column}: MLflow {got} != metrics.csv {expected}"

    steps = [json.loads(line) for line in (run_dir / "steps.jsonl").read_text().splitlines()]
    history = client.get_metric_history(run.info.run_id, "step/loss")
    assert [m.step for m in history] == [s["step"] for s in steps if s.get("loss") is not None]
    assert all(math.isclose(m.value, s["loss"]) for m, s in zip(history, steps))

    tags = run.data.tags
    kinds = {key.rsplit(".", 1)[-1] for key in tags if key.startswith("event.")}
    assert {"preempted", "resumed"} <= kinds, tags
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"summary.json", "metrics.csv", "report.html", "checkpoints"} <= artifacts
    best = [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")]
    assert best == [f"checkpoints/{p.name}" for p in sorted((run_dir / "checkpoints").glob("epoch=*.pt"))]


def test_wandb_offline_holds_the_run_once_with_its_config_and_every_epoch(interrupted_and_resumed):
    run_dir = interrupted_and_resumed
    segments = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(segments) == 2, "one offline folder per process"
    ids = {p.name.rsplit("-", 1)[-1] for p in segments}
    assert len(ids) == 1, f"the resume started a new wandb run: {ids}"

    records = [r for seg in segments for r in wandb_records(next(seg.glob("run-*.wandb")))]
    run_records = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert {r.run_id for r in run_records} == ids

    config = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
    last_config = {}
    for r in records:
        if r.WhichOneof("record_type") == "config":
            last_config.update({_key(item): json.loads(item.value_json) for item in r.config.update})
    assert {k: last_config[k] for k in config} == config

    history = [{_key(i): json.loads(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]  # fmt: skip
    epochs = {int(h["epoch"]): h for h in history if "epoch" in h}
    rows = read_metrics(run_dir)
    assert sorted(epochs) == [1, 2]
    for row in rows:
        logged = epochs[int(row["epoch"])]
        for column, value in row.items():
            if column != "epoch" and value != "":
                assert logged[f"epoch/{column}"] == pytest.approx(float(value), rel=1e-12), (row["epoch"], column)
    events = {h["event/kind"] for h in history if "event/kind" in h}
    assert {"preempted", "resumed"} <= events

    files = segments[-1] / "files"
    assert json.loads((files / "summary.json").read_text())["status"] == "finished"
    assert (files / "report.html").is_file() and list((files / "checkpoints").glob("epoch=*.pt"))


def test_a_tracker_that_fails_mid_run_warns_once_and_the_run_goes_on(tmp_path):
    """A real store failure mid-run: the MLflow store refuses the second epoch's metrics (a trigger planted in
    its SQLite database, as a full disk or a dead server would refuse them). One warning, the run finishes,
    its files are whole, events.jsonl says what happened; MLflow keeps what it got before the fault."""
    import sqlite3

    from mlflow.tracking import MlflowClient

    root = tmp_path / "runs"
    root.mkdir()
    store = root / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{store}").search_experiments()  # creates the schema
    with sqlite3.connect(store) as db:
        db.execute("CREATE TRIGGER planted BEFORE INSERT ON metrics WHEN NEW.key = 'val_acc1' AND NEW.step = 2 "
                   "BEGIN SELECT RAISE(ABORT, 'planted: no space left on device'); END")  # fmt: skip
    run_dir = root / "faulty"
    proc = train(run_dir, "log.trackers=[mlflow]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [line for line in proc.stderr.splitlines() if "tracker mlflow failed" in line]
    assert len(warnings) == 1 and "planted" in warnings[0], proc.stderr
    assert [r["epoch"] for r in read_metrics(run_dir)] == ["1", "2"]
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in events if e["kind"] == "tracker_failed"] == ["tracker_failed"]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    (run,) = client.search_runs([client.get_experiment_by_name("trainlab").experiment_id])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc1")] == [1]


def test_an_unknown_tracker_is_a_one_line_config_error(tmp_path, capsys):
    from trainlab.commands.cli import main

    assert main(["train", *TINY, "log.trackers=[mlfow]", f"run.dir={tmp_path / 'r'}"]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "'mlfow'" in err and "mlflow" in err, err
    assert not (tmp_path / "r").exists()


def test_log_trackers_and_the_older_run_tensorboard_switch_agree():
    """`log.trackers` picks the trackers; `run.tensorboard=false` (configs from before it existed) still
    turns TensorBoard off, and a config that says neither keeps TensorBoard on, as before."""
    from trainlab.config import load_config
    from trainlab.runlog.trackers import chosen

    def pick(*overrides: str) -> list[str]:
        return chosen(load_config(None, list(overrides)))

    assert pick() == ["tensorboard"]
    assert pick("run.tensorboard=false") == []
    assert pick("log.trackers=[mlflow]") == ["mlflow"]
    assert pick("log.trackers=[tensorboard,wandb]", "run.tensorboard=false") == ["wandb"]
    assert pick("log.trackers=[]") == []


def test_tensorboard_tracker_gets_the_rows_steps_and_events_the_files_get(tmp_path):
    """TensorBoard fed through the run's callback hooks, as the run feeds it right after each record is on
    disk: epoch scalars equal to metrics.csv, step scalars at their steps, events as text."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from trainlab.runlog.trackers import TrackerSet
    from trainlab.runlog.trackers.tensorboard import TensorBoardTracker
    from trainlab.runlog.writer import RunLogger

    logger, trackers = RunLogger(tmp_path), TrackerSet([TensorBoardTracker(tmp_path)])
    trackers.start()
    trackers.on_log(None, logger.log_step({"step": 5, "epoch": 1, "loss": 2.25, "lr": 0.1}))
    trackers.on_event(None, logger.log_event({"kind": "loss_spike", "severity": "warning", "step": 5, "epoch": 1,
                                              "message": "spike"}))  # fmt: skip
    for epoch in (1, 2):
        row = {"epoch": epoch, "step": 10 * epoch, "train_loss": 2.0 / epoch + 1e-7, "val_acc1": 10.0 * epoch,
               "val_loss": None, "time": 1.7e9}  # fmt: skip
        logger.append_metrics(row)
        trackers.on_epoch_end(None, row)
    summary = {"status": "finished"}
    logger.write_summary(summary)
    trackers.on_train_end(None, summary)
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    rows = read_metrics(tmp_path)
    assert [(e.step, e.value) for e in acc.Scalars("epoch/train_loss")] == [
        (int(r["epoch"]), pytest.approx(float(r["train_loss"]))) for r in rows]  # fmt: skip
    assert "epoch/val_loss" not in acc.Tags()["scalars"]  # an empty cell is not a zero
    assert [(e.step, e.value) for e in acc.Scalars("step/loss")] == [(5, 2.25)]
    assert "events/loss_spike/text_summary" in acc.Tags()["tensors"]
