"""Callbacks: what a user (and trainlab's own add-ons) can plug into a run without touching its loop.

A callback is any object with some of the `on_*` methods below; each gets the `Run` first, so it can read
`run.cfg`, `run.epoch`, `run.trainer.global_step`, `run.raw_model`, `run.data`, `run.run_dir`, and log with
`run.log_event(...)`. `run.request_stop(reason)` asks the run to stop cleanly at the next optimizer step: the
checkpoint is written and the run ends with status "stopped by callback: <reason>", resumable like a signal.

Every process of a multi-process job calls its own callbacks; `run.ctx.is_main` tells rank 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

HOOKS = ("on_train_start", "on_step_end", "on_log", "on_epoch_end", "on_event", "on_checkpoint", "on_train_end")


class Callback:
    """A base with every hook doing nothing; subclass it, or pass any object with some of these methods."""

    def on_train_start(self, run: Any) -> None:
        """Once the run is built (and restored on a resume), before its first step."""

    def on_step_end(self, run: Any, step: int) -> None:
        """After each optimizer step; `step` counts optimizer steps of the whole run."""

    def on_log(self, run: Any, record: dict) -> None:
        """Every `watch.print_every` steps, with the record steps.jsonl just got (loss, lr, throughput, memory)."""

    def on_epoch_end(self, run: Any, row: dict) -> None:
        """After each epoch's validation, with the epoch's `metrics.csv` row."""

    def on_event(self, run: Any, event: dict) -> None:
        """Every event the watch, the doctor or the run logs (the `events.jsonl` record)."""

    def on_checkpoint(self, run: Any, path: Path) -> None:
        """After a checkpoint file is complete on disk."""

    def on_train_end(self, run: Any, summary: dict) -> None:
        """Once, when the run ends for any reason: the content of `summary.json` (its `status` says why)."""


class CallbackList:
    """Calls each hook on every callback that has it, in order."""

    def __init__(self, callbacks: Any = ()) -> None:
        self.callbacks = list(callbacks or ())
        for callback in self.callbacks:
            if not any(callable(getattr(callback, hook, None)) for hook in HOOKS):
                raise TypeError(f"callback {callback!r} has none of the hooks {', '.join(HOOKS)}")

    def __iter__(self):
        return iter(self.callbacks)

    def insert_first(self, callback: Any) -> None:
        """A callback that must see each record before the user's do (the run's trackers)."""
        self.callbacks.insert(0, callback)

    def _call(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            method = getattr(callback, hook, None)
            if method is not None:
                method(*args)

    def on_train_start(self, run: Any) -> None:
        self._call("on_train_start", run)

    def on_step_end(self, run: Any, step: int) -> None:
        self._call("on_step_end", run, step)

    def on_log(self, run: Any, record: dict) -> None:
        self._call("on_log", run, record)

    def on_epoch_end(self, run: Any, row: dict) -> None:
        self._call("on_epoch_end", run, row)

    def on_event(self, run: Any, event: dict) -> None:
        self._call("on_event", run, event)

    def on_checkpoint(self, run: Any, path: Path) -> None:
        self._call("on_checkpoint", run, path)

    def on_train_end(self, run: Any, summary: dict) -> None:
        self._call("on_train_end", run, summary)
