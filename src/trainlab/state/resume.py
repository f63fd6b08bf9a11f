"""Which run dir a command writes to, which checkpoint it continues from, and what may change on resume.

A run is a pure function of its config, so a resume is refused when a key that changes the math differs
from the checkpoint's, unless the user forces it. The keys that may change freely are listed here.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from trainlab import config as config_mod
from trainlab.errors import ConfigError
from trainlab.state import checkpoint as ckpt
from trainlab.state.retention import CheckpointManager

# Keys that may change between a run and its resume without changing the math. train.epochs and
# train.max_steps_per_epoch are here, but a schedule sized from them is checked apart (`schedule_change`).
RESUMABLE_CHANGES = (
    "train.epochs", "train.device", "train.nproc", "train.threads", "train.max_steps_per_epoch",
    "data.num_workers", "data.pin_memory", "data.persistent_workers", "data.root", "data.download",
    "data.skip_bad_images", "data.val_batch_size", "eval.every", "eval.tta", "run.", "watch.", "dist.",
    "sched.extend", "log.", "train.preflight",  # log.*: where the numbers are copied to (trackers), not the numbers
    "train.callbacks",  # what watches the run (and may stop it), not what it computes
)  # fmt: skip


def math_changes(saved: dict, current: dict) -> list[tuple[str, Any, Any]]:
    """Keys whose values differ between a checkpoint's config and the current one, excluding safe ones.

    `data.batch_size=auto` matches any saved number: the run resolved it once and the resume reuses it."""
    changes = []
    for section, values in current.items():
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            dotted = f"{section}.{key}"
            if any(dotted == k or (k.endswith(".") and dotted.startswith(k)) for k in RESUMABLE_CHANGES):
                continue
            old = saved.get(section, {}).get(key, value)
            if dotted == "data.batch_size" and value == "auto":
                continue
            if old != value:
                changes.append((dotted, old, value))
    return changes


def default_run_name(cfg: Any) -> str:
    return cfg.run.name or f"{cfg.model.name}-{cfg.data.name}"


def _read_status(run_dir: Path) -> Optional[str]:
    try:
        return json.loads((run_dir / "summary.json").read_text()).get("status")
    except (OSError, ValueError):
        return None


def _saved_config(run_dir: Path) -> dict:
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))  # type: ignore[return-value]
    except Exception:  # missing or unparseable: not a run this command can continue
        return {}


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


def choose_run_dir(cfg: Any, say) -> Path:
    """run.dir if given; else the unfinished run this command continues; else a new timestamped dir."""
    if cfg.run.dir:
        return Path(cfg.run.dir)
    if cfg.run.resume == "auto":
        found = find_unfinished_run(cfg)
        if found is not None:
            say(f"continuing the unfinished run in {found} (run.resume=auto)")
            return found
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{default_run_name(cfg)}-{stamp}"


def load_resume_state(cfg: Any, run_dir: Path, say, warn) -> Optional[dict]:
    """The checkpoint this run continues from (verified), or None to start from scratch."""
    resume = str(cfg.run.resume)
    trusted = bool(cfg.run.trust_checkpoint)  # weights-only loads unless the user trusts the file
    manager = CheckpointManager(run_dir / "checkpoints", trusted=trusted)
    if resume not in ("auto", "never"):
        path = Path(resume)
        if not path.is_file():
            raise ConfigError(f"run.resume={resume}: no such checkpoint file; give a .pt path, auto or never")
        state = ckpt.load_checked(path, trusted=trusted)
        say(f"resuming from {path}")
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
        warn(f"checkpoint {path} is unusable ({reason}); falling back to an older one")
    if found is None:
        if has_content and (run_dir / "checkpoints").is_dir() and manager.skipped:
            warn("no usable checkpoint left; starting from scratch")
        return None
    path, state = found
    say(f"resuming from {path} (epoch {state['epoch']}, step {state['global_step']})")
    return state


def saved_batch_size(state: dict) -> Optional[int]:
    """The per-process batch the checkpoint's run trained with (resolved, also when it said `auto`)."""
    try:
        return int(state["config"]["data"]["batch_size"])
    except (KeyError, TypeError, ValueError):
        return None


def check_compatible(cfg: Any, state: dict, world_size: int, warn) -> None:
    """Refuse a resume whose config changes the math (one line naming the key), unless forced."""
    changes = math_changes(state.get("config", {}), config_mod.to_dict(cfg))
    if same_global_batch(cfg, state, world_size):  # e.g. 2 x 16 -> 1 x 32: the same samples per step
        changes = [c for c in changes if c[0] != "data.batch_size"]
    if changes and not cfg.run.resume_force:
        key, old, new = changes[0]
        more = f" (and {len(changes) - 1} more)" if len(changes) > 1 else ""
        raise ConfigError(
            f"cannot resume: {key} changed from {old!r} to {new!r}{more} since the checkpoint; "
            "restore it, use a new run.dir, or force with run.resume_force=true"
        )
    if changes:
        warn("resuming with changed keys (run.resume_force=true): " + ", ".join(c[0] for c in changes))


def same_global_batch(cfg: Any, state: dict, world_size: int) -> bool:
    """Whether this job's global batch is the checkpoint's. A different process count is fine when it
    is: rank r takes positions r::W of the epoch's permutation in batches of data.batch_size, so the
    optimizer step k always sees the same samples and batch indices mean the same thing. Raises when
    only the process count changed (the global batch, hence the math, would)."""
    saved = state.get("config", {})
    try:
        saved_world = int(state.get("world_size") or saved["train"]["nproc"])
        saved_bs, accum = int(saved["data"]["batch_size"]), int(saved["train"]["grad_accum"])
    except (KeyError, TypeError, ValueError):  # an older checkpoint: nothing to compare
        return False
    current_bs = resume_batch_size(cfg, state, world_size)
    if saved_world == world_size:
        return saved_bs == current_bs
    saved_global = saved_bs * saved_world * accum
    current_accum = int(cfg.train.grad_accum)
    if saved_global != current_bs * world_size * current_accum and not cfg.run.resume_force:
        fix = f"set data.batch_size={saved_global // (world_size * accum)} to keep it, " if (
            saved_global % (world_size * accum) == 0) else ""
        raise ConfigError(
            f"cannot resume on {world_size} process(es): the checkpoint's global batch is {saved_global} "
            f"({saved_bs} x {saved_world} processes x {accum} accum) and data.batch_size={current_bs} would "
            f"make it {current_bs * world_size * current_accum}; {fix}use {saved_world} processes, "
            "or force with run.resume_force=true"
        )
    return saved_global == current_bs * world_size * current_accum


def resume_batch_size(cfg: Any, state: dict, world_size: int) -> int:
    """The per-process batch a resumed run uses. `auto` keeps the global batch the run resolved when it
    started (searching again could pick another size and change the math); a number is taken as given."""
    if cfg.data.batch_size != "auto":
        return int(cfg.data.batch_size)
    saved = state.get("config", {})
    saved_bs = saved_batch_size(state)
    if saved_bs is None:
        raise ConfigError("cannot resume data.batch_size=auto: the checkpoint has no batch size; give a number")
    saved_world = int(state.get("world_size") or saved.get("train", {}).get("nproc", 1))
    saved_global = saved_bs * saved_world
    if saved_global % world_size:
        raise ConfigError(
            f"cannot resume data.batch_size=auto on {world_size} process(es): the run's global batch "
            f"{saved_global} does not split evenly; use {saved_world} processes"
        )
    return saved_global // world_size
