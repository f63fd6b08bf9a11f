"""Which run dir a command writes to, which checkpoint it continues from, and what may change on resume.

A run is a pure function of its config, so a resume is refused when a key that changes the math differs
from the checkpoint's, unless the user forces it. The keys that may change freely are listed here.
"""

from __future__ import annotations

import glob
import json
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from trainlab import config as config_mod
from trainlab.errors import ConfigError
from trainlab.paths import LOCK_FILE
from trainlab.state import checkpoint as ckpt
from trainlab.state.retention import CheckpointManager

# Keys that may change between a run and its resume without changing the math. train.epochs and
# train.max_steps_per_epoch are here, but a schedule sized from them is checked apart (`schedule_change`).
RESUMABLE_CHANGES = (
    "train.epochs", "train.device", "train.nproc", "train.threads", "train.max_restarts", "train.max_steps_per_epoch",
    "data.num_workers", "data.pin_memory", "data.persistent_workers", "data.root", "data.download",
    "data.skip_bad_images", "data.val_batch_size", "eval.every", "eval.tta", "run.", "watch.", "dist.",
    "sched.extend", "log.", "train.preflight",  # log.*: where the numbers are copied to (trackers), not the numbers
    "train.callbacks",  # what watches the run (and may stop it), not what it computes
)  # fmt: skip


def math_changes(saved: Any, current: dict) -> list[tuple[str, Any, Any]]:
    """Keys whose values differ between a checkpoint's config and the current one, excluding safe ones.

    `data.batch_size=auto` matches any saved number: the run resolved it once and the resume reuses it. A
    saved config or section that is not a mapping (a hand-edited config.yaml) tells nothing: no change."""
    saved = saved if isinstance(saved, dict) else {}
    changes = []
    for section, values in current.items():
        if not isinstance(values, dict):
            continue
        saved_section = saved.get(section)
        saved_section = saved_section if isinstance(saved_section, dict) else {}
        for key, value in values.items():
            dotted = f"{section}.{key}"
            if any(dotted == k or (k.endswith(".") and dotted.startswith(k)) for k in RESUMABLE_CHANGES):
                continue
            old = saved_section.get(key, value)
            if dotted == "data.batch_size" and value == "auto":
                continue
            if old != value:
                changes.append((dotted, old, value))
    return changes


def default_run_name(cfg: Any) -> str:
    return cfg.run.name or f"{cfg.model.name}-{cfg.data.name}"


