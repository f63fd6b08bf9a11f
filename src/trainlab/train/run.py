"""One training run, start to finish: the epoch loop, validation, checkpoints, stops, logs.

`train(cfg)` is what `trainlab train` calls. Where the run writes and what it continues from is decided in
resume.py; what it is made of is built in build.py; the loops themselves live in engine.py. This module reads
top to bottom: execute() -> _loop() -> per epoch: train, validate, log, save.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import torch

from trainlab import config as config_mod
from trainlab import distributed
from trainlab.errors import ConfigError, NonFiniteLoss, Preempted
from trainlab.paths import (
    LOCK_FILE,
    check_run_dir,
    discard_new_run_dir,
    make_run_dir,
    note_entries,
    remove_made_dirs,
    write_text_no_follow,
)
from trainlab.runlog import trackers
from trainlab.runlog.console import Console, epoch_block, farewell_lines
from trainlab.runlog.writer import NullLogger, RunLogger
from trainlab.state import attempts, remote, resume
from trainlab.state import checkpoint as ckpt
from trainlab.state.background import BackgroundWriter
from trainlab.state.lease import LEASE_FILE, StoreLease
from trainlab.state.lock import FileLock
from trainlab.state.retention import CheckpointManager
from trainlab.state.stops import PreemptionGuard, PreemptionNotice
from trainlab.train.build import build_parts
from trainlab.train.callbacks import CallbackList
from trainlab.train.ema import scored_weights
from trainlab.train.engine import EpochTotals, evaluate
from trainlab.train.optim import apply_planned_lr, built_settings, planned_lr, restore_settings


def log_every(print_every: int, steps_per_epoch: int) -> int:
    """The steps between the watch's logged lines. At its default (50) watch.print_every would log nothing
    in an epoch of fewer steps until the epoch's end: the default logs at least 10 times an epoch instead
    (every steps_per_epoch // 10 steps). A value the config sets otherwise is kept as it is."""
    from trainlab.watch.settings import WatchSettings

    if print_every == WatchSettings().print_every and steps_per_epoch < 10 * print_every:
        return max(1, steps_per_epoch // 10)
    return print_every


class Run:
    """Everything one run holds; `execute()` runs it."""

    def __init__(self, cfg: Any, ctx: distributed.DistContext, callbacks: Any = (), user: Any = None):
        self.cfg = cfg
        self.user = user  # trainlab.user.UserParts: the user's own model, data, loss, transforms
        self.callbacks = CallbackList(callbacks)
        self.stop_reason: Optional[str] = None  # set by a callback's request_stop
        self.ctx = ctx
        self.device = ctx.device
        self.console = Console(enabled=ctx.is_main, progress=cfg.run.progress)
        self.started = time.time()
        self.metrics_rows: list[dict] = []
        self.best = {"val_acc1": None, "epoch": None, "weights": "raw"}
        self.epoch = 1
        self.step_in_epoch = 0
        self.phase = "train"
        self.totals_state: Optional[dict] = None
        self.last_periodic_time = time.time()
        self.logger: Any = NullLogger()
        self.trackers: Any = None  # runlog.trackers.TrackerSet on rank 0
        self.guard = PreemptionGuard()
        self.writer = BackgroundWriter()  # checkpoints are written (and uploaded) off the training path
        self.snapshot = ckpt.HostSnapshot()  # the host copy of the state a background write reads
        self.written: list[Path] = []  # files the writer finished, for the on_checkpoint hooks (main thread)
        self.store: Any = None  # remote.RunStore when run.dir is an object-store URL
        self.attempt: Optional[attempts.AttemptRecord] = None
        self.restarts: list[dict] = []  # torchrun restarts of this run (train.max_restarts)
        # Stop flags travel on the host: a gloo group beside nccl, so agreeing never waits for the device.
        self.control_group = distributed.control_group(ctx)
        self.boundaries = 0  # optimizer-step boundaries seen by this process (paces the stop agreement)
        self.lock: Optional[FileLock] = None  # rank 0's lock on the run dir, held from start to end
        self.lease: Optional[StoreLease] = None  # and on a store run dir, its lease in the store

    # -- building ----------------------------------------------------------------------------
    def _build(self, state: Optional[dict]) -> None:
        parts = build_parts(self.cfg, self.ctx, state, say=self.console.info, on_batch=self._on_batch,
                            user=self.user)  # fmt: skip
        self.cfg = parts.cfg
        self.data, self.raw_model, self.trainer = parts.data, parts.raw_model, parts.trainer
        self.num_classes, self.params, self.precision = parts.num_classes, parts.params, parts.precision
        self.channels_last, self.global_batch = parts.channels_last, parts.global_batch
        self.steps_per_epoch, self.schedule = parts.steps_per_epoch, parts.schedule
        self.schedule_warnings, self.batch_note = parts.schedule_warnings, parts.batch_note

    def _build_watcher(self) -> None:
        from trainlab.watch import Watcher

        s = self.cfg.watch
        self.watcher = Watcher(
            print_every=log_every(s.print_every, self.steps_per_epoch), show_gpu=s.show_gpu, warn_on_leak=s.warn_on_leak,
            warn_on_bottleneck=s.warn_on_bottleneck, warn_on_variance=s.warn_on_variance,
            settings=s, device=self.device, printer=self.console.print, on_event=self._on_event,
            on_log=self._on_log, model=self.raw_model, optimizer=self.trainer.optimizer,
            rank=self.ctx.rank, world_size=self.ctx.world_size, verbose=self.ctx.is_main and s.enabled,
            planned_steps=self.cfg.train.epochs * self.steps_per_epoch,  # the watch's budget, in optimizer steps
            num_classes=self.data.num_classes,  # what chance means: the labels the data has, not the head's width
            lr_at=self._planned_lr(), advice="trainlab",  # fixes named as config keys
        )  # fmt: skip
        self.watcher.print_epoch_block = False
        self.trainer.watcher = self.watcher

    def _planned_lr(self):
        """The LR the schedule plans at a watch step (an optimizer step, as the scheduler counts)."""
        sched = self.trainer.scheduler
        base, multiplier = float(sched.base_lrs[0]), sched.lr_lambdas[0]
        return lambda step: base * multiplier(step)

    def _on_batch(self, epoch: int, index: int) -> None:
        self.console.advance()

    def _on_event(self, event: Any) -> None:
        record = self._with_micro_step(event.to_dict() if hasattr(event, "to_dict") else dict(event))
        self.callbacks.on_event(self, self.logger.log_event(record))

    def _on_log(self, record: dict) -> None:
        self.console.show_loss(record.get("loss"))
        self.callbacks.on_log(self, self.logger.log_step(self._with_micro_step(record)))

    def _with_micro_step(self, record: dict) -> dict:
        """`step` counts optimizer steps; `micro_step` beside it the micro-batches, which a resume truncates by
        and which tells these records from the ones of older runs (whose `step` counted micro-batches)."""
        trainer = getattr(self, "trainer", None)
        return {**record, "micro_step": trainer.micro_step} if trainer is not None else record

    def request_stop(self, reason: str) -> None:
        """Stop cleanly at the next optimizer step (every rank agrees): checkpoint, then status "stopped"."""
        self.stop_reason = str(reason)

    def log_event(self, kind: str, severity: str, message: str, **data: Any) -> None:
        """An event of the run itself (or of a callback): events.jsonl, the trackers, the console. It goes
        through the watch like the detectors' events (on_event writes events.jsonl), so one list counts them:
        the epoch's health line, summary.json, the sweep and the report."""
        from trainlab.watch import Event

        event = Event(kind, severity, self.trainer.global_step, self.epoch, message, data)
        watcher = getattr(self, "watcher", None)
        if watcher is not None:
            watcher.add_event(event, announce=False)  # its on_event (_on_event) logs it and tells the callbacks
        else:  # before the watch is built
            self._on_event(event)
        (self.console.warn if severity != "info" else self.console.info)(message)

    # -- checkpoint state --------------------------------------------------------------------
    def state(self, totals: Optional[EpochTotals], rng_per_rank: list[dict]) -> dict:
        t = self.trainer
        return {
            "format": "trainlab-checkpoint-1",
            "config": config_mod.to_dict(self.cfg),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "phase": self.phase,
            "global_step": t.global_step,
            "micro_step": t.micro_step,
            "model": self.raw_model.state_dict(),
            "optimizer": t.optimizer.state_dict(),
            "scheduler": t.scheduler.state_dict(),
            "schedule": self.schedule,
            "scaler": t.scaler.state_dict(),
            "ema": t.ema.state_dict() if t.ema is not None else None,
            "rng": rng_per_rank[0],  # rank 0's: what a one-process resume restores
            "rng_per_rank": rng_per_rank,
            "totals": totals.state_dict() if totals is not None else None,
            "epoch_lr": dict(t.epoch_lr) if t.epoch_lr is not None else None,  # this epoch's LRs so far
            "watch": self.watcher.state_dict(),
            "metrics_rows": list(self.metrics_rows),
            "best": dict(self.best),
            "num_classes": self.num_classes,
            "class_names": list(self.data.class_names),
            "wall_time_s": self.wall_time(),
            "world_size": self.ctx.world_size,
            "trackers": self.trackers.ids() if self.trackers is not None else {},
            # a user's iterable of batches keeps its generators' state at the epoch's start (data/user_data.py)
            "loader": self.data.train.state_dict() if hasattr(self.data.train, "state_dict") else None,
        }

    def _load_state(self, state: dict) -> None:
        t = self.trainer
        parts = [("model", self.raw_model), ("optimizer", t.optimizer), ("scheduler", t.scheduler),
                 ("scaler", t.scaler)] + ([("ema", t.ema)] if t.ema is not None and state.get("ema") is not None else [])
        built = built_settings(t.optimizer, t.scheduler)  # the config's optimizer settings, before the checkpoint's
        for name, part in parts:
            try:
                part.load_state_dict(state[name])
            except (RuntimeError, ValueError, KeyError, TypeError) as exc:  # e.g. another class count, forced
                section = {"model": "model.", "ema": "model.", "optimizer": "optim."}.get(name, "")
                changed = [f"{k} {old!r} -> {new!r}" for k, old, new in
                           resume.math_changes(state.get("config"), config_mod.to_dict(self.cfg))
                           if section and k.startswith(section)]  # fmt: skip
                why = f"{', '.join(changed[:2])}; " if changed else ""
                forced = " (run.resume_force=true cannot change that)" if self.cfg.run.resume_force else ""
                raise ConfigError(
                    f"cannot resume: the checkpoint's {name} state does not fit this run ({why}"
                    f"{type(exc).__name__}: {ckpt.load_error_line(exc)}){forced}; restore the settings it was "
                    "made with, or start a new run.dir"
                ) from None
        restore_settings(t.optimizer, t.scheduler, built)  # a forced optim.* change trains (equal values else)
        if t.ema is not None:  # the same for the EMA: its load_state_dict takes the checkpoint's decay and warmup
            t.ema.decay, t.ema.warmup = float(self.cfg.train.ema_decay), bool(self.cfg.train.ema_warmup)
        apply_planned_lr(t.scheduler)  # the optimizer's LR came with the checkpoint: the old plan's
        t.global_step = state["global_step"]
        t.micro_step = state.get("micro_step", state.get("batches_seen", 0))  # batches_seen: older checkpoints
        t.epoch_lr = dict(state["epoch_lr"]) if isinstance(state.get("epoch_lr"), dict) else None
        self.epoch = state["epoch"]
        self.step_in_epoch = state["step_in_epoch"]
        self.phase = state["phase"]
        # The checkpoint's totals are the whole job's (summed over ranks when saved): rank 0 carries them.
        self.totals_state = state.get("totals") if self.ctx.is_main else None
        self.metrics_rows = list(state["metrics_rows"])
        self.best = dict(state["best"])
        self.resumed_wall = state.get("wall_time_s", 0.0)
        if state.get("watch") is not None:
            self.watcher.load_state_dict(state["watch"])
            if state["watch"].get("version", 1) < 2:  # its watch counted micro-batches: continue in optimizer steps
                self.watcher.step_count = t.global_step
        # the train loader's own state ("loader") was restored when it was built (train/build.py)
        self._restore_rng(state)

    def _restore_rng(self, state: dict) -> None:
        """Each rank continues its own random streams; on another process count they cannot all continue."""
        per_rank = state.get("rng_per_rank")
        if per_rank and len(per_rank) == self.ctx.world_size:
            ckpt.restore_rng(per_rank[self.ctx.rank])
        elif self.ctx.is_main:
            ckpt.restore_rng(state["rng"])
            if per_rank and len(per_rank) != self.ctx.world_size and self.ctx.world_size > 1:
                self.console.warn(
                    f"the checkpoint holds random streams for {len(per_rank)} processes and this job has "
                    f"{self.ctx.world_size}: ranks other than 0 start theirs afresh (dropout and mixup draws differ)"
                )

    def wall_time(self) -> float:
        return getattr(self, "resumed_wall", 0.0) + (time.time() - self.started)

    def _gather_rng(self) -> list[dict]:
        """Every rank's RNG states, on every rank (a collective: all ranks call it)."""
        mine = ckpt.capture_rng()
        if not self.ctx.enabled:
            return [mine]
        gathered: list[Any] = [None] * self.ctx.world_size
        torch.distributed.all_gather_object(gathered, mine, group=self.control_group)
        return gathered

    def _save(self, kind: str, totals: Optional[EpochTotals] = None,
              best: Optional[tuple[int, float, str]] = None) -> Path:
        """Take the state to host memory here, at the step boundary, and hand the write (and upload) to the
        background writer; training goes on meanwhile. Only rank 0 writes. `best` = (epoch, score, weights) keeps
        the file as a top-k checkpoint (a link to the same file). Returns where the file will be."""
        if totals is not None and self.ctx.enabled:  # the job's sums; every rank takes part in the collective
            totals = totals.summed(self.ctx)
        rng = self._gather_rng()
        step = self.trainer.global_step
        path = self.manager.last_path if kind == "last" else self.manager.periodic_path(step)
        if self.ctx.is_main:
            self.writer.wait()  # one write in flight: its host copy is the one reused for this state
            self._announce_written()
            state = self.snapshot.take(self.state(totals, rng))
            self.writer.submit(lambda: self._write(kind, state, step, best))
        return path

    def _write(self, kind: str, state: dict, step: int, best: Optional[tuple[int, float, str]]) -> None:
        """On the writer thread: the files, then the copies in the object store (run.dir=s3://...)."""
        if kind == "last":
            written = [self.manager.save_last(state)]
            if best is not None:
                kept = self.manager.add_best(written[0], *best)
                written += [kept] if kept is not None else []
        else:
            written = [self.manager.save_periodic(state, step)]
        self.written.extend(written)  # complete on disk: their on_checkpoint hooks run on the training thread
        if self.store is not None:
            self.store.push_checkpoints(written, step)
            self.store.push_files()

    def _drain(self) -> None:
        """Wait for the write in flight (rank 0), then let every rank go on: nobody leaves a stop or the run's
        end before the checkpoint is whole. The agreement is on the host-side group."""
        self.writer.wait()
        self._announce_written()
        distributed.host_barrier(self.ctx)

    def _announce_written(self) -> None:
        """The on_checkpoint hooks of the files the writer finished, here on the training thread (a user's
        callback need not be thread-safe): called at each step boundary, save and stop."""
        while self.written:
            self.callbacks.on_checkpoint(self, self.written.pop(0))

    # -- the object store (run.dir=s3://...) ---------------------------------------------------------
    @property
    def run_label(self) -> str:
        """The run dir as the user named it: the store URL, or the local folder."""
        return self.store.url if self.store is not None else str(self.run_dir)

    def _open_store(self) -> Path:
        """Check the store (one line, exit 2, before anything trains) and bring the run from it into the
        cache; one process per machine does both, the others wait and read the cache."""
        cfg, ctx = self.cfg, self.ctx
        self._store_for(cfg)
        if ctx.local_rank == 0:
            self.store.check()
            if ctx.is_main:  # one writer across machines too: the cache's file lock holds on this one only
                self.lease = StoreLease(self.store.fs, self.store.remote(LEASE_FILE), self.store.url, cfg.run.lease_s,
                                        say=self.console.info, warn=self.console.warn)  # fmt: skip
                self.lease.acquire()
            if str(cfg.run.resume) != "never":
                self.store.pull(self.console.info)
            elif self.store.has_run():  # as for a local folder: never start over on top of a run
                raise ConfigError(f"run.dir {self.store.url} already holds a run and run.resume=never; choose a "
                                  "new run.dir or run.resume=auto")  # fmt: skip
        distributed.host_barrier(ctx)
        return self.store.cache

    def _store_for(self, cfg: Any) -> Any:
        """The RunStore of run.dir (made once; a bad URL or a missing fsspec package is one line, exit 2)."""
        if self.store is None:
            self.store = remote.RunStore(cfg.run.dir, cfg.run.cache_dir, dict(cfg.run.storage_options or {}),
                                         on_event=self._store_event)  # fmt: skip
        return self.store

    def _store_event(self, kind: str, severity: str, message: str, **data: Any) -> None:
        if self.ctx.is_main:
            self.log_event(kind, severity, message, **data)

    def _finish_store(self, wait_s: Optional[float] = None) -> list[str]:
        """At a stop or the end (rank 0): upload what is pending and the small files; what stays missing."""
        self.not_uploaded: list[str] = []
        if self.store is None or not self.ctx.is_main:
            return []
        wait = float(self.cfg.run.upload_wait_s) if wait_s is None else wait_s
        self.not_uploaded = self.store.finish(wait, say=self.console.warn)
        return self.not_uploaded

    # -- summary -----------------------------------------------------------------------------
    def summary(self, status: str, error: Optional[str] = None) -> dict:
        watcher = getattr(self, "watcher", None)  # absent when the run failed before it was built
        counts = watcher.warning_counts() if watcher is not None else {}
        return {
            "status": status,
            "epochs": self.cfg.train.epochs,
            "epochs_done": len(self.metrics_rows),
            "best_val_acc1": self.best["val_acc1"],
            "best_epoch": self.best["epoch"],
            "best_weights": self.best["weights"],
            "final": self.metrics_rows[-1] if self.metrics_rows else None,
            "events": counts,
            "watch": watcher.summary() if watcher is not None else {},
            "model": self.cfg.model.name,
            "params": getattr(self, "params", None),
            "data": self.cfg.data.name,
            "device": str(self.device),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),  # which GPUs a sweep gave this run
            "precision": getattr(self, "precision", None),
            "world_size": self.ctx.world_size,
            "global_batch": getattr(self, "global_batch", None),
            "started": datetime.fromtimestamp(self.started).isoformat(timespec="seconds"),
            "updated": datetime.now().isoformat(timespec="seconds"),
            "wall_time_s": round(self.wall_time(), 3),
            "error": error,
            "stop_reason": getattr(self, "stopped_by", None) if status == "stopped" else None,
            "run_dir": self.run_label if hasattr(self, "run_dir") else None,
            **({"restarts": self.restarts} if self.restarts else {}),
            **({"cache_dir": str(self.store.cache)} if self.store is not None else {}),
        }

    # -- the run -----------------------------------------------------------------------------
    def execute(self) -> dict:
        cfg, ctx = self.cfg, self.ctx
        self.notice = None
        if cfg.run.preemption_notice:  # a bad value fails here, before anything else
            self.notice = PreemptionNotice(cfg.run.preemption_notice, cfg.run.preemption_poll_s,
                                           on_notice=self._on_notice, on_problem=self.console.warn)  # fmt: skip
        remote_dir = remote.is_url(cfg.run.dir)  # an object store: work in a local cache, keep the store up to date
        if ctx.is_main:
            # A bad run.dir (a file, a foreign folder, a link inside) fails here in one line; then the folders
            # made for it are recorded (a failed start removes only those) and the run dir is locked for the
            # run's life before anything in it is read or written: one writer per run dir (for a store URL,
            # its cache on this machine).
            local = self._store_for(cfg).cache if remote_dir else resume.choose_run_dir(cfg, self.console.info)
            self.run_dir = check_run_dir(local)
            self.made_dirs = make_run_dir(self.run_dir)
            self.lock = FileLock(self.run_dir)
            self.lock.acquire()
            note_entries(self.made_dirs, self.run_dir, (LOCK_FILE,) if self.lock.created_file else ())
        if ctx.enabled:  # every rank uses rank 0's choice (its timestamp), once rank 0 holds it
            self.run_dir = Path(distributed.broadcast_object(str(getattr(self, "run_dir", "")), ctx))
        if remote_dir:  # the store checked (one line, exit 2, before anything trains), the run pulled from it
            cache = self._open_store()
            if not ctx.is_main:  # this machine's own cache (rank 0 has locked its own)
                self.run_dir = cache
        self.attempt = attempts.AttemptRecord(self.run_dir, ctx.rank) if attempts.max_restarts() else None
        if self.attempt is not None:  # torchrun may restart this job: leave a note for the next attempt
            self.attempt.begin()
        state = resume.load_resume_state(cfg, self.run_dir, self.console.info, self.console.warn)
        distributed.barrier(ctx)  # every rank has looked at the run dir before rank 0 writes into it
        if state is not None:
            resume.check_compatible(cfg, state, ctx.world_size, self.console.warn)
            saved_cfg = state.get("config", {})
            if saved_cfg and state.get("phase") == "done" and saved_cfg["train"]["epochs"] >= cfg.train.epochs:
                self.console.info(
                    f"run {self.run_dir} is finished ({saved_cfg['train']['epochs']} epochs); raise train.epochs "
                    "to extend it, or choose a new run.dir"
                )
                if ctx.is_main:  # nothing was written: a run dir made for this (run.resume=PATH) goes again
                    remove_made_dirs(self.made_dirs, self.run_dir)
                self._finish_store()  # what an earlier command could not upload goes up now
                return {"status": "finished", "run_dir": self.run_label, "already_finished": True}

        self._build(state)
        cfg = self.cfg
        if ctx.is_main:
            self.trackers = trackers.open_trackers(cfg, self.run_dir, (state or {}).get("trackers"))
            (self.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            write_text_no_follow(self.run_dir / "config.yaml", config_mod.to_yaml(cfg))
            self.logger = RunLogger(self.run_dir)
            # The trackers are the run's first callback: each row, step and event right after the run dir has it
            self.trackers.on_failure = self.logger.tracker_failed
            self.trackers.start()
            self.callbacks.insert_first(self.trackers)
        self.manager = CheckpointManager(
            self.run_dir / "checkpoints", save_top_k=cfg.run.save_top_k, keep_periodic=cfg.run.keep_periodic
        )
        if self.store is not None:
            self.manager.hold = self.store.holds  # nothing leaves the cache before the store has it
        self._build_watcher()
        if state is not None:
            self._load_state(state)
            if self.phase == "done":  # extending a finished run with more epochs
                self.epoch, self.step_in_epoch, self.phase = self.epoch + 1, 0, "train"
            self._note_restart()
            self.logger.rewrite_metrics(self.metrics_rows)
            self.logger.truncate_jsonl(self.trainer.micro_step)
            lr = planned_lr(self.trainer.scheduler, self.trainer.global_step)  # what the next step trains at
            self.log_event("resumed", "info", f"resumed at epoch {self.epoch}, batch {self.step_in_epoch}, "
                           f"LR {lr:.4g}", global_step=self.trainer.global_step, lr=lr)  # fmt: skip

        if state is None:
            self._note_restart()
        self._announce()
        self.resumed = state is not None
        self.callbacks.on_train_start(self)  # the doctor's start checks among them (trainlab.doctor.start)
        for warning in self.schedule_warnings:
            self.log_event("schedule", "warning", warning)
        self.logger.write_summary(self.summary("running"))
        if self.notice is not None and ctx.local_rank == 0:  # one poller per machine; ranks OR the stop flags
            self.notice.start()
        # From the first step until train() returns, a stop signal is a flag: during the loop it stops the run
        # with a checkpoint; after the loop it changes nothing (a finished run must not end as killed, 143).
        self.guard.__enter__()
        try:
            self._loop()
            self._drain()  # the last checkpoint is whole before the run says it finished
        except Preempted as stop:  # _preempt wrote the summary and finished the uploads
            self._end_attempt("stopped")
            stop.summary = self.stop_summary  # what trainlab.fit returns
            self.callbacks.on_train_end(self, stop.summary)
            raise
        except NonFiniteLoss as exc:
            self._end(self.summary("failed", str(exc)))
            self._finish_store()
            raise
        except BaseException as exc:
            self._end_attempt(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")
            with contextlib.suppress(BaseException):  # a checkpoint already being written is finished
                self.writer.wait()
            self._end(self.summary("failed", f"{type(exc).__name__}: {exc}"))
            with contextlib.suppress(Exception):
                self._finish_store(wait_s=min(10.0, float(cfg.run.upload_wait_s)))
            raise
        finally:
            if self.notice is not None:
                self.notice.stop()
            self.watcher.close()
            self.console.close()
        self._end_attempt("finished")
        final = self.summary("finished")
        self.logger.write_summary(final)  # on disk before the last upload carries it
        if self._finish_store():  # the store could not take everything: the summary says what is missing
            final = {**final, "not_uploaded": self.not_uploaded}
        self._end(final)
        for line in farewell_lines(final, self.run_label):
            self.console.info(line)
        return final

    def _end(self, summary: dict) -> None:
        self.logger.write_summary(summary)
        self.callbacks.on_train_end(self, summary)

    def _announce(self) -> None:
        cfg = self.cfg
        if self.batch_note:
            self.console.info(self.batch_note)
        self.console.info(
            f"trainlab: {cfg.model.name} ({self.params:,} params) on {cfg.data.name} "
            f"[{self.data.loader_kind} loader], device {self.device}, "
            f"precision {self.precision}, batch {cfg.data.batch_size} x {self.ctx.world_size} proc x "
            f"{cfg.train.grad_accum} accum = {self.global_batch} global"
        )
        self.console.info(self.data.summary)  # issue 12: which loader and crop/flip, and why
        if cfg.optim.lr_scale == "linear":
            from trainlab.train.optim import REFERENCE_BATCH, effective_lr

            self.console.info(
                f"lr {effective_lr(cfg.optim, self.global_batch):.6g} = optim.lr {cfg.optim.lr:g} x "
                f"{self.global_batch}/{REFERENCE_BATCH} global batch (optim.lr_scale=linear)"
            )
        if self.notice is not None:
            self.console.info(self.notice.describe())
        if self.store is not None:
            self.console.info(f"run dir: {self.store.url} (working in the cache {self.store.cache}; checkpoints are "
                              "uploaded when written)")
        else:
            self.console.info(f"run dir: {self.run_dir}")

    def _loop(self) -> None:
        cfg, t = self.cfg, self.trainer
        while self.epoch <= cfg.train.epochs:
            totals = EpochTotals.zeros(self.device)
            if self.totals_state is not None:
                totals.load_state_dict(self.totals_state)
                self.totals_state = None
            n_batches = t.batches_per_epoch(self.data.train)
            if self.phase == "train":
                self.watcher.start_epoch(self.epoch)
                self.console.start_epoch(self.epoch, cfg.train.epochs, n_batches, self.step_in_epoch)
                _, stopped_at = t.train_epoch(
                    self.data.train, self.epoch, start=self.step_in_epoch, totals=totals,
                    on_boundary=lambda epoch, done, totals=totals: self._at_boundary(epoch, done, totals),
                )  # fmt: skip
                self.console.end_epoch()
                if t.nonfinite_stop is not None:
                    self.step_in_epoch = t.nonfinite_stop[1] + 1
                    self._save("last", totals)
                    self._drain()
                    raise NonFiniteLoss(
                        f"non-finite loss at epoch {self.epoch}, batch {t.nonfinite_stop[1]} "
                        f"(watch.on_nonfinite=stop); checkpoint saved in {self.run_dir / 'checkpoints'}. "
                        "Lower optim.lr, set train.clip_grad, or check the data for NaNs"
                    )
                if stopped_at is not None:
                    self._preempt(totals)
                self.phase, self.step_in_epoch = "val", n_batches
            else:  # resumed between training and validation: the watch reopens the epoch it saved
                self.watcher.start_epoch(self.epoch)
            train_figures = totals.reduced(self.ctx)
            val = self._validate(totals)
            # The watch's epoch ends with its loop; validation is outside its time split. It gets the val
            # accuracy for its not-learning check (accuracy near chance after several epochs).
            epoch_report = self._job_report(self.watcher.epoch_end(
                val_loss=val["val_loss"] if val else None, val_acc=val["val_acc1"] if val else None,
                num_classes=self.data.num_classes,
            ))  # fmt: skip
            row = self._metrics_row(train_figures, val, epoch_report)
            self.metrics_rows.append(row)
            self.logger.append_metrics(row)
            self.console.print(epoch_block(row, epoch_report, cfg.train.epochs))
            self.callbacks.on_epoch_end(self, row)
            best = self._update_best(row)
            self.phase = "done" if self.epoch == cfg.train.epochs else "train"
            if self.phase == "train":
                self.epoch, self.step_in_epoch = self.epoch + 1, 0
            self.logger.write_summary(self.summary("running"))  # before the save: its upload carries it
            self._save("last", best=best)
            if self.phase == "done":
                break

    def _job_report(self, rep: dict) -> dict:
        """The watch measures this rank; under DDP the job's throughput is the sum over ranks."""
        if not self.ctx.enabled:
            return rep
        mine = rep.get("images_per_s")
        total = distributed.all_gather_floats([float(mine or 0.0)], self.ctx)
        return {**rep, "images_per_s": sum(v[0] for v in total)} if mine is not None else rep

    def _validate(self, totals: EpochTotals) -> Optional[dict]:
        cfg = self.cfg
        if self.epoch % cfg.eval.every and self.epoch != cfg.train.epochs:
            return None
        started = time.perf_counter()
        # Ranks' val shards may differ by a batch: stop checks (collectives) happen only at batch indices every
        # rank reaches, every dist.stop_check_every batches, so the collectives always pair up.
        common = self._common_batches(len(self.data.val))
        every = max(1, int(cfg.dist.stop_check_every)) if self.ctx.enabled else 1

        def should_stop(index: int) -> bool:  # before val batch `index`
            if index >= common or index % every:
                return False
            return self._agreed(self._stop_wanted())[0]

        result = evaluate(self.trainer.model, self.data.val, self.device, self.precision, self.channels_last,
                          tta=cfg.eval.tta, ctx=self.ctx, should_stop=should_stop)  # fmt: skip
        if result is None:  # stopped mid-validation: the checkpoint says "train done, validate next"
            self._preempt(totals)
        result["val_time_s"] = time.perf_counter() - started
        if self.trainer.ema is not None:
            ema_val = evaluate(self.trainer.ema.module, self.data.val, self.device, self.precision,
                               self.channels_last, tta=cfg.eval.tta, ctx=self.ctx)  # fmt: skip
            result["ema_val_acc1"] = ema_val["val_acc1"]
            result["ema_val_loss"] = ema_val["val_loss"]
        return result

    def _common_batches(self, mine: int) -> int:
        if not self.ctx.enabled:
            return mine
        return int(min(v[0] for v in distributed.all_gather_floats([float(mine)], self.ctx)))

    def _metrics_row(self, train: dict, val: Optional[dict], rep: dict) -> dict:
        peak = rep.get("gpu_peak_mb") or rep.get("peak_rss_mb")
        # the LRs the epoch's steps trained at; an epoch without a step (every batch skipped): the next one's
        lrs = self.trainer.epoch_lr or dict.fromkeys(("first", "last", "min", "max"), self.trainer.lr())
        row = {
            "epoch": self.epoch, "step": self.trainer.global_step,
            "train_loss": train["train_loss"], "train_acc1": train["train_acc1"],
            "val_loss": None, "val_acc1": None, "val_acc5": None,
            "lr": lrs["last"], "lr_first": lrs["first"], "lr_min": lrs["min"], "lr_max": lrs["max"],
            "data_time_s": rep.get("data_time_s"), "train_time_s": rep.get("compute_time_s"),
            "other_time_s": rep.get("other_time_s"), "epoch_time_s": rep.get("epoch_time_s"),
            "images_per_s": rep.get("images_per_s"), "peak_mem_mb": peak,
            "rss_mb": rep.get("rss_mb"), "time": time.time(),
            "batches": self.trainer.batches_per_epoch(self.data.train),  # micro-batches (step counts optimizer steps)
        }  # fmt: skip
        if val is not None:
            row.update({k: val[k] for k in ("val_loss", "val_acc1", "val_acc5", "val_time_s")})
            for key in ("ema_val_acc1", "ema_val_loss"):
                if key in val:
                    row[key] = val[key]
        return row

    def _update_best(self, row: dict) -> Optional[tuple[int, float, str]]:
        """Track the best score; (epoch, score, weights) when the epoch's checkpoint is a top-k candidate (its
        name says which weights scored: epoch=NN-ema-val_acc1=XX.XX.pt for the EMA's). The epoch end writes
        the state once (last.pt) and keeps it as the best file too, ready to continue from the next epoch."""
        score, weights = scored_weights(row)
        if score is None:
            return None
        if self.best["val_acc1"] is None or score > self.best["val_acc1"]:
            self.best = {"val_acc1": score, "epoch": self.epoch, "weights": weights}
        return (self.epoch, float(score), weights)

    # -- stops and periodic checkpoints --------------------------------------------------------
    def _agreed(self, *flags: bool) -> list[bool]:
        """Each flag OR-ed over ranks in one all-reduce, so every rank takes the same branch (a rank that
        alone saves or stops would leave the others waiting in a collective). The tensor lives on the host."""
        if not self.ctx.enabled:
            return list(flags)
        t = torch.tensor([1.0 if f else 0.0 for f in flags])  # on the host: see control_group
        torch.distributed.all_reduce(t, group=self.control_group)
        return [v > 0 for v in t.tolist()]

    def _at_boundary(self, epoch: int, done: int, totals: EpochTotals) -> bool:
        """After each optimizer step: stop on a signal, or write a periodic checkpoint when one is due.

        One process checks its own flag every step (free). Ranks of a job agree every dist.stop_check_every
        steps, counted identically on every rank so the all-reduces pair up."""
        self.step_in_epoch = done
        self.boundaries += 1
        if self.written:
            self._announce_written()
        self.callbacks.on_step_end(self, self.trainer.global_step)
        cfg = self.cfg
        every_steps = cfg.run.checkpoint_every_steps
        every_min = cfg.run.checkpoint_every_minutes
        due_by_time = bool(every_min) and time.time() - self.last_periodic_time >= every_min * 60
        if self.ctx.enabled:
            if self.boundaries % max(1, int(cfg.dist.stop_check_every)):
                stop, due_by_time = False, False
            else:  # clocks differ between ranks: the time-based decision is agreed with the stop
                stop, due_by_time = self._agreed(self._stop_wanted(), due_by_time)
        else:
            stop = self._stop_wanted()
        if stop:
            return True
        due = (every_steps and self.trainer.global_step % every_steps == 0) or due_by_time
        if due and done < self.trainer.batches_per_epoch(self.data.train):
            self._save("periodic", totals)
            self.last_periodic_time = time.time()
        return False

    def _on_notice(self, description: str) -> None:
        """On the notice thread: stop as on SIGTERM (the ranks agree on the step, save, upload, exit 143)."""
        self.guard.request(f"a preemption notice ({description})")
        if self.ctx.is_main:
            self.log_event("preemption_notice", "warning", f"preemption notice: {description}; stopping at the "
                           "next agreed step", notice=description)  # fmt: skip

    def _note_restart(self) -> None:
        """On a torchrun restart (rank 0): say which rank ended the attempt before and how, where this one
        continues and how many steps are done again; in events.jsonl (`restart`) and summary.json."""
        attempt = attempts.attempt_number()
        if self.attempt is None or attempt == 0 or not self.ctx.is_main:
            return
        steps_path, last_logged = self.run_dir / "steps.jsonl", 0
        if steps_path.exists():  # read before the resume truncates what the lost attempt logged
            for line in steps_path.read_text().splitlines():
                with contextlib.suppress(ValueError, AttributeError, TypeError):
                    last_logged = max(last_logged, int(json.loads(line).get("step") or 0))  # optimizer steps
        ranks = attempts.previous_attempt(self.run_dir, attempt)
        record = {"attempt": attempt, "max_restarts": attempts.max_restarts(), "ranks": ranks,
                  "resumed_step": self.trainer.global_step,
                  "steps_redone": max(0, last_logged - self.trainer.global_step)}  # fmt: skip
        with contextlib.suppress(OSError, ValueError):
            self.restarts = list(json.loads((self.run_dir / "summary.json").read_text()).get("restarts") or [])
        self.restarts.append(record)
        lost = [r for r in ranks if "without a word" in r["ended"] or "killed" in r["ended"]] or ranks
        who = "; ".join(f"rank {r['rank']} (pid {r['pid']}) {r['ended']}" for r in lost) or "a worker failed"
        self.log_event("restart", "warning", f"restart {attempt} of {record['max_restarts']}: {who}; continuing "
                       f"from step {record['resumed_step']} ({record['steps_redone']} steps done again)",
                       **record)  # fmt: skip

    def _end_attempt(self, how: str) -> None:
        if self.attempt is not None:
            self.attempt.end(how)

    def _where(self, path: Path) -> str:
        if self.store is None:
            return str(path)
        return f"{self.store.url}/checkpoints/{path.name}"

    def _stop_wanted(self) -> bool:
        return self.guard.requested or self.stop_reason is not None

    def _preempt(self, totals: EpochTotals) -> None:
        if self.guard.requested:
            sig = self.guard.signal_name or "a signal"
        elif self.stop_reason is not None:
            sig = f"callback: {self.stop_reason}"
        else:  # the agreement said stop: a signal or a callback on another rank
            sig = "a stop on another rank"
        self.stopped_by = sig
        path = self._save("last", totals)
        self.writer.wait()
        self._announce_written()
        message = (
            f"stopped by {sig} at epoch {self.epoch}, batch {self.step_in_epoch}; checkpoint saved to "
            f"{self._where(path)}. Continue with the same command "
            f"(run.dir={self.run_label} run.resume=auto)"
        )
        self.log_event("preempted", "warning", f"stopped by {sig}", epoch=self.epoch, batch=self.step_in_epoch)
        # Rank 0 finishes the stop's files and uploads before any rank leaves: under torchrun, the first rank
        # to exit makes the agent end the others, which would cut an upload still going.
        self.stop_summary = self.summary("stopped")
        self.logger.write_summary(self.stop_summary)
        self._finish_store()
        distributed.host_barrier(self.ctx)
        raise Preempted(message)


def train(cfg: Any, callbacks: Any = (), user: Any = None) -> dict:
    """Run `cfg` to the end (or a stop signal: Preempted). Returns the run's summary. `user`
    (trainlab.user.UserParts) carries the user's own model, data, loss and transforms."""
    ctx = distributed.setup(cfg.train.device, cfg.dist.backend, cfg.dist.timeout_s)
    run: Optional[Run] = None
    try:
        run = Run(cfg, ctx, callbacks, user)
        try:
            with discard_new_run_dir(run):  # a new run dir that failed on bad input is removed
                summary = run.execute()
        finally:
            if run.lease is not None:
                run.lease.release()
            if run.lock is not None:  # after the last word in summary.json: a reader then sees it ended
                run.lock.release()
        distributed.barrier(ctx)  # no rank tears the process group down while a peer still uses it
        return summary
    finally:
        distributed.cleanup(ctx)
        sys.stdout.flush()
        if run is not None:
            run.guard.__exit__(None, None, None)  # the caller's own handlers back (installed in execute)
