"""One training run, start to finish: run dir, resume, the epoch loop, checkpoints, logs, console.

`train(cfg)` is what `trainlab train` calls. The loops themselves live in engine.py; this module decides
what to load, when to save and what to print.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from trainlab import checkpoint as ckpt
from trainlab import config as config_mod
from trainlab import distributed, planted
from trainlab.console import Console
from trainlab.engine import EpochTotals, Trainer, evaluate
from trainlab.errors import ConfigError, DataError, NonFiniteLoss, Preempted
from trainlab.logs import NullLogger, RunLogger

# Keys that may change between a run and its resume without changing the math.
RESUMABLE_CHANGES = (
    "train.epochs", "train.device", "train.nproc", "train.threads", "train.max_steps_per_epoch", "train.preflight",
    "data.num_workers", "data.pin_memory", "data.persistent_workers", "data.root", "data.download",
    "data.skip_bad_images", "data.val_batch_size", "eval.every", "eval.tta", "run.", "watch.", "dist.",
)  # fmt: skip


# ---------------------------------------------------------------- setup helpers


class SelfSignal:
    """`TRAINLAB_SELF_SIGNAL=PHASE:EPOCH:BATCH[:SIGNAME]` sends this process a real signal after that batch
    (PHASE is `train` or `val`, EPOCH 1-based, BATCH 0-based within the epoch). A drill for preemption
    handling: the tests use it to hit exact points (first epoch, mid-validation) that timing from outside
    would only hit by luck. Unset, it does nothing."""

    def __init__(self) -> None:
        spec = os.environ.get("TRAINLAB_SELF_SIGNAL", "")
        self.point: Optional[tuple[str, int, int]] = None
        self.signal = signal.SIGTERM
        if spec:
            parts = spec.split(":")
            self.point = (parts[0], int(parts[1]), int(parts[2]))
            if len(parts) > 3:
                self.signal = getattr(signal, parts[3] if parts[3].startswith("SIG") else f"SIG{parts[3]}")

    def check(self, phase: str, epoch: int, batch: int) -> None:
        if self.point == (phase, epoch, batch):
            self.point = None
            os.kill(os.getpid(), self.signal)


class RankDrills:
    """Drills for multi-process runs, read from the environment by every rank (unset: nothing happens).

    - `TRAINLAB_FAIL_RANK=RANK:EPOCH:BATCH` raises RuntimeError in that rank after that train batch
      (EPOCH 1-based, BATCH 0-based): a rank failing mid-epoch, to check the job ends instead of hanging.
    - `TRAINLAB_SLOW_RANK=RANK:SECONDS` makes that rank sleep after every train batch: a straggler,
      for the watch's `straggler` event.
    - `TRAINLAB_DEBUG_RANK_HASHES=DIR`: at the end of a run every rank writes `DIR/rank{R}.sha256`, the
      sha256 of its final weights, so a test can check that all ranks hold the same model.
    """

    def __init__(self, rank: int) -> None:
        self.rank = rank
        fail = os.environ.get("TRAINLAB_FAIL_RANK", "")
        self.fail_at: Optional[tuple[int, int]] = None
        if fail:
            r, epoch, batch = (int(x) for x in fail.split(":"))
            self.fail_at = (epoch, batch) if r == rank else None
        slow = os.environ.get("TRAINLAB_SLOW_RANK", "")
        self.sleep_s = 0.0
        if slow:
            r, seconds = slow.split(":")
            self.sleep_s = float(seconds) if int(r) == rank else 0.0
        self.hash_dir = os.environ.get("TRAINLAB_DEBUG_RANK_HASHES") or None

    def after_batch(self, epoch: int, batch: int) -> None:
        if self.sleep_s:
            time.sleep(self.sleep_s)
        if self.fail_at == (epoch, batch):
            raise RuntimeError(f"TRAINLAB_FAIL_RANK drill: rank {self.rank} fails at epoch {epoch}, batch {batch}")

    def write_weights_hash(self, model: torch.nn.Module) -> None:
        if self.hash_dir:
            Path(self.hash_dir).mkdir(parents=True, exist_ok=True)
            digest = weights_digest(model.state_dict())
            (Path(self.hash_dir) / f"rank{self.rank}.sha256").write_text(digest + "\n")


def weights_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over a state_dict (names and raw bytes, in order): equal iff the weights are bitwise equal."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in state_dict.items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def configure_backends(cfg: Any, device: torch.device) -> None:
    if cfg.train.threads:
        torch.set_num_threads(int(cfg.train.threads))
    if cfg.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def resolve_precision(cfg: Any, device: torch.device) -> str:
    precision = str(cfg.train.precision)
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "32"
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("train.precision=fp16 needs a GPU; use train.precision=bf16 or 32 on the CPU")
    return precision


def math_changes(saved: dict, current: dict) -> list[tuple[str, Any, Any]]:
    """Keys whose values differ between a checkpoint's config and the current one, excluding safe ones."""
    changes = []
    for section, values in current.items():
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            dotted = f"{section}.{key}"
            if any(dotted == k or (k.endswith(".") and dotted.startswith(k)) for k in RESUMABLE_CHANGES):
                continue
            old = saved.get(section, {}).get(key, value)
            if old != value:
                changes.append((dotted, old, value))
    return changes


