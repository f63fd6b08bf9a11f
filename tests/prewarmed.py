"""`trainlab` and user scripts as real processes, without paying a Python start and a torch import each.

On these CPUs a `python -m trainlab train` spends ~5 s of a tiny run importing torch and torch._dynamo (which
torch.optim imports at the first optimizer). `run` forks each process instead from a template process that has
imported them once (`serve`, one per test worker, forking on request): the child is still a process of its own,
with its own pid, signals, exit code, stdout and stderr, files and memory, so a drill that signals or kills the
process (tests/drills.py SelfSignal) does to it what it does to `python -m trainlab`. What it does not have is
a fresh interpreter: tests of the console script itself, of a signal sent from outside to a process group, or of
the environment read at torch's import use `subprocess` as before.

`run(cmd, ...)` takes the command lists the tests build (`[sys.executable, "-m", "trainlab", ...]` or
`[sys.executable, "script.py", ...]`) and returns a `subprocess.CompletedProcess` with text output; any other
command goes to `subprocess.run`.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Optional

# What a trainlab process imports before it trains: the template imports it once.
PRELOAD = ["torch", "torch._dynamo", "torch.distributed", "torchvision", "numpy", "PIL.Image",
           "trainlab.commands.cli", "trainlab.commands.fit", "trainlab.train.run", "trainlab.doctor", "tests.drills"]  # fmt: skip


def _child(argv: list[str], cwd: str, env: dict[str, str], out: str, err: str) -> int:
    """In the forked process: become `python ARGV...` run in `cwd` with `env`, its output in two files."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    devnull = os.open(os.devnull, os.O_RDONLY)  # stdin=DEVNULL, as the tests' subprocess runs have it
    os.dup2(devnull, 0)
    os.close(devnull)
    for fd, path in ((1, out), (2, err)):
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(handle, fd)
        os.close(handle)
    sys.stdin = open(0, closefd=False)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # line-buffered, as with PYTHONUNBUFFERED
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    extra = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]
    code: object = 0
    try:
        if argv[:2] == ["-m", "trainlab"]:
            sys.argv = ["trainlab", *argv[2:]]
            sys.path[:0] = [cwd, *extra]  # what `python -m` puts first
            from trainlab.commands.cli import entry

            entry()
        else:
            import runpy

            script = str(Path(cwd, argv[0]))
            sys.argv = list(argv)
            sys.path[:0] = [str(Path(script).parent), *extra]
            runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        code = exc.code
    except BaseException:  # what the interpreter prints, then exit 1
        import traceback

        traceback.print_exc()
        code = 1
    try:
        threading._shutdown()  # what the interpreter does at exit: wait for non-daemon threads, then the hooks
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def serve() -> None:
    """The template: import PRELOAD, then per request line (JSON: argv, cwd, env, out, err) fork a child, answer
    its pid, wait for it and answer its exit status (negative: the signal that ended it)."""
    for name in PRELOAD:
        __import__(name)
    requests, answers = sys.stdin, sys.stdout
    for line in requests:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 1
            try:
                code = _child(**request)
            finally:
                os._exit(code)
        answers.write(f"{pid}\n")
        answers.flush()
        _, status = os.waitpid(pid, 0)
        answers.write(f"{os.waitstatus_to_exitcode(status)}\n")
        answers.flush()


_server: Optional[subprocess.Popen] = None


def _template() -> subprocess.Popen:
    global _server
    if _server is None or _server.poll() is not None:
        code = "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); from tests.prewarmed import serve; serve()"
        _server = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   text=True, bufsize=1, cwd=Path(__file__).resolve().parents[1])  # fmt: skip
        atexit.register(_server.kill)
    return _server


def run(cmd: list[str], cwd: str | Path | None = None, env: dict[str, str] | None = None,
        timeout: float | None = None, **kwargs) -> subprocess.CompletedProcess:  # fmt: skip
    """Like `subprocess.run(cmd, cwd=..., env=..., capture_output=True, text=True, timeout=...)`."""
    kwargs.pop("capture_output", None)
    kwargs.pop("text", None)
    ours = len(cmd) >= 2 and cmd[0] == sys.executable and (cmd[1:3] == ["-m", "trainlab"] or str(cmd[1]).endswith(".py"))
    if not ours or kwargs:
        return subprocess.run(cmd, cwd=cwd, env=env, timeout=timeout, capture_output=True, text=True, **kwargs)
    server = _template()
    where = str(Path(cwd or os.getcwd()).resolve())
    with tempfile.TemporaryDirectory(prefix="prewarmed-") as folder:
        out, err = os.path.join(folder, "stdout"), os.path.join(folder, "stderr")
        request = {"argv": [str(a) for a in cmd[1:]], "cwd": where, "env": dict(os.environ if env is None else env),
                   "out": out, "err": err}  # fmt: skip
        server.stdin.write(json.dumps(request) + "\n")
        server.stdin.flush()
        pid = int(server.stdout.readline())
        timer = threading.Timer(timeout, os.kill, (pid, signal.SIGKILL)) if timeout else None
        if timer:
            timer.start()
        answer = server.stdout.readline()
        expired = timer is not None and not timer.is_alive()  # before cancel(): it ended because it fired
        if timer:
            timer.cancel()
        if not answer:
            raise RuntimeError("the prewarmed template process ended")
        stdout, stderr = Path(out).read_text(), Path(err).read_text()
        if expired and int(answer) == -signal.SIGKILL:
            raise subprocess.TimeoutExpired(cmd, timeout, stdout, stderr)
        return subprocess.CompletedProcess(cmd, int(answer), stdout, stderr)
