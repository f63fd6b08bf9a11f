"""Running `trainlab` on bad input and checking the promise: exit 2, at most two lines on stderr, no
traceback, nothing new on disk.

`run_in_process` calls `trainlab.commands.cli.main(argv)`, the function the console script calls, so a case costs
milliseconds instead of a Python start and a torch import; `run_subprocess` is the real thing, used for a
representative case per command.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from trainlab.commands import cli

# Tiny enough that a bad value the checks miss trains for a second and fails the test on its exit code
# instead of stalling it.
TINY_RUN = [
    "data.name=shapes", "data.train_size=32", "data.val_size=16", "data.img_size=16", "data.batch_size=16",
    "model.name=resnet8", "train.epochs=1", "run.tensorboard=false", "train.threads=1", "run.progress=none",
]  # fmt: skip


@dataclass
class Result:
    returncode: int
    stderr: str
    stdout: str


def run_in_process(argv: list[str], cwd: Path) -> Result:
    err, out = io.StringIO(), io.StringIO()
    old = Path.cwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = cli.main(argv)  # an exception escaping main() is a traceback: it fails the test as one
    finally:
        os.chdir(old)
    return Result(code, err.getvalue(), out.getvalue())


def run_subprocess(argv: list[str], cwd: Path, timeout: float = 120) -> Result:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "trainlab", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)  # fmt: skip
    return Result(proc.returncode, proc.stderr, proc.stdout)


def tree(*roots: Path) -> set[str]:
    """Every path under the roots, with its kind: what the 'no new files' check compares."""
    found = set()
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames:
                found.add(f"d {Path(dirpath, name)}")
            for name in filenames:
                found.add(f"f {Path(dirpath, name)}")
    return found


def assert_bad_input(result: Result, before: set[str], after: set[str], *, says: str = "") -> None:
    """The promise for bad input. `says`: a fragment the one line must contain (case-insensitive)."""
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    context = f"exit {result.returncode}, stderr:\n{result.stderr}\nstdout:\n{result.stdout[-2000:]}"
    assert "Traceback" not in result.stderr, context
    assert result.returncode == 2, context
    assert 1 <= len(lines) <= 2, context
    if says:
        assert says.lower() in result.stderr.lower(), context
    new = sorted(after - before)
    assert not new, f"left behind: {new[:5]}; {context}"