def default_run_name(cfg: Any) -> str:
    return cfg.run.name or f"{cfg.model.name}-{cfg.data.name}"


def _read_status(run_dir: Path) -> Optional[str]:
    import json

    try:
        return json.loads((run_dir / "summary.json").read_text()).get("status")
    except (OSError, ValueError):
        return None


def find_unfinished_run(cfg: Any) -> Optional[Path]:
    """With no run.dir given, `run.resume=auto` continues the newest unfinished run of the same name and
    config, so re-issuing the same command after a preemption picks it up."""
    root = Path("runs")
    if not root.is_dir():
        return None
    name = default_run_name(cfg)
    candidates = sorted(root.glob(f"{name}-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    current = config_mod.to_dict(cfg)
    for run_dir in candidates:
        if _read_status(run_dir) not in ("running", "stopped", "failed"):
            continue
        # The run's config.yaml decides: the checkpoint itself is loaded (and verified) once, by the resume.
        checkpoints = run_dir / "checkpoints"
        has_checkpoint = (checkpoints / "last.pt").is_file() or any(checkpoints.glob("periodic-*.pt"))
        if has_checkpoint and not math_changes(_saved_config(run_dir), current):
            return run_dir
    return None


def _saved_config(run_dir: Path) -> dict:
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))  # type: ignore[return-value]
    except Exception:  # missing or unparseable: not a run this command can continue
        return {}


# ---------------------------------------------------------------- the run


