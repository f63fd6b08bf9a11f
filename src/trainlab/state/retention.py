"""Which checkpoints a run dir keeps: last.pt, the top-k best by a metric, the newest periodic ones;
and which of them a resume can use (the newest that verifies)."""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from trainlab.state.checkpoint import CheckpointError, UnsafeCheckpointError, load_checked, save_atomic

_PERIODIC_RE = re.compile(r"^periodic-step=(\d+)\.pt$")
WEIGHT_TAGS = ("ema", "raw")  # a best file's name may say which weights scored: epoch=03-ema-val_acc1=25.00.pt
BEST_TAG_RE = re.compile(rf"^epoch=\d+-({'|'.join(WEIGHT_TAGS)})-")


class CheckpointManager:
    """Names, writes and prunes the checkpoints of one run directory.

    ``last.pt`` (overwritten), ``periodic-step=NNNNNNN.pt`` (newest ``keep_periodic`` kept) and
    ``epoch=NN-<metric>=XX.XX.pt`` (best ``save_top_k``; 0 keeps none, a negative number keeps all), named
    ``epoch=NN-ema-<metric>=XX.XX.pt`` when the EMA weights made the score (files before issue 26 had no
    tag whichever weights scored; they are read as before).
    The top-k list is rebuilt from the file names, so a resumed run keeps pruning correctly.
    """

    def __init__(
        self,
        directory: str | Path,
        save_top_k: int = 1,
        keep_periodic: int = 2,
        metric: str = "val_acc1",
        mode: str = "max",
        trusted: bool = False,
    ) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', not {mode!r}")
        self.directory = Path(directory)
        self.save_top_k = save_top_k
        self.keep_periodic = keep_periodic
        self.metric = metric
        self.mode = mode
        self.trusted = trusted  # run.trust_checkpoint: allow a full unpickle of these files
        # A file the object store does not have yet is not deleted here (remote.RunStore.holds); a later
        # prune, after its upload, removes it.
        self.hold: Callable[[Path], bool] = lambda path: False
        self.skipped: list[tuple[Path, str]] = []
        self._best_re = re.compile(rf"^epoch=(\d+)-(?:(?:{'|'.join(WEIGHT_TAGS)})-)?{re.escape(metric)}=(.+)\.pt$")
        self._best: list[tuple[float, int, Path]] = []
        if self.directory.is_dir():
            self._remove_stale_temp_files()
            for path in self.directory.iterdir():
                match = self._best_re.match(path.name)
                if match:
                    try:
                        self._best.append((float(match.group(2)), int(match.group(1)), path))
                    except ValueError:
                        continue
            self._best.sort(key=self._rank_key)

    @property
    def last_path(self) -> Path:
        return self.directory / "last.pt"

    def _remove_stale_temp_files(self) -> None:
        # A SIGKILL during a save leaves .<name>.tmp-<pid>; remove those whose writer is gone.
        for path in self.directory.glob(".*.tmp-*"):
            pid_text = path.name.rsplit("-", 1)[-1]
            if not pid_text.isdigit() or int(pid_text) == os.getpid():
                continue
            try:
                os.kill(int(pid_text), 0)
                continue  # still running (another process) -- leave it alone
            except ProcessLookupError:
                pass
            except (PermissionError, OSError):
                continue
            with contextlib.suppress(OSError):
                path.unlink()

    def save_last(self, state: dict) -> Path:
        save_atomic(state, self.last_path)
        return self.last_path

    def periodic_files(self) -> list[tuple[int, Path]]:
        """(step, path) of the periodic checkpoints on disk, oldest first."""
        if not self.directory.is_dir():
            return []
        found = []
        for path in self.directory.iterdir():
            match = _PERIODIC_RE.match(path.name)
            if match:
                found.append((int(match.group(1)), path))
        return sorted(found)

    def periodic_path(self, global_step: int) -> Path:
        return self.directory / f"periodic-step={global_step:07d}.pt"

    def save_periodic(self, state: dict, global_step: int) -> Path:
        path = self.periodic_path(global_step)
        save_atomic(state, path)
        self.prune_periodic()
        return path

    def prune_periodic(self) -> None:
        keep = max(self.keep_periodic, 1)  # never delete the file just written
        for _, old in self.periodic_files()[:-keep]:
            self._remove(old)

    def _remove(self, path: Path) -> None:
        if self.hold(path):
            return
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    def _rank_key(self, entry: tuple[float, int, Path]) -> tuple[float, int]:
        value, epoch, _ = entry
        if math.isnan(value):
            return (math.inf, epoch)
        return (-value if self.mode == "max" else value, epoch)  # ties: the earlier epoch ranks higher

    def best_filename(self, epoch: int, value: float, weights: str = "raw") -> str:
        tag = "" if weights == "raw" else f"{weights}-"
        return f"epoch={epoch:02d}-{tag}{self.metric}={value:.2f}.pt"

    def _best_candidate(self, epoch: int, value: float, weights: str = "raw") -> tuple[tuple[float, int, Path], list] | None:
        if self.save_top_k == 0 or math.isnan(value):
            return None
        # The same epoch re-evaluated after a resume replaces its previous entry.
        others = [entry for entry in self._best if entry[1] != epoch]
        candidate = (float(value), int(epoch), self.directory / self.best_filename(epoch, value, weights))
        ranked = sorted([*others, candidate], key=self._rank_key)
        kept = ranked if self.save_top_k < 0 else ranked[: self.save_top_k]
        return (candidate, kept) if candidate in kept else None

    def _keep_best(self, kept: list) -> None:
        kept_paths = {entry[2] for entry in kept}
        for entry in self._best:
            if entry[2] not in kept_paths:
                self._remove(entry[2])
        self._best = kept

    def save_best(self, state: dict, epoch: int, value: float, weights: str = "raw") -> Path | None:
        """Write ``state`` as a top-k checkpoint if ``value`` ranks in the top ``save_top_k``."""
        found = self._best_candidate(epoch, value, weights)
        if found is None:
            return None
        candidate, kept = found
        save_atomic(state, candidate[2])
        self._keep_best(kept)
        return candidate[2]

    def add_best(self, written: Path, epoch: int, value: float, weights: str = "raw") -> Path | None:
        """Keep the checkpoint just written at ``written`` (last.pt) as a top-k one too, if ``value`` ranks:
        a hard link to the same file (a copy where links are not possible), so an epoch end serialises the
        state once. last.pt is later replaced by a rename, which leaves the link's content as it is.
        ``weights`` ("raw" or "ema"): which weights made the score; the name says it."""
        found = self._best_candidate(epoch, value, weights)
        if found is None:
            return None
        candidate, kept = found
        target = candidate[2]
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        try:
            try:
                os.link(written, tmp)
            except OSError:  # a file system without hard links
                shutil.copyfile(written, tmp)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise  # a best of the same epoch re-evaluated after a resume is replaced whole
        self._keep_best(kept)
        return target

    def best(self) -> list[tuple[float, int, Path]]:
        """The current top-k as (value, epoch, path), best first."""
        return list(self._best)

    def resumable(self) -> tuple[Path, dict] | None:
        """The newest good checkpoint among last.pt and periodic-*.pt (by state['global_step'], tie ->
        last.pt), each verified; corrupt ones are listed in ``self.skipped`` and passed over. When none
        of those is good, the top-k files are tried as a last resort. None when nothing is usable."""
        self.skipped = []
        best_found: tuple[Path, dict] | None = None

        def try_load(path: Path) -> dict | None:
            try:
                return load_checked(path, require_checksum=True, trusted=self.trusted)
            except UnsafeCheckpointError:
                raise  # not damage: passing it over would quietly start from an older state
            except CheckpointError as exc:
                self.skipped.append((path, str(exc)))
                return None

        if self.last_path.is_file():
            state = try_load(self.last_path)
            if state is not None:
                best_found = (self.last_path, state)
        last_step = int(best_found[1].get("global_step", -1)) if best_found else -1
        # Newest periodic first; only those strictly newer than last.pt can win.
        for step, path in reversed(self.periodic_files()):
            if best_found is not None and step <= last_step:
                break
            state = try_load(path)
            if state is None:
                continue
            if int(state.get("global_step", step)) > last_step:
                best_found = (path, state)
            break
        if best_found is None:
            for _, _, path in sorted(self._best, key=lambda e: -e[1]):  # newest epoch first
                if path.is_file():
                    state = try_load(path)
                    if state is not None:
                        return path, state
        return best_found