def _read_status(run_dir: Path) -> Optional[str]:
    try:
        status = json.loads((run_dir / "summary.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):  # AttributeError: JSON that is not an object
        return None
    return status if isinstance(status, str) else None


def _saved_config(run_dir: Path) -> Any:
    """config.yaml as written (or edited): whatever YAML it holds, {} when it cannot be read."""
    import yaml

    try:
        return yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, ValueError, yaml.YAMLError):  # missing or unparseable: the checkpoint will tell
        return {}


def _change_text(changes: list[tuple[str, Any, Any]]) -> str:
    key, old, new = changes[0]
    more = f" and {len(changes) - 1} more" if len(changes) > 1 else ""
    return f"{key} {old!r} there, {new!r} here{more}"


def find_unfinished_run(cfg: Any) -> tuple[Optional[Path], list[str]]:
    """With no run.dir given, `run.resume=auto` continues the newest unfinished run of the same name and
    config, so re-issuing the same command after a preemption picks it up. Returns it (or None) and, newest
    first, why each newer unfinished run was passed over (running now; other settings in its config.yaml)."""
    from trainlab.state.lock import held_by

    root = Path("runs")
    if not root.is_dir():
        return None, []
    name = default_run_name(cfg)
    # glob.escape: a run.name such as '[wip' is a name here, not a pattern
    candidates = sorted(root.glob(f"{glob.escape(name)}-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    current = config_mod.to_dict(cfg)
    passed_over = []
    for run_dir in candidates:
        if _read_status(run_dir) not in ("running", "stopped", "failed"):
            continue
        # The run's config.yaml decides: the checkpoint itself is loaded (and verified) once, by the resume.
        checkpoints = run_dir / "checkpoints"
        has_checkpoint = (checkpoints / "last.pt").is_file() or any(checkpoints.glob("periodic-*.pt"))
        if not has_checkpoint:
            continue
        holder = held_by(run_dir)
        if holder is not None:
            passed_over.append(f"{run_dir} is running ({holder.describe()})")
            continue
        changes = math_changes(_saved_config(run_dir), current)
        if changes:
            passed_over.append(f"{run_dir} has other settings in its config.yaml ({_change_text(changes)})")
            continue
        return run_dir, passed_over
    return None, passed_over


def choose_run_dir(cfg: Any, say) -> Path:
    """run.dir if given; else the unfinished run this command continues; else a new timestamped dir."""
    if cfg.run.dir:
        return Path(cfg.run.dir)
    if cfg.run.resume == "auto":
        found, passed_over = find_unfinished_run(cfg)
        if found is not None:
            say(f"continuing the unfinished run in {found} (run.resume=auto)")
            return found
        if passed_over:  # a new run where one may have been expected: say why, on the start line
            say(f"starting a new run: the unfinished run in {passed_over[0]}; to go on with that one, give its "
                "run.dir and the settings it has")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    fresh = Path("runs") / f"{default_run_name(cfg)}-{stamp}"
    suffix = 2
    while fresh.exists():  # two runs started in the same second: the second gets its own folder
        fresh = Path("runs") / f"{default_run_name(cfg)}-{stamp}-{suffix}"
        suffix += 1
    return fresh


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
    has_content = run_dir.is_dir() and any(p.name != LOCK_FILE for p in run_dir.iterdir())  # the lock is ours
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


# Keys that shape the weights: a checkpoint made with other values cannot be loaded at all, forced or not.
# (The class count can also change with the data; loading the weights checks that: Run._load_state.)
STRUCTURAL_KEYS = ("model.name", "model.num_classes", "model.norm", "model.cifar_stem", "model.aux_logits")


def check_compatible(cfg: Any, state: dict, world_size: int, warn) -> None:
    """Refuse a resume whose config changes the math (one line naming the key), unless forced; a change to
    the weights' shape (STRUCTURAL_KEYS) even when forced. The keys that shape the model are named first."""
    changes = math_changes(state.get("config", {}), config_mod.to_dict(cfg))
    if same_global_batch(cfg, state, world_size):  # e.g. 2 x 16 -> 1 x 32: the same samples per step
        changes = [c for c in changes if c[0] != "data.batch_size"]
    changes.sort(key=lambda c: (c[0] not in STRUCTURAL_KEYS, not c[0].startswith("model.")))  # stable
    structural = [c for c in changes if c[0] in STRUCTURAL_KEYS]
    if structural and cfg.run.resume_force:
        key, old, new = structural[0]
        raise ConfigError(
            f"cannot resume, even with run.resume_force=true: {key} changed from {old!r} to {new!r} since the "
            "checkpoint, and its weights do not fit the new model; restore it, or start a new run.dir (for a "
            "new head on these weights: model.pretrained=CHECKPOINT)"
        )
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
    started (searching again could pick another size and change the math); a number is taken as given,
    except on an elastic restart with another process count, where the global batch is kept when it divides."""
    from trainlab.state.attempts import attempt_number

    kept = elastic_batch_size(cfg, state, world_size, restarted=attempt_number() > 0)
    if kept is not None:
        return kept
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


def elastic_batch_size(cfg: Any, state: dict, world_size: int, restarted: bool) -> Optional[int]:
    """The per-process batch that keeps the checkpoint's global batch when an elastic job came back with
    another number of processes (torchrun --nnodes MIN:MAX restarted it: no person is there to set
    data.batch_size). None when nothing needs to change, it does not divide, or this is not a restart."""
    if not restarted or cfg.data.batch_size == "auto":
        return None
    saved = state.get("config", {})
    try:
        saved_world = int(state.get("world_size") or saved["train"]["nproc"])
        saved_global = int(saved["data"]["batch_size"]) * saved_world * int(saved["train"]["grad_accum"])
    except (KeyError, TypeError, ValueError):
        return None
    per_step = world_size * int(cfg.train.grad_accum)
    if saved_world == world_size or saved_global % per_step:
        return None
    return saved_global // per_step