class Run:
    """Everything one run holds; `execute()` runs it."""

    def __init__(self, cfg: Any, ctx: distributed.DistContext):
        self.cfg = cfg
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
        self.guard = ckpt.PreemptionGuard()
        self.drill = SelfSignal()
        self.rank_drills = RankDrills(ctx.rank)

    # -- run directory and resume decision ------------------------------------------------
    def _choose_run_dir(self) -> Path:
        cfg = self.cfg
        if cfg.run.dir:
            return Path(cfg.run.dir)
        if cfg.run.resume == "auto":
            found = find_unfinished_run(cfg)
            if found is not None:
                self.console.info(f"continuing the unfinished run in {found} (run.resume=auto)")
                return found
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        return Path("runs") / f"{default_run_name(cfg)}-{stamp}"

    def _resume_state(self, run_dir: Path) -> Optional[dict]:
        resume = str(self.cfg.run.resume)
        manager = ckpt.CheckpointManager(run_dir / "checkpoints")
        if resume not in ("auto", "never"):
            path = Path(resume)
            if not path.is_file():
                raise ConfigError(f"run.resume={resume}: no such checkpoint file; give a .pt path, auto or never")
            state = ckpt.load_checked(path)
            self.console.info(f"resuming from {path}")
            return state
        has_content = run_dir.is_dir() and any(run_dir.iterdir())
        if resume == "never":
            if has_content:
                raise ConfigError(
                    f"run.dir {run_dir} is not empty and run.resume=never; choose a new run.dir or run.resume=auto"
                )
            return None
        found = manager.resumable()
        for path, reason in manager.skipped:
            self.console.warn(f"checkpoint {path} is unusable ({reason}); falling back to an older one")
        if found is None:
            if has_content and (run_dir / "checkpoints").is_dir() and manager.skipped:
                self.console.warn("no usable checkpoint left; starting from scratch")
            return None
        path, state = found
        self.console.info(f"resuming from {path} (epoch {state['epoch']}, step {state['global_step']})")
        return state

    def _check_compatible(self, state: dict) -> None:
        changes = math_changes(state.get("config", {}), config_mod.to_dict(self.cfg))
        if self._same_global_batch(state):  # e.g. 2 x 16 -> 1 x 32: the same samples per optimizer step
            changes = [c for c in changes if c[0] != "data.batch_size"]
        if changes and not self.cfg.run.resume_force:
            key, old, new = changes[0]
            more = f" (and {len(changes) - 1} more)" if len(changes) > 1 else ""
            raise ConfigError(
                f"cannot resume: {key} changed from {old!r} to {new!r}{more} since the checkpoint; "
                "restore it, use a new run.dir, or force with run.resume_force=true"
            )
        if changes:
            self.console.warn("resuming with changed keys (run.resume_force=true): " + ", ".join(c[0] for c in changes))

    def _same_global_batch(self, state: dict) -> bool:
        """Whether this job's global batch is the checkpoint's. A different process count is fine when it
        is: rank r takes positions r::W of the epoch's permutation in batches of data.batch_size, so the
        optimizer step k always sees the same samples and batch indices mean the same thing. Raises when
        only the process count changed (the global batch, hence the math, would)."""
        saved = state.get("config", {})
        try:
            saved_world = int(state.get("world_size") or saved["train"]["nproc"])
            saved_bs, accum = int(saved["data"]["batch_size"]), int(saved["train"]["grad_accum"])
            current_bs = int(self.cfg.data.batch_size)
        except (KeyError, TypeError, ValueError):  # an older checkpoint, or batch_size=auto: nothing to compare
            return False
        world = self.ctx.world_size
        if saved_world == world:
            return saved_bs == current_bs
        saved_global = saved_bs * saved_world * accum
        if saved_global != current_bs * world * int(self.cfg.train.grad_accum) and not self.cfg.run.resume_force:
            fix = f"set data.batch_size={saved_global // (world * accum)} to keep it, " if (
                saved_global % (world * accum) == 0) else ""
            raise ConfigError(
                f"cannot resume on {world} process(es): the checkpoint's global batch is {saved_global} "
                f"({saved_bs} x {saved_world} processes x {accum} accum) and data.batch_size={current_bs} would "
                f"make it {current_bs * world * accum}; {fix}use {saved_world} processes, "
                "or force with run.resume_force=true"
            )
        return saved_global == current_bs * world * int(self.cfg.train.grad_accum)

    # -- building ----------------------------------------------------------------------------
    def _build(self) -> None:
        from trainlab import models, optim
        from trainlab.data import build_data

        cfg, ctx = self.cfg, self.ctx
        seed_everything(cfg.train.seed)
        configure_backends(cfg, self.device)
        self.precision = resolve_precision(cfg, self.device)
        batch_size = cfg.data.batch_size
        if batch_size == "auto":
            if self.device.type != "cuda":
                raise ConfigError("data.batch_size=auto needs a GPU; give a number, e.g. data.batch_size=128")
            from trainlab.bench import find_max_batch

            batch_size = find_max_batch(cfg, self.device)
            self.console.info(f"data.batch_size=auto: {batch_size} per process fits")
            self.cfg = cfg = config_mod.replace(cfg, **{"data.batch_size": batch_size})

        self.data = build_data(cfg, self.device, ctx.rank, ctx.world_size)
        num_classes = cfg.model.num_classes or self.data.num_classes
        if self.data.num_classes > num_classes:
            raise DataError(
                f"the dataset has {self.data.num_classes} classes but model.num_classes={num_classes}; "
                "raise model.num_classes or drop it to use the dataset's count"
            )
        self.num_classes = num_classes
        model = models.create(
            cfg.model.name, num_classes, cifar_stem=cfg.model.cifar_stem, norm=cfg.model.norm,
            pretrained=cfg.model.pretrained, freeze_backbone=cfg.model.freeze_backbone,
        )  # fmt: skip
        planted.plant(self.data, model, cfg.train.seed)  # TRAINLAB_PLANT test-only fault drills; unset: nothing
        self.params = sum(p.numel() for p in model.parameters())
        channels_last = cfg.train.channels_last
        if channels_last is None:  # fast default on GPUs, where conv kernels prefer NHWC
            channels_last = self.device.type == "cuda" and any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
        self.channels_last = bool(channels_last)
        model = model.to(self.device, memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        self.raw_model = model  # DDP and compile share its parameters; checkpoints hold its state
        wrapped = distributed.wrap_model(model, ctx, sync_bn=cfg.model.sync_bn)
        if ctx.enabled and cfg.model.sync_bn:
            self.raw_model = distributed.unwrap(wrapped)
        if cfg.train.compile != "none":
            wrapped = torch.compile(wrapped, mode=cfg.train.compile)

        global_batch = batch_size * ctx.world_size * cfg.train.grad_accum
        self.global_batch = global_batch
        optimizer = optim.build_optimizer(self.raw_model, cfg.optim, global_batch)
        batches = len(self.data.train)
        if cfg.train.max_steps_per_epoch:
            batches = min(batches, cfg.train.max_steps_per_epoch)
        self.steps_per_epoch = -(-batches // cfg.train.grad_accum)  # optimizer steps
        scheduler = optim.build_scheduler(optimizer, cfg.sched, cfg.optim, cfg.train.epochs, self.steps_per_epoch)
        self.schedule_warnings = optim.check_schedule(cfg.sched, cfg.train.epochs, self.steps_per_epoch)

        ema = None
        if cfg.train.ema_decay:
            from trainlab.ema import ModelEMA

            ema = ModelEMA(self.raw_model, cfg.train.ema_decay, warmup=cfg.train.ema_warmup)
        mixer = None
        if cfg.aug.mixup_alpha > 0 or cfg.aug.cutmix_alpha > 0:
            from trainlab.mix import BatchMixer

            mixer = BatchMixer(
                cfg.aug.mixup_alpha, cfg.aug.cutmix_alpha, cfg.aug.mix_prob, cfg.aug.switch_prob,
                num_classes, label_smoothing=cfg.train.label_smoothing,
            )  # fmt: skip
        self.trainer = Trainer(
            model=wrapped, optimizer=optimizer, scheduler=scheduler, device=self.device, precision=self.precision,
            channels_last=self.channels_last, grad_accum=cfg.train.grad_accum, clip_grad=cfg.train.clip_grad,
            label_smoothing=cfg.train.label_smoothing, mixer=mixer, ema=ema, on_nonfinite=cfg.watch.on_nonfinite,
            seed=cfg.train.seed, max_batches=cfg.train.max_steps_per_epoch, on_batch=self._on_batch,
        )  # fmt: skip

    def _build_watcher(self) -> None:
        from trainlab.watch import Watcher

        s = self.cfg.watch
        self.watcher = Watcher(
            print_every=s.print_every, show_gpu=s.show_gpu, warn_on_leak=s.warn_on_leak,
            warn_on_bottleneck=s.warn_on_bottleneck, warn_on_variance=s.warn_on_variance,
            settings=s, device=self.device, printer=self.console.print, on_event=self._on_event,
            on_log=self.logger.log_step, model=self.raw_model, optimizer=self.trainer.optimizer,
            rank=self.ctx.rank, world_size=self.ctx.world_size, verbose=self.ctx.is_main and s.enabled,
            planned_steps=self.cfg.train.epochs * self.trainer.batches_per_epoch(self.data.train),  # watch budget
            num_classes=self.num_classes,
        )  # fmt: skip
        self.watcher.print_epoch_block = False
        self.trainer.watcher = self.watcher

    def _on_batch(self, epoch: int, index: int) -> None:
        self.console.advance()
        self.drill.check("train", epoch, index)
        self.rank_drills.after_batch(epoch, index)

    def _on_event(self, event: Any) -> None:
        record = event.to_dict() if hasattr(event, "to_dict") else dict(event)
        self.logger.log_event(record)

    def _event(self, kind: str, severity: str, message: str, **data: Any) -> None:
        record = {"kind": kind, "severity": severity, "step": self.trainer.batches_seen, "epoch": self.epoch,
                  "message": message, "data": data}  # fmt: skip
        self.logger.log_event(record)
        (self.console.warn if severity != "info" else self.console.info)(message)

    # -- checkpoint state --------------------------------------------------------------------
    def state(self, totals: Optional[EpochTotals]) -> dict:
        t = self.trainer
        return {
            "format": "trainlab-checkpoint-1",
            "config": config_mod.to_dict(self.cfg),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "phase": self.phase,
            "global_step": t.global_step,
            "batches_seen": t.batches_seen,
            "model": self.raw_model.state_dict(),
            "optimizer": t.optimizer.state_dict(),
            "scheduler": t.scheduler.state_dict(),
            "scaler": t.scaler.state_dict(),
            "ema": t.ema.state_dict() if t.ema is not None else None,
            "rng": ckpt.capture_rng(),
            "totals": totals.state_dict() if totals is not None else None,
            "watch": self.watcher.state_dict(),
            "metrics_rows": list(self.metrics_rows),
            "best": dict(self.best),
            "num_classes": self.num_classes,
            "class_names": list(self.data.class_names),
            "wall_time_s": self.wall_time(),
            "world_size": self.ctx.world_size,
        }

    def _load_state(self, state: dict) -> None:
        t = self.trainer
        self.raw_model.load_state_dict(state["model"])
        t.optimizer.load_state_dict(state["optimizer"])
        t.scheduler.load_state_dict(state["scheduler"])
        t.scaler.load_state_dict(state["scaler"])
        if t.ema is not None and state.get("ema") is not None:
            t.ema.load_state_dict(state["ema"])
        t.global_step = state["global_step"]
        t.batches_seen = state["batches_seen"]
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
        ckpt.restore_rng(state["rng"])

    def wall_time(self) -> float:
        return getattr(self, "resumed_wall", 0.0) + (time.time() - self.started)

    def _save(self, kind: str, totals: Optional[EpochTotals] = None) -> Optional[Path]:
        """Rank 0 writes; every rank waits, so nobody exits before the file is whole."""
        path = None
        if totals is not None and self.ctx.enabled:  # every rank takes part: the sum is a collective
            totals = self._job_totals(totals)
        state = self.state(totals) if self.ctx.is_main else None
        if self.ctx.is_main:
            with self.guard.saving():
                if kind == "last":
                    path = self.manager.save_last(state)
                elif kind == "periodic":
                    path = self.manager.save_periodic(state, self.trainer.global_step)
        distributed.barrier(self.ctx)
        return path

    # -- summary -----------------------------------------------------------------------------
    def summary(self, status: str, error: Optional[str] = None) -> dict:
        watcher = getattr(self, "watcher", None)  # absent when the run failed before it was built
        counts = dict(Counter(event.kind for event in watcher.events)) if watcher is not None else {}
        return {
            "status": status,
            "epochs": self.cfg.train.epochs,
            "epochs_done": len(self.metrics_rows),
            "best_val_acc1": self.best["val_acc1"],
            "best_epoch": self.best["epoch"],
            "best_weights": self.best["weights"],
            "final": self.metrics_rows[-1] if self.metrics_rows else None,
            "events": counts,
            "watch": self.watcher.summary() if hasattr(self, "watcher") else {},
            "model": self.cfg.model.name,
            "params": getattr(self, "params", None),
            "data": self.cfg.data.name,
            "device": str(self.device),
            "precision": getattr(self, "precision", None),
            "world_size": self.ctx.world_size,
            "global_batch": getattr(self, "global_batch", None),
            "started": datetime.fromtimestamp(self.started).isoformat(timespec="seconds"),
            "updated": datetime.now().isoformat(timespec="seconds"),
            "wall_time_s": round(self.wall_time(), 3),
            "error": error,
            "run_dir": str(self.run_dir),
        }

    # -- the loop ----------------------------------------------------------------------------
    def execute(self) -> dict:
        cfg, ctx = self.cfg, self.ctx
        self.run_dir = Path(self._choose_run_dir())
        if ctx.enabled:  # every rank uses rank 0's choice (its timestamp)
            self.run_dir = Path(distributed.broadcast_object(str(self.run_dir), ctx))
        state = self._resume_state(self.run_dir)
        distributed.barrier(ctx)  # every rank has looked at the run dir before rank 0 writes into it
        if state is not None:
            self._check_compatible(state)
            saved_cfg = state.get("config", {})
            if saved_cfg and state.get("phase") == "done" and saved_cfg["train"]["epochs"] >= cfg.train.epochs:
                self.console.info(
                    f"run {self.run_dir} is finished ({saved_cfg['train']['epochs']} epochs); raise train.epochs "
                    "to extend it, or choose a new run.dir"
                )
                return {"status": "finished", "run_dir": str(self.run_dir), "already_finished": True}

        self._build()
        if ctx.is_main:
            (self.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(config_mod.to_yaml(self.cfg))
            self.logger = RunLogger(self.run_dir, tensorboard=cfg.run.tensorboard)
        self.manager = ckpt.CheckpointManager(
            self.run_dir / "checkpoints", save_top_k=cfg.run.save_top_k, keep_periodic=cfg.run.keep_periodic
        )
        self._build_watcher()
        if state is not None:
            self._load_state(state)
            if self.phase == "done":  # extending a finished run with more epochs
                self.epoch, self.step_in_epoch, self.phase = self.epoch + 1, 0, "train"
            self.logger.rewrite_metrics(self.metrics_rows)
            self.logger.truncate_jsonl(self.trainer.batches_seen)
            self._event("resumed", "info", f"resumed at epoch {self.epoch}, batch {self.step_in_epoch}",
                        global_step=self.trainer.global_step)  # fmt: skip

        self._announce()
        if cfg.train.preflight and state is None and ctx.is_main:  # the doctor's cheap checks before step 1
            from trainlab.doctor import preflight_verdicts

            for v in preflight_verdicts(self.cfg, self.data, self.raw_model, self.num_classes):
                self._event("preflight", **v.event())
        for warning in self.schedule_warnings:
            self._event("schedule", "warning", warning)
        self.logger.write_summary(self.summary("running"))
        try:
            with self.guard:
                self._loop()
        except Preempted:
            self.logger.write_summary(self.summary("stopped"))
            raise
        except NonFiniteLoss as exc:
            self.logger.write_summary(self.summary("failed", str(exc)))
            raise
        except BaseException as exc:
            self.logger.write_summary(self.summary("failed", f"{type(exc).__name__}: {exc}"))
            raise
        finally:
            self.watcher.close()
            self.logger.close()
            self.console.close()
        final = self.summary("finished")
        self.logger.write_summary(final)
        self.rank_drills.write_weights_hash(self.raw_model)
        self._farewell(final)
        return final

    def _announce(self) -> None:
        cfg = self.cfg
        self.console.info(
            f"trainlab: {cfg.model.name} ({self.params:,} params) on {cfg.data.name} "
            f"[{self.data.loader_kind} loader], device {self.device}, "
            f"precision {self.precision}, batch {cfg.data.batch_size} x {self.ctx.world_size} proc x "
            f"{cfg.train.grad_accum} accum = {self.global_batch} global"
        )
        if cfg.optim.lr_scale == "linear":
            from trainlab.optim import REFERENCE_BATCH, effective_lr

            self.console.info(
                f"lr {effective_lr(cfg.optim, self.global_batch):.6g} = optim.lr {cfg.optim.lr:g} x "
                f"{self.global_batch}/{REFERENCE_BATCH} global batch (optim.lr_scale=linear)"
            )
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
                    raise NonFiniteLoss(
                        f"non-finite loss at epoch {self.epoch}, batch {t.nonfinite_stop[1]} "
                        f"(watch.on_nonfinite=stop); checkpoint saved in {self.run_dir / 'checkpoints'}. "
                        "Lower optim.lr, set train.clip_grad, or check the data for NaNs"
                    )
                if stopped_at is not None:
                    self._preempt(totals)
                self.phase, self.step_in_epoch = "val", n_batches
            train_figures = totals.reduced(self.ctx)
            val = self._validate(totals)
            # The watch's epoch ends with its loop; validation is outside its time split. It gets the val
            # accuracy for its not-learning check (accuracy near chance after several epochs).
            epoch_report = self._job_report(self.watcher.epoch_end(
                val_loss=val["val_loss"] if val else None, val_acc=val["val_acc1"] if val else None,
                num_classes=self.num_classes,
            ))  # fmt: skip
            row = self._metrics_row(train_figures, val, epoch_report)
            self.metrics_rows.append(row)
            self.logger.append_metrics(row)
            self._print_epoch(row, epoch_report)
            self._update_best(row, totals)
            self.phase = "done" if self.epoch == cfg.train.epochs else "train"
            if self.phase == "train":
                self.epoch, self.step_in_epoch = self.epoch + 1, 0
            self._save("last")
            self.logger.write_summary(self.summary("running"))
            if self.phase == "done":
                break

    def _job_report(self, rep: dict) -> dict:
        """The watch measures this rank; under DDP the job's throughput is the sum over ranks."""
        if not self.ctx.enabled:
            return rep
        mine = rep.get("images_per_s")
        t = torch.tensor([float(mine or 0.0)], dtype=torch.float64, device=self.device)
        distributed.all_reduce_sum(t, self.ctx)  # on every rank, whatever its report holds
        return {**rep, "images_per_s": t.item()} if mine is not None else rep

    def _validate(self, totals: EpochTotals) -> Optional[dict]:
        cfg = self.cfg
        if self.epoch % cfg.eval.every and self.epoch != cfg.train.epochs:
            return None
        started = time.perf_counter()
        model = self.trainer.model
        val_batches = iter(range(10**9))

        def should_stop() -> bool:  # called before each val batch
            index = next(val_batches)
            if index:
                self.drill.check("val", self.epoch, index - 1)
            return self._agreed_stop()

        result = evaluate(model, self.data.val, self.device, self.precision, self.channels_last,
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

    def _metrics_row(self, train: dict, val: Optional[dict], rep: dict) -> dict:
        data_s = rep.get("data_time_s")
        compute_s = rep.get("compute_time_s")
        epoch_s = rep.get("epoch_time_s")
        peak = rep.get("gpu_peak_mb") or rep.get("peak_rss_mb")
        row = {
            "epoch": self.epoch, "step": self.trainer.global_step,
            "train_loss": train["train_loss"], "train_acc1": train["train_acc1"],
            "val_loss": None, "val_acc1": None, "val_acc5": None, "lr": self.trainer.lr(),
            "data_time_s": data_s, "train_time_s": compute_s, "other_time_s": rep.get("other_time_s"),
            "epoch_time_s": epoch_s, "images_per_s": rep.get("images_per_s"), "peak_mem_mb": peak,
            "rss_mb": rep.get("rss_mb"), "time": time.time(), "batches": rep.get("steps"),
        }  # fmt: skip
        if val is not None:
            row.update({k: val[k] for k in ("val_loss", "val_acc1", "val_acc5", "val_time_s")})
            for key in ("ema_val_acc1", "ema_val_loss"):
                if key in val:
                    row[key] = val[key]
        return row

    def _update_best(self, row: dict, totals: EpochTotals) -> None:
        score, weights = row.get("val_acc1"), "raw"
        if row.get("ema_val_acc1") is not None and (score is None or row["ema_val_acc1"] > score):
            score, weights = row["ema_val_acc1"], "ema"
        if score is None:
            return
        if self.best["val_acc1"] is None or score > self.best["val_acc1"]:
            self.best = {"val_acc1": score, "epoch": self.epoch, "weights": weights}
        if self.ctx.is_main:
            phase, epoch, step = self.phase, self.epoch, self.step_in_epoch
            # The best files hold the state after this epoch, ready to continue from the next one.
            done = epoch == self.cfg.train.epochs
            self.phase, self.epoch, self.step_in_epoch = ("done", epoch, 0) if done else ("train", epoch + 1, 0)
            state = self.state(None)
            self.phase, self.epoch, self.step_in_epoch = phase, epoch, step
            with self.guard.saving():
                self.manager.save_best(state, epoch, score)

    # -- stops and periodic checkpoints --------------------------------------------------------
    def _agreed_stop(self) -> bool:
        """Whether any rank got a stop signal. Under DDP every rank must stop at the same step."""
        return self._agreed(self.guard.requested)[0]

    def _agreed(self, *flags: bool) -> list[bool]:
        """Each flag OR-ed over ranks in one all-reduce, so every rank takes the same branch (a rank that
        alone saves or stops would leave the others waiting in a collective)."""
        if not self.ctx.enabled:
            return list(flags)
        t = torch.tensor([1.0 if f else 0.0 for f in flags], device=self.device)
        distributed.all_reduce_sum(t, self.ctx)
        return [v > 0 for v in t.tolist()]

    def _job_totals(self, totals: EpochTotals) -> EpochTotals:
        """The epoch's running sums over all ranks (what a checkpoint stores)."""
        packed = torch.stack([totals.loss_sum, totals.correct1, totals.seen]).clone()
        distributed.all_reduce_sum(packed, self.ctx)
        return EpochTotals(packed[0].clone(), packed[1].clone(), packed[2].clone())

    def _at_boundary(self, epoch: int, done: int, totals: EpochTotals) -> bool:
        self.step_in_epoch = done
        cfg = self.cfg
        every_steps = cfg.run.checkpoint_every_steps
        every_min = cfg.run.checkpoint_every_minutes
        # Clocks differ between ranks: the time-based decision is agreed in the same all-reduce as the stop.
        due_by_time = bool(every_min) and time.time() - self.last_periodic_time >= every_min * 60
        stop, due_by_time = self._agreed(self.guard.requested, due_by_time)
        if stop:
            return True
        due = (every_steps and self.trainer.global_step % every_steps == 0) or due_by_time
        if due and done < self.trainer.batches_per_epoch(self.data.train):
            self._save("periodic", totals)
            self.last_periodic_time = time.time()
        return False

    def _preempt(self, totals: EpochTotals) -> None:
        sig = self.guard.signal_name or "a signal"
        path = self._save("last", totals)
        message = (
            f"stopped by {sig} at epoch {self.epoch}, batch {self.step_in_epoch}; checkpoint saved to "
            f"{path or self.run_dir / 'checkpoints' / 'last.pt'}. Continue with the same command "
            f"(run.dir={self.run_dir} run.resume=auto)"
        )
        self._event("preempted", "warning", f"stopped by {sig}", epoch=self.epoch, batch=self.step_in_epoch)
        raise Preempted(message)

    # -- console -------------------------------------------------------------------------------
    def _print_epoch(self, row: dict, report: dict) -> None:
        def fmt(v, spec):
            return format(v, spec) if isinstance(v, (int, float)) else "-"

        batches = row.get("batches") or 1
        lines = [
            f"Epoch {row['epoch']}/{self.cfg.train.epochs}",
            f"- Loss: {fmt(row['train_loss'], '.4f')}",
            f"- Accuracy (Top-1): {fmt(row['train_acc1'], '.2f')}%",
            f"- Total Data Loading Time: {fmt(row['data_time_s'], '.4f')}s",
            f"- Total Training Time: {fmt(row['train_time_s'], '.4f')}s",
            f"- Average Training Time per Batch: {fmt((row['train_time_s'] or 0) / batches, '.4f')}s",
            f"- Total Epoch Time: {fmt(row['epoch_time_s'], '.4f')}s",
            f"- Val Loss: {fmt(row['val_loss'], '.4f')} | Val Top-1: {fmt(row['val_acc1'], '.2f')}% | "
            f"Val Top-5: {fmt(row['val_acc5'], '.2f')}%"
            + (f" | EMA Top-1: {row['ema_val_acc1']:.2f}%" if row.get("ema_val_acc1") is not None else ""),
            f"- Images/s: {fmt(row['images_per_s'], '.1f')} | LR: {fmt(row['lr'], '.5g')}",
            self._health_line(report),
        ]
        self.console.print("\n".join(lines))

    @staticmethod
    def _health_line(report: dict) -> str:
        def mb(key: str) -> str:
            value = report.get(key)
            return f"{value:+.1f}MB" if isinstance(value, (int, float)) else "-"

        arrow = {"decreasing": "↓", "increasing": "↑", "stable": "→"}.get(report.get("loss_trend_label", ""), "")
        parts = [f"loss trend {arrow} {report.get('loss_trend_label', 'n/a')}",
                 f"RSS {report.get('rss_mb', 0):.0f}MB ({mb('rss_delta_mb')}, peak {report.get('peak_rss_mb', 0):.0f}MB)"]
        if report.get("gpu_peak_mb") is not None:
            parts.append(f"VRAM {report.get('gpu_alloc_mb', 0):.0f}MB ({mb('gpu_alloc_delta_mb')}, "
                         f"peak {report['gpu_peak_mb']:.0f}MB)")
        events = report.get("events") or {}
        parts.append("warnings: " + (", ".join(f"{k} x{v}" for k, v in events.items()) if events else "none"))
        return "- Health: " + " | ".join(parts)

    def _farewell(self, final: dict) -> None:
        best = final["best_val_acc1"]
        best_text = f"{best:.2f}% at epoch {final['best_epoch']} ({final['best_weights']} weights)" if best else "-"
        self.console.info(f"done in {final['wall_time_s']:.1f}s; best val top-1 {best_text}")
        self.console.info(f"run dir: {self.run_dir}")


def train(cfg: Any) -> dict:
    """Run `cfg` to the end (or a stop signal). Returns the run's summary."""
    ctx = distributed.setup(cfg.train.device, cfg.dist.backend, cfg.dist.timeout_s)
    try:
        summary = Run(cfg, ctx).execute()
        distributed.barrier(ctx)  # no rank tears the process group down while a peer still uses it
        return summary
    finally:
        distributed.cleanup(ctx)
        sys.stdout.flush()
