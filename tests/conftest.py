"""Shared helpers for the end-to-end tests: tiny real runs of `trainlab train`."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import pytest

from tests import prewarmed

REPO = Path(__file__).resolve().parents[1]
# Subprocesses (trainlab train, torchrun workers) run this checkout's src and can import tests.drills, the
# fault drills the tests install through train.callbacks / model.name / data.name.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(REPO / "src"), str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
)

# Small enough for a 2-core machine, big enough to learn: used by every end-to-end test.
TINY = [
    "data.name=shapes", "data.train_size=320", "data.val_size=160", "data.img_size=16",
    "data.batch_size=32", "model.name=resnet8", "train.epochs=2", "optim.lr=0.05",
    "run.tensorboard=false", "watch.print_every=5", "train.threads=1",
]  # fmt: skip


def trainlab_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "trainlab", *args]


def run_trainlab(*args: str, cwd: Path | None = None, timeout: float = 240, check: bool = False):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = prewarmed.run(
        trainlab_cmd(*args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"trainlab {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def read_metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture
def tiny() -> list[str]:
    return list(TINY)


def _stop_handlers() -> dict:
    import signal

    return {n: signal.getsignal(getattr(signal, n)) for n in ("SIGTERM", "SIGINT", "SIGUSR1") if hasattr(signal, n)}


_ORIGINAL_STOP_HANDLERS = _stop_handlers()  # before any test, any module fixture, ran


@pytest.fixture(autouse=True)
def _stop_signal_handlers_restored():
    """`main(["train", ...])` in this process ends a finished run by ignoring stop signals (the CLI's
    IgnoreStopsWhenFinished, for the seconds a CLI process takes to exit): the process's own handlers are put
    back around every test, or every later test inherits SIGINT/SIGTERM ignored (test_checkpoint's guard test
    saw SIG_IGN after an in-process run, also one in a module-scoped fixture)."""
    import signal

    for name, handler in _ORIGINAL_STOP_HANDLERS.items():  # a module fixture may have run main() already
        if handler is not None:
            signal.signal(getattr(signal, name), handler)
    yield
    for name, handler in _ORIGINAL_STOP_HANDLERS.items():
        if handler is not None:
            signal.signal(getattr(signal, name), handler)


# The files that take longest on 2 cores (summed test time, longest first, measured with --durations=0): with
# `--dist loadfile --no-loadscope-reorder` (the Makefile) the two workers start on these and the short files
# fill in at the end, instead of one worker finishing alone on a long file it was handed last.
LONGEST_FIRST = [
    "test_ddp", "test_watch_loops", "test_sweep_engines", "test_recipes", "test_bring_your_own", "test_sweep",
    "test_object_store", "test_cluster", "test_trackers", "test_watch_budget", "test_resume", "test_error_matrix",
    "test_sweep_search", "test_distributed_unit", "test_restarts", "test_doctor", "test_config_fuzz",
    "test_watch_probe", "test_run_dir_trust", "test_models", "test_model_registry", "test_report_browser",
    "test_preemption_notice", "test_data_datasets", "test_disk_full", "test_pack_aspect",
]  # fmt: skip


def pytest_collection_modifyitems(session, config, items) -> None:  # noqa: ANN001 - pytest's hook signature
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(Path(str(item.fspath)).stem, len(rank)))  # stable: a file's own order stays
