"""What each process of a torchrun job leaves behind for the next attempt, so that a restarted job can say
what happened: which rank died, how, and how much work is done again.

Every rank writes `RUN_DIR/.trainlab/attempts/attempt-K-rank-R.json` when it starts (pid, host) and adds how
it ended when it can (an error, a stop, the end). A rank SIGKILLed (the OOM killer, a lost machine) ends
without a word; `trainlab train ... train.nproc=N` also records the exit code torchrun's agent reports for
a failed worker (`exit-PID.json`). Rank 0 of attempt K+1 reads attempt K's files.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any, Optional

from trainlab.distributed import ATTEMPTS_FOLDER

FOLDER = Path(ATTEMPTS_FOLDER)


def attempt_number() -> int:
    """torchrun's restart count for this worker (0 outside torchrun and on the first attempt)."""
    try:
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT") or 0)
    except ValueError:
        return 0


def max_restarts() -> int:
    try:
        return int(os.environ.get("TORCHELASTIC_MAX_RESTARTS") or 0)
    except ValueError:
        return 0


def _write(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)


def _read(path: Path) -> Optional[dict]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def describe_exit(code: int) -> str:
    """'exit code 2', 'killed by SIGKILL (exit code -9)'."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name} (exit code {code})"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class AttemptRecord:
    """This process's record of the current attempt."""

    def __init__(self, run_dir: Path, rank: int) -> None:
        self.attempt = attempt_number()
        self.path = Path(run_dir) / FOLDER / f"attempt-{self.attempt}-rank-{rank}.json"
        self.record = {"rank": rank, "pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}

    def begin(self) -> None:
        try:
            _write(self.path, self.record)
        except OSError:  # a record is a courtesy: never the reason a run fails
            pass

    def end(self, how: str) -> None:
        try:
            _write(self.path, {**self.record, "ended": how, "ended_at": time.time()})
        except OSError:
            pass


def previous_attempt(run_dir: Path, attempt: int) -> list[dict[str, Any]]:
    """What the ranks of attempt `attempt - 1` left: [{rank, pid, host, ended}], ranks in order. A rank that
    left no end is one that was killed (SIGKILL, the OOM killer) or lost with its machine; the launcher's
    exit record, where there is one, says which signal or code."""
    if attempt <= 0:
        return []
    folder = Path(run_dir) / FOLDER
    ranks = []
    for path in sorted(folder.glob(f"attempt-{attempt - 1}-rank-*.json")):
        record = _read(path)
        if record is None:
            continue
        exit_record = _read(folder / f"exit-{record.get('pid')}.json")
        if exit_record is not None:
            ended = describe_exit(int(exit_record["exitcode"]))
            if "ended" in record:
                ended += f" after: {record['ended']}"
        elif "ended" in record:
            ended = str(record["ended"])
        else:
            ended = "died without a word (a signal such as SIGKILL or the OOM killer, or its machine was lost)"
        ranks.append({"rank": record.get("rank"), "pid": record.get("pid"), "host": record.get("host"),
                      "ended": ended})  # fmt: skip
    return sorted(ranks, key=lambda r: (r["rank"] is None, r["rank"]))
