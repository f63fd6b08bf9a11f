"""`trainlab sweep --search optuna`: a real Optuna study of real `trainlab train` runs, read back with Optuna's
own API; the search space checked against the config schema; bad inputs refused before anything starts."""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.cli_checks import run_in_process
from tests.conftest import read_metrics, read_summary
from tests.drills import callback
from trainlab.commands.cli import main
from trainlab.errors import UsageError
from trainlab.sweep.space import parse_item, parse_space

optuna = pytest.importorskip("optuna")

# 320 images, batch 16: 20 optimizer steps an epoch, 60 planned. The watch judges a hopeless LR after ~20.
SEARCH_TINY = [
    "data.name=shapes", "data.train_size=320", "data.val_size=160", "data.img_size=16", "data.batch_size=16",
    "model.name=resnet8", "train.epochs=3", "run.tensorboard=false", "train.threads=1", "watch.print_every=5",
]  # fmt: skip
# TPE's first draws with seed 6 over 1e-7..1 (log): 0.18 (learns) and 2.1e-05 (~5000x too low)
SEARCH = ["--search", "optuna", "--trials", "2", "--space", "optim.lr=1e-7:1:log", "--sampler-seed", "6",
          "--parallel", "2"]  # fmt: skip


# ---------------------------------------------------------------- the space (no training)


