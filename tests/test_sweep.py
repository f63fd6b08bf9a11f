"""`trainlab sweep`: real `trainlab train` runs of a tiny model, checked against what each run wrote."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from trainlab.commands.cli import main
from trainlab.commands.sweep import GpuPool, parse_grid, run_names, split_items, split_values, visible_gpus
from trainlab.errors import UsageError

# as small as a real run gets: 4 steps per epoch, 2 epochs (so first vs later epochs exist)
TINY = [
    "data.name=shapes", "data.train_size=128", "data.val_size=64", "data.img_size=16", "data.batch_size=32",
    "model.name=resnet8", "train.epochs=2", "run.tensorboard=false", "train.threads=1", "watch.print_every=2",
]  # fmt: skip


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def _close(a: str, b: str) -> bool:
    return a != "" and b != "" and abs(float(a) - float(b)) <= 1e-5 * max(1.0, abs(float(b)))


# ---------------------------------------------------------------- planning (no training)


def test_grid_parsing_and_run_names():
    assert split_values("0.1,0.05") == ["0.1", "0.05"]
    assert split_values("[0.9,0.99],[0.8,0.9]") == ["[0.9,0.99]", "[0.8,0.9]"]
    grid = parse_grid(["optim.name=adam,sgd", "train.epochs=2", "optim.betas=[0.9,0.99],[0.8,0.9]"])
    runs = run_names(grid)
    assert len(runs) == 4
    assert runs[0].name == "name=adam-betas=_0.9_0.99"  # the one-value key is fixed, not in the name
    assert runs[0].settings["train.epochs"] == "2" and "train.epochs" not in runs[0].values
    assert len({r.name for r in runs}) == 4
    assert all("/" not in r.name and "[" not in r.name for r in runs)
    # keys with the same last part keep their full names
    names = [r.name for r in run_names(parse_grid(["optim.lr=1,2", "sched.lr=3,4"]))]
    assert names[0] == "optim.lr=1-sched.lr=3"
    # values that sanitise to the same text still get distinct directories
    assert [r.name for r in run_names({"data.root": ["a/b", "a_b"]})] == ["root=a_b", "root=a_b-2"]


def test_bad_grids_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="section.key"):
        parse_grid(["lr=0.1,0.2"])
    with pytest.raises(UsageError, match="empty value"):
        parse_grid(["optim.lr=0.1,"])
    with pytest.raises(UsageError, match="twice"):
        parse_grid(["optim.lr=0.1,0.2", "optim.lr=0.3,0.4"])
    with pytest.raises(UsageError, match="config file not found"):
        split_items(["nosuch.yaml"], ["optim.lr=1,2"])
    assert main(["sweep", "train.epochs=1", "--dir", str(tmp_path / "s")]) == 2  # no grid


def test_config_caught_by_grid_is_found(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  epochs: 1\n")
    found, grid, overrides = split_items(["data.img_size=16"], ["optim.lr=1,2", str(config)])
    assert found == str(config) and grid == {"optim.lr": ["1", "2"]} and overrides == ["data.img_size=16"]


def test_gpu_list_and_pool_sharing():
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2, 0,-1,3"}) == ["2", "0"]  # CUDA stops at an invalid entry
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "GPU-8f2a,MIG-1c"}) == ["GPU-8f2a", "MIG-1c"]
    pool = GpuPool(["0", "1", "2"])
    first, second = pool.take(1), pool.take(2)
    assert first == ["0"] and second == ["1", "2"]
    pool.give_back(first)
    assert pool.take(1) == ["0"]  # the free one, not the next in turn
    assert pool.take(1) == ["0"]  # more runs than GPUs: all busy once, the first listed is shared
    assert pool.busy == {"0": 2, "1": 1, "2": 1}


# ---------------------------------------------------------------- real sweeps


def _gpus_by_run(out: str) -> dict[str, str]:
    """Replays the sweep's start/finish lines in printed order: each run's GPU, checking that no two runs
    that were running at the same time shared one."""
    running: dict[str, str] = {}
    assigned: dict[str, str] = {}
    for name, what, gpu in re.findall(r"\] (\S+): (started on GPU (\S+?),|started|finished)", out):
        if what == "started":
            raise AssertionError(f"{name} started without a GPU: {out}")
        if what == "finished":
            running.pop(name, None)
            continue
        assert gpu not in running.values(), f"{name} got GPU {gpu} while it ran {running}"
        running[name] = assigned[name] = gpu
    return assigned


def test_sweep_table_matches_each_runs_metrics_and_rerun_skips(tmp_path, capsys, monkeypatch):
    # Two GPUs, as a user's CUDA_VISIBLE_DEVICES names them: the sweep must hand them out, each concurrent run
    # its own, through the child's CUDA_VISIBLE_DEVICES (recorded by the run in summary.json). On this CPU
    # machine the children train on the CPU all the same.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    sweep = tmp_path / "sweep"
    argv = ["sweep", *TINY, "--grid", "optim.lr=0.05,0.1", "--grid", "optim.name=sgd,adam",
            "--dir", str(sweep), "--parallel", "2"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    spec = json.loads((sweep / "sweep.json").read_text())
    names = [r["name"] for r in spec["runs"]]
    assert names == ["lr=0.05-name=sgd", "lr=0.05-name=adam", "lr=0.1-name=sgd", "lr=0.1-name=adam"]
    table = _csv(sweep / "sweep.csv")
    assert [row["run"] for row in table] == names
    for row in table:
        run_dir = sweep / row["run"]
        metrics = _csv(run_dir / "metrics.csv")
        assert len(metrics) == 2 and row["status"] == "finished" and row["epochs"] == "2/2"
        assert row["optim.lr"] == row["run"].split("-")[0].split("=")[1]
        config = (run_dir / "config.yaml").read_text()
        assert f"name: {row['optim.name']}" in config
        last = metrics[-1]
        assert _close(row["final_val_acc1"], last["val_acc1"])
        assert _close(row["best_val_acc1"], str(max(float(m["val_acc1"]) for m in metrics)))
        assert _close(row["final_train_loss"], last["train_loss"])
        assert _close(row["data_s"], str(sum(float(m["data_time_s"]) for m in metrics) / 2))
        assert _close(row["compute_s"], str(sum(float(m["train_time_s"]) for m in metrics) / 2))
        assert _close(row["first_epoch_s"], metrics[0]["epoch_time_s"])
        assert _close(row["later_epoch_s"], metrics[1]["epoch_time_s"])
        assert _close(row["images_per_s"], metrics[1]["images_per_s"])
        assert _close(row["peak_mem_mb"], str(max(float(m["peak_mem_mb"]) for m in metrics)))
        assert row["run"] in out  # the printed table
        # one warning count everywhere: events.jsonl, the sweep's lines, its table, summary.json, the health lines
        log = run_dir / "events.jsonl"
        events = [json.loads(x) for x in log.read_text().splitlines()] if log.is_file() else []
        warned = [e for e in events if e["severity"] in ("warning", "critical")]
        kinds = sorted({e["kind"] for e in warned})
        if row["optim.name"] == "adam":  # adam at lr 0.05/0.1 smells (usual 1e-4..3e-3): said at step 0
            assert "config_smell" in kinds, events
        line = next(x for x in out.splitlines() if f"] {row['run']}: finished in" in x)
        assert line.endswith(f", {len(warned)} warning{'s' if len(warned) != 1 else ''}" if warned else "s"), line
        for e in warned:
            assert f"    {row['run']}: WARNING {e['kind']} (epoch {e['epoch']}, step {e['step']}):" in out
        assert row["warnings"] == ", ".join(f"{k} x{sum(e['kind'] == k for e in warned)}" for k in kinds)
        assert json.loads((run_dir / "summary.json").read_text())["events"] == {
            k: sum(e["kind"] == k for e in warned) for k in kinds}
        health = [x for x in (sweep / "logs" / f"{row['run']}.out").read_text().splitlines() if "- Health:" in x]
        for epoch, text in enumerate(health, 1):
            mine = sorted({e["kind"] for e in warned if e["epoch"] == epoch})
            said = text.split("warnings: ")[1]
            assert said == ("none" if not mine else ", ".join(
                f"{k} x{sum(e['kind'] == k and e['epoch'] == epoch for e in warned)}" for k in mine)) or \
                sorted(part.split(" x")[0] for part in said.split(", ")) == mine, (text, warned)
    md = (sweep / "sweep.md").read_text()
    assert all(f"| {name} |" in md for name in names) and "optim.lr=0.05,0.1" in md
    gpus = _gpus_by_run(out)
    assert sorted(gpus) == sorted(names) and set(gpus.values()) == {"3", "5"}
    for name, gpu in gpus.items():
        assert json.loads((sweep / name / "summary.json").read_text())["cuda_visible_devices"] == gpu

    # the same command again: everything is finished, nothing is trained
    stamps = {name: (sweep / name / "metrics.csv").stat().st_mtime_ns for name in names}
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert all(f"skip {name}: finished" in out for name in names) and "0 to run" in out
    assert stamps == {name: (sweep / name / "metrics.csv").stat().st_mtime_ns for name in names}

    # a sweep directory is a report argument like any run
    assert main(["report", str(sweep)]) == 0
    assert "Comparison" in (sweep / "report.html").read_text()


def test_sweep_with_a_failing_run_completes_and_marks_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    sweep = tmp_path / "sweep"
    argv = ["sweep", *TINY, "train.epochs=1", "train.device=cpu", "--grid", "model.name=resnet8,nosuchmodel",
            "--dir", str(sweep), "--parallel", "2"]  # fmt: skip
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "1 of 2 runs failed: name=nosuchmodel" in out
    # train.device set by the user is theirs: no GPU handed out, the child's environment left as it was
    assert "name=resnet8: started on train.device=cpu (as set)" in out
    assert json.loads((sweep / "name=resnet8" / "summary.json").read_text())["cuda_visible_devices"] == "3,5"
    rows = {row["run"]: row for row in _csv(sweep / "sweep.csv")}
    assert rows["name=resnet8"]["status"] == "finished" and rows["name=resnet8"]["final_val_acc1"] != ""
    assert rows["name=nosuchmodel"]["status"] == "failed"
    error = (sweep / "name=nosuchmodel" / "error.txt").read_text()
    assert "nosuchmodel" in error and error.startswith("exit code 2")
    assert "| failed |" in (sweep / "sweep.md").read_text()

    # re-running skips the finished run and tries the failed one again
    finished_stamp = (sweep / "name=resnet8" / "metrics.csv").stat().st_mtime_ns
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "skip name=resnet8: finished" in out and "1 to run" in out
    assert "name=nosuchmodel: failed (exit 2)" in out
    assert (sweep / "name=resnet8" / "metrics.csv").stat().st_mtime_ns == finished_stamp
