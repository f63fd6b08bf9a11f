"""Fault drills: test-only switches read from the environment, so tests can hit exact points of a real run.

Every drill is off unless its variable is set; a user never sets them. They live here, read once at start-up,
so the run's own code shows one call per hook (`after_batch`, `check`) and nothing else.

- `TRAINLAB_SELF_SIGNAL=PHASE:EPOCH:BATCH[:SIGNAME]`: this process sends itself a real signal after that batch.
- `TRAINLAB_FAIL_RANK=RANK:EPOCH:BATCH`: that rank raises after that train batch.
- `TRAINLAB_SLOW_RANK=RANK:SECONDS`: that rank sleeps after every train batch (a straggler).
- `TRAINLAB_SLOW_HOOK=SECONDS`: every rank sleeps in the optimizer-step boundary hook (where checkpoints are
  written and stops agreed): host work that must count as `other` time, never as compute.
- `TRAINLAB_DEBUG_RANK_HASHES=DIR`: every rank writes the sha256 of its final weights to `DIR/rank{R}.sha256`.
- `TRAINLAB_DRILL_MAX_BATCH=N` or `RANK:N,RANK:N`: the largest-batch search treats any batch above N as out of
  memory, so `data.batch_size=auto` runs on the CPU and ranks can "have" different GPUs.
- `TRAINLAB_COUNT_COLLECTIVES=DIR`: every rank counts the bookkeeping collectives it issues (all_reduce,
  broadcast, all_gather, barrier from Python; DDP's gradient buckets are not counted) and writes
  `DIR/rank{R}.json` with the count and the number of optimizer steps.
- `TRAINLAB_COUNT_SYNCS=DIR`: on CUDA, `torch.cuda.set_sync_debug_mode("warn")` for the whole run; every
  host-device sync is counted by phase (and the top places it came from) into `DIR/rank{R}.json`.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Optional

import torch


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
        self.hook_sleep_s = float(os.environ.get("TRAINLAB_SLOW_HOOK") or 0.0)

    def in_boundary_hook(self) -> None:
        if self.hook_sleep_s:
            time.sleep(self.hook_sleep_s)

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
    h = hashlib.sha256()
    for name, tensor in state_dict.items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def planted_max_batch(rank: int) -> Optional[int]:
    """`TRAINLAB_DRILL_MAX_BATCH`: the largest batch this rank's planted memory limit lets through, or None."""
    spec = os.environ.get("TRAINLAB_DRILL_MAX_BATCH", "")
    if not spec:
        return None
    if ":" not in spec:
        return int(spec)
    limits = dict(item.split(":") for item in spec.split(","))
    return int(limits[str(rank)]) if str(rank) in limits else None


class CollectiveCounter:
    """`TRAINLAB_COUNT_COLLECTIVES=DIR`: counts the Python-level collectives of this process.

    Wraps torch.distributed's functions for the run's lifetime; `write()` saves the count. The gradient
    all-reduce inside DDP's reducer does not go through these functions, so what is counted is bookkeeping."""

    NAMES = ("all_reduce", "broadcast", "all_gather", "all_gather_object", "broadcast_object_list", "barrier")

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.out_dir = os.environ.get("TRAINLAB_COUNT_COLLECTIVES") or None
        self.counts: dict[str, int] = {}
        self.phase = "setup"  # the Run sets "train" around its training loops
        self.by_phase: dict[str, int] = {}
        self._originals: dict[str, object] = {}
        if self.out_dir and torch.distributed.is_available():
            for name in self.NAMES:
                original = getattr(torch.distributed, name)
                self._originals[name] = original
                setattr(torch.distributed, name, self._counting(name, original))

    def _counting(self, name: str, original):
        def counted(*args, **kwargs):
            self.counts[name] = self.counts.get(name, 0) + 1
            self.by_phase[self.phase] = self.by_phase.get(self.phase, 0) + 1
            return original(*args, **kwargs)

        return counted

    def write(self, optimizer_steps: int, phase_counts: Optional[dict] = None) -> None:
        for name, original in self._originals.items():
            setattr(torch.distributed, name, original)
        self._originals = {}
        if self.out_dir:
            Path(self.out_dir).mkdir(parents=True, exist_ok=True)
            record = {"counts": self.counts, "total": sum(self.counts.values()), "by_phase": self.by_phase,
                      "optimizer_steps": optimizer_steps, **(phase_counts or {})}  # fmt: skip
            (Path(self.out_dir) / f"rank{self.rank}.json").write_text(json.dumps(record))


class SyncCounter:
    """`TRAINLAB_COUNT_SYNCS=DIR`: counts host-device synchronisations (CUDA only) by phase of the run.

    torch's sync debug mode warns at every synchronising call; each warning is counted instead of shown."""

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.out_dir = os.environ.get("TRAINLAB_COUNT_SYNCS") or None
        self.phase = "setup"
        self.by_phase: Counter = Counter()
        self.places: Counter = Counter()
        self.active = bool(self.out_dir) and torch.cuda.is_available()
        if self.active:
            self._show = warnings.showwarning
            warnings.simplefilter("always", UserWarning)  # every sync, not the first per call site
            warnings.showwarning = self._count
            torch.cuda.set_sync_debug_mode("warn")

    def _count(self, message, category, filename, lineno, file=None, line=None) -> None:
        if "synchroniz" in str(message):
            self.by_phase[self.phase] += 1
            self.places[f"{Path(filename).name}:{lineno}"] += 1
        else:
            self._show(message, category, filename, lineno, file, line)

    def write(self, optimizer_steps: int, micro_batches: int) -> None:
        if self.active:
            torch.cuda.set_sync_debug_mode(0)
            warnings.showwarning = self._show
        if self.out_dir:
            Path(self.out_dir).mkdir(parents=True, exist_ok=True)
            record = {"cuda": self.active, "by_phase": dict(self.by_phase), "optimizer_steps": optimizer_steps,
                      "micro_batches": micro_batches, "top_places": self.places.most_common(20)}  # fmt: skip
            (Path(self.out_dir) / f"rank{self.rank}.json").write_text(json.dumps(record))
