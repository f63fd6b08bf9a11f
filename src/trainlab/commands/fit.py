"""`trainlab.fit(...)`: the Python face of `trainlab train` (`trainlab.doctor(...)` is its twin, in doctor/).

The same config keys as the CLI (an optional YAML file, then `key=value` overrides), plus the user's own
parts as Python objects: a model (an nn.Module or a callable num_classes -> nn.Module), train and val data (a
map-style Dataset of (image, label), or an iterable of batches), a loss, per-sample transforms, callbacks.
Objects win over the config's names; the config records them by class (`model.name: <mypkg.nets.Net>`), so
running the same script again finds and continues its unfinished run, as the CLI does.

With `train.nproc=N` (N > 1) and no torchrun around it, `fit` runs this very script again under torchrun with
N processes (each calls `fit` and trains as one rank), waits, and returns the job's result.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from trainlab.errors import Preempted

# Set by a `fit` that launched torchrun for its own workers: the run dir it chose, so that it can read the
# job's summary afterwards (every rank would otherwise pick its own timestamped folder name). Launcher
# plumbing, like torchrun's own RANK/WORLD_SIZE; no behaviour of a run depends on it.
RUN_DIR_ENV = "TRAINLAB_LAUNCHED_RUN_DIR"



@dataclass
class FitResult:
    """What `fit` returns: the run dir, how the run ended and the content of its summary.json.

    `status` is "finished", "stopped" (a stop signal: the checkpoint is written, running the same script again
    continues) or "stopped by callback: <reason>"."""

    run_dir: Any  # a Path, or the URL (str) of an object-store run dir
    status: str
    summary: dict = field(default_factory=dict)


def train_config(cfg: Any, given: Any = None, extra: tuple = ()) -> dict:
    """One process's part of the run `cfg` describes, with the user's parts; the doctor's start checks, the
    config's callbacks and `extra` ones included. Returns the summary (raises Preempted on a stop)."""
    from trainlab.doctor.start import StartChecks
    from trainlab.train.run import train
    from trainlab.user import UserParts

    user = UserParts.resolve(cfg, given)
    return train(cfg, callbacks=[StartChecks(), *user.callbacks, *extra], user=user)


class IgnoreStopsWhenFinished:
    """The CLI's: once a run has finished (its files complete, before "done" is printed), a stop signal has
    nothing left to stop; a scheduler's SIGTERM in the seconds the process takes to exit must not turn exit 0
    into 143. Not for trainlab.fit: a script goes on after it and keeps its Ctrl-C."""

    def on_train_end(self, run: Any, summary: dict) -> None:
        import signal
        import threading

        if summary.get("status") == "finished" and threading.current_thread() is threading.main_thread():
            for name in ("SIGTERM", "SIGINT", "SIGUSR1"):
                if hasattr(signal, name):
                    signal.signal(getattr(signal, name), signal.SIG_IGN)


def fit(
    config: Any = None,
    *overrides: str,
    model: Any = None,
    train_data: Any = None,
    val_data: Any = None,
    loss_fn: Optional[Callable] = None,
    train_transform: Optional[Callable] = None,
    val_transform: Optional[Callable] = None,
    callbacks: Optional[Iterable[Any]] = None,
) -> FitResult:
    """Train: `trainlab train CONFIG key=value ...` with your own parts. See the README's "Bring your own"."""
    from trainlab.config import config_with_objects
    from trainlab.user import UserParts

    if (train_data is None) != (val_data is None):
        from trainlab.errors import ConfigError

        raise ConfigError("give both train_data and val_data (or neither, for the config's data.name)")
    objects = {"model.name": model, "data.name": train_data, "train.loss": loss_fn,
               "aug.train_transform": train_transform, "aug.val_transform": val_transform}  # fmt: skip
    cfg = config_with_objects(config, overrides, objects)
    given = UserParts(model=model, train_data=train_data, val_data=val_data, loss_fn=loss_fn,
                      train_transform=train_transform, val_transform=val_transform,
                      callbacks=list(callbacks or []))  # fmt: skip
    if cfg.train.nproc > 1 and "LOCAL_RANK" not in os.environ:
        return _launch_self(cfg)
    if os.environ.get(RUN_DIR_ENV) and not cfg.run.dir:
        from trainlab.config import replace

        cfg = replace(cfg, **{"run.dir": os.environ[RUN_DIR_ENV]})
    try:
        summary = train_config(cfg, given)
    except Preempted as stop:
        summary = getattr(stop, "summary", {}) or {}
        reason = summary.get("stop_reason") or ""
        status = f"stopped by {reason}" if reason.startswith("callback: ") else "stopped"
        return FitResult(_where(summary.get("run_dir", cfg.run.dir or ".")), status, summary)
    return FitResult(_where(summary["run_dir"]), "finished", summary)


def _where(run_dir: str) -> Any:
    from trainlab.state import remote

    return str(run_dir) if remote.is_url(str(run_dir)) else Path(run_dir)


def _launch_self(cfg: Any) -> FitResult:
    """Run this script again under torchrun with train.nproc processes; the job's summary from its run dir."""
    from trainlab import distributed
    from trainlab.state import remote
    from trainlab.state.resume import choose_run_dir

    run_dir = Path(cfg.run.dir) if cfg.run.dir else choose_run_dir(cfg, print)
    if remote.is_url(cfg.run.dir):  # an object-store run dir: its files are in the local cache
        run_dir = Path(cfg.run.cache_dir or remote.default_cache_dir(cfg.run.dir)).expanduser()
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    target = ["-m", spec.name, *sys.argv[1:]] if spec is not None and spec.name else [sys.argv[0], *sys.argv[1:]]
    env = {**os.environ, RUN_DIR_ENV: str(run_dir)}
    code = distributed.run_torchrun(target, int(cfg.train.nproc), env=env, max_restarts=int(cfg.train.max_restarts),
                                    record_dir=run_dir)  # fmt: skip
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    where = cfg.run.dir if remote.is_url(cfg.run.dir) else run_dir
    if code == 0:
        return FitResult(where, "finished", summary)
    if code == 143:
        reason = summary.get("stop_reason") or ""
        return FitResult(where, f"stopped by {reason}" if reason.startswith("callback: ") else "stopped", summary)
    from trainlab.errors import TrainlabError

    error = TrainlabError(f"the {cfg.train.nproc}-process job failed (exit {code}); its output is above")
    error.exit_code = code
    raise error