def test_space_items_parse_into_optuna_distributions():
    lr = parse_item("optim.lr=1e-5:1:log")
    assert (lr.kind, lr.low, lr.high, lr.log) == ("float", 1e-5, 1.0, True)
    assert lr.distribution() == optuna.distributions.FloatDistribution(1e-5, 1.0, log=True)
    epochs = parse_item("train.epochs=2:8:int")
    assert epochs.distribution() == optuna.distributions.IntDistribution(2, 8)
    names = parse_item("optim.name=sgd,adamw")
    assert names.choices == ["sgd", "adamw"] and names.kind == "choice"
    assert parse_item("data.batch_size=16,32").choices == [16, 32]  # typed, as the config reads them
    assert lr.override(1e-05) == "optim.lr=1e-05" and float(lr.override(0.1 + 0.2).split("=")[1]) == 0.1 + 0.2
    for bad, words in [
        ("lr=0.1:1", "section.key"), ("optim.lr=1:0.1", "below"), ("optim.lr=0:1:log", "low > 0"),
        ("optim.lr=a:b", "not a number"), ("optim.lr=0.1", "range"), ("optim.lr=1e-5:1:lg", "unknown 'lg'"),
        ("train.epochs=1.5:4:int", "whole"), ("run.dir=a,b", "cannot be searched"), ("optim.name=sgd,sgd", "one value"),
    ]:  # fmt: skip
        with pytest.raises(UsageError, match=words):
            parse_item(bad)
    with pytest.raises(UsageError, match="twice"):
        parse_space(["optim.lr=0.1:1", "optim.lr=0.2:1"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bad_search_engine_and_extra_inputs_are_one_line_and_start_nothing(tmp_path, capsys, monkeypatch):
    sweep = tmp_path / "s"
    search = [*SEARCH_TINY, "--search", "optuna", "--dir", str(sweep)]
    port = _free_port()  # nobody listens there
    cases = [
        ([*search, "--space", "optim.lrr=1e-5:1:log"], "unknown config key 'optim.lrr'; did you mean 'optim.lr'"),
        ([*search, "--space", "optim.lr=0:1"], "--space optim.lr=0:1: optim.lr=0.0 must be"),
        ([*search, "--space", "train.epochs=1e-3:1"], "train.epochs"),
        ([*search, "--space", "optim.name=sgd,nosuch"], "optim.name='nosuch' is not valid"),
        (["optim.lr=0.1", *search, "--space", "optim.lr=1e-5:1"], "set the same key"),
        ([*search], "needs a search space"),
        ([*search, "--space", "optim.lr=1e-5:1", "--objective", "val_acc"], "--objective val_acc: choose one of"),
        ([*SEARCH_TINY, "--space", "optim.lr=1e-5:1", "--dir", str(sweep)], "--space is for a search"),
        ([*search, "--space", "optim.lr=1e-5:1", "--grid", "optim.name=sgd,adam"], "--grid and --search"),
        ([*search, "--space", "optim.lr=1e-5:1", "--ray-address", "127.0.0.1:1"], "--ray-address is for --engine ray"),
        ([*search, "--space", "optim.lr=1e-5:1", "--storage", "nosuchdb://x/y"], "--storage nosuchdb://x/y: Optuna cannot open it"),
        ([*search, "--space", "optim.lr=1e-5:1", "--storage", "sqlite://"], "an in-memory database is not shared"),
        ([*SEARCH_TINY, "--grid", "optim.lr=0.1,0.2", "--dir", str(sweep), "--engine", "ray",
          "--ray-address", f"127.0.0.1:{port}"], f"--ray-address 127.0.0.1:{port}: no Ray cluster answers there"),
        ([*SEARCH_TINY, "--grid", "optim.lr=0.1,0.2", "--dir", str(sweep), "--engine", "submitit"],
         "sbatch is not on PATH here"),
        ([*SEARCH_TINY, "--grid", "optim.lr=0.1,0.2", "--dir", str(sweep), "--engine", "dask"], "invalid choice: 'dask'"),
    ]  # fmt: skip
    for argv, words in cases:
        assert main(["sweep", *argv]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, (argv, err)
        assert not sweep.exists(), argv  # nothing launched, nothing written
    # an engine or a search whose package is not installed names the extra to install
    for module, argv, extra in [
        ("optuna", [*search, "--space", "optim.lr=1e-5:1"], "trainlab[optuna]"),
        ("ray", [*SEARCH_TINY, "--grid", "optim.lr=0.1,0.2", "--dir", str(sweep), "--engine", "ray"], "trainlab[ray]"),
        ("submitit", [*SEARCH_TINY, "--grid", "optim.lr=0.1,0.2", "--dir", str(sweep), "--engine", "submitit"],
         "trainlab[slurm]"),
    ]:  # fmt: skip
        monkeypatch.setitem(sys.modules, module, None)  # what Python does for a package that is not there
        for name in [m for m in sys.modules if m.startswith("trainlab.sweep.engines.") and m.endswith("_engine")]:
            monkeypatch.delitem(sys.modules, name)
        assert main(["sweep", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert f"pip install '{extra}'" in err and len(err.splitlines()) == 1, err
        assert not sweep.exists()
        monkeypatch.undo()


def test_a_running_trial_is_resumed_only_when_no_process_of_it_is_alive(tmp_path):
    """Found RUNNING by a new sweep: its process ended (the sweep saw it, its run dir's lock is free, its heartbeat
    stopped) -> resume it under the same number; still holding its run dir (a driver killed, its run still
    training) or just launched -> wait for it."""
    from trainlab.state.lock import FileLock
    from trainlab.sweep.engines import EngineOptions
    from trainlab.sweep.engines.local import LocalEngine
    from trainlab.sweep.optuna_search import Search, SearchSpec
    from trainlab.sweep.trial import ENDED, HEARTBEAT, LAUNCH, open_storage

    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=open_storage(url))
    search = Search(None, [], tmp_path, SearchSpec(space=parse_space(["optim.lr=1e-3:1"]), stale_after_s=180),
                    LocalEngine(EngineOptions()), url, 1, print)  # fmt: skip
    storage, now = study._storage, time.time()

    def running(run_dir=None, **attrs) -> object:
        trial = study.ask()
        for key, value in attrs.items():
            storage.set_trial_system_attr(trial._trial_id, key, value)
        if run_dir is not None:
            storage.set_trial_user_attr(trial._trial_id, "run_dir", str(run_dir))
        return storage.get_trial(trial._trial_id)

    old = {LAUNCH: {"time": now - 3600}}
    assert search.classify(running(**{LAUNCH: {"time": now - 10}}), now) == "wait"  # launched, still starting
    assert search.classify(running(**old, **{HEARTBEAT: now - 20}), now) == "wait"  # no lock to see: it beats
    assert search.classify(running(**old, **{HEARTBEAT: now - 600}), now) == "resume"
    assert search.classify(running(**old), now) == "resume"  # never beat
    # the sweep saw its process exit 143 (stopped at a checkpoint) after the last launch: no need to wait
    assert search.classify(running(**{LAUNCH: {"time": now - 30}, HEARTBEAT: now - 5, ENDED: now - 1}), now) == "resume"
    # a run dir's lock says it for sure: held -> a process trains it (whatever its heartbeat); free -> none does
    held = tmp_path / "trial-run"
    held.mkdir()
    lock = FileLock(held)  # what `trainlab train` holds on its run dir while it runs
    lock.acquire()
    try:
        assert search.classify(running(held, **old, **{HEARTBEAT: now - 600}), now) == "wait"
    finally:
        lock.release()
    assert search.classify(running(held, **old, **{HEARTBEAT: now - 20}), now) == "resume"  # the run has ended


# ---------------------------------------------------------------- a real study


def _trials_by_number(sweep: Path):
    study = optuna.load_study(study_name=sweep.name, storage=f"sqlite:///{sweep / 'study.db'}")
    return study, {t.number: t for t in study.trials}


@pytest.mark.slow
def test_optuna_study_prunes_hopeless_trials_by_the_watch_and_a_rerun_continues_it(tmp_path):
    sweep = tmp_path / "lr-search"
    # every trial's run is stopped by a signal at epoch 2, batch 5 (a preemption), unless pruned before: the
    # first sweep ends with those trials RUNNING in the study, to be continued by the second
    preempt = callback("SelfSignal", phase="train", epoch=2, batch=5)
    argv = ["sweep", *SEARCH_TINY, preempt, *SEARCH, "--dir", str(sweep)]
    first = run_in_process(argv, cwd=tmp_path)  # the driver here; its trials are `trainlab train` processes
    assert first.returncode == 1, first.stdout + first.stderr  # trials stopped before their end
    study, trials = _trials_by_number(sweep)
    assert sorted(trials) == [0, 1]
    stopped = sorted(n for n, t in trials.items() if t.state.name == "RUNNING")
    pruned = sorted(n for n, t in trials.items() if t.state.name == "PRUNED")
    assert stopped and pruned, first.stdout
    pruned_stamps = {n: (sweep / f"trial-{n:03d}" / "summary.json").stat().st_mtime_ns for n in pruned}

    again = run_in_process(argv, cwd=tmp_path)  # the same command continues the study
    assert again.returncode == 0, again.stdout + again.stderr
    study, trials = _trials_by_number(sweep)
    assert sorted(trials) == [0, 1]  # continued, not duplicated: the stopped trials kept their numbers
    for n in stopped:
        assert f"[trial {n}] resumed" in again.stdout
        events = [json.loads(line) for line in (sweep / f"trial-{n:03d}" / "events.jsonl").read_text().splitlines()]
        assert [e for e in events if e["kind"] == "preempted"] and [e for e in events if e["kind"] == "resumed"]
    for n in pruned:  # finished trials are not redone
        assert (sweep / f"trial-{n:03d}" / "summary.json").stat().st_mtime_ns == pruned_stamps[n]
        assert f"[trial {n}]" not in again.stdout

    by_the_watch = []
    for n, trial in trials.items():
        run_dir = sweep / f"trial-{n:03d}"
        assert trial.user_attrs["run_dir"] == str(run_dir.resolve())
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert trial.params == {"optim.lr": config["optim"]["lr"]}  # the run trained with the trial's value
        summary = read_summary(run_dir)
        record = json.loads((run_dir / "trial.json").read_text())
        assert record["state"] == trial.state.name and record["params"] == trial.params
        if trial.state.name == "COMPLETE":
            assert trial.value == summary["best_val_acc1"] and summary["status"] == "finished"
            assert sorted(trial.intermediate_values) == [1, 2, 3]
            assert [trial.intermediate_values[int(r["epoch"])] for r in read_metrics(run_dir)] == [
                float(r["val_acc1"]) for r in read_metrics(run_dir)]
        elif trial.state.name == "PRUNED":
            why = trial.user_attrs["pruned_by"]
            if why["kind"] in ("not_learning", "divergence", "nonfinite"):
                by_the_watch.append(n)
                assert why["message"] and summary["status"] == "stopped"
                assert summary["stop_reason"] == f"callback: pruned by {why['kind']}"
                stopped_at, planned = trial.user_attrs["stopped_at_step"], trial.user_attrs["planned_steps"]
                assert planned == 60 and stopped_at < planned / 2  # a hopeless LR costs the watch's steps, not 60
                assert summary["final"] is None or summary["final"]["step"] <= stopped_at
                assert any(e["kind"] == why["kind"] for e in
                           map(json.loads, (run_dir / "events.jsonl").read_text().splitlines()))
    assert by_the_watch, {n: (t.state.name, t.user_attrs) for n, t in trials.items()}
    assert min(trials[n].params["optim.lr"] for n in by_the_watch) < 1e-3
    complete = [t for t in trials.values() if t.state.name == "COMPLETE"]
    assert complete and study.best_value == max(t.value for t in complete)
    best_dir = Path(study.best_trial.user_attrs["run_dir"])
    assert study.best_value == read_summary(best_dir)["best_val_acc1"]

    # the sweep's tables and report rank the trials and say why and where the pruned ones stopped
    md = (sweep / "sweep.md").read_text()
    assert "## Trials, ranked" in md and all(f"trial-{n:03d}" in md for n in trials)
    assert run_in_process(["report", str(sweep)], cwd=tmp_path).returncode == 0
    page = (sweep / "report.html").read_text()
    assert "Search: trials ranked" in page and "plot-search-0-optim_lr" in page
    for n in by_the_watch:
        assert f"{trials[n].user_attrs['stopped_at_step']}/60" in page
        assert trials[n].user_attrs["pruned_by"]["kind"] in page
    assert (sweep / "report_files" / "search-0-optim_lr.png").stat().st_size > 1000
    text = run_in_process(["report", str(sweep), "--text"], cwd=tmp_path).stdout
    assert "rank" in text and "PRUNED" in text and "COMPLETE" in text


def test_a_second_driver_and_a_changed_space_are_refused_before_any_trial(tmp_path, capsys):
    from trainlab.state.lock import FileLock
    from trainlab.sweep.trial import open_storage

    sweep = tmp_path / "s"
    sweep.mkdir()
    argv = ["sweep", *SEARCH_TINY, "--search", "optuna", "--space", "optim.lr=1e-5:1:log", "--dir", str(sweep)]
    driver = FileLock(sweep)  # what a running `trainlab sweep` holds on its directory
    driver.acquire()
    try:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert f"sweep {sweep} is being run by another trainlab sweep (pid" in err and len(err.splitlines()) == 1
    finally:
        driver.release()
    # a study this sweep dir already holds, searched over another space: continuing it would mix two searches
    study = optuna.create_study(study_name="s", storage=open_storage(f"sqlite:///{sweep / 'study.db'}"))
    study.set_user_attr("trainlab", {"space": {"optim.lr": "1e-3:1"}, "objective": "val_acc1"})
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "study s was searched with --space optim.lr=1e-3:1, not optim.lr=1e-5:1:log" in err
    assert study.trials == [] and not list(sweep.glob("trial-*"))
