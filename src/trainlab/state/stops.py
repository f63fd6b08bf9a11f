"""Stop signals (SIGTERM, SIGINT, SIGUSR1) and the clouds' preemption notices turned into a flag the loop
checks, so a run saves and exits 143."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

from trainlab.errors import ConfigError


def _default_signals() -> tuple[int, ...]:
    names = ("SIGTERM", "SIGINT", "SIGUSR1")  # SIGUSR1 is absent on Windows
    return tuple(getattr(signal, name) for name in names if hasattr(signal, name))


class PreemptionGuard:
    """Turns stop signals into a flag the training loop checks at step boundaries.

    The first signal sets ``requested`` and records ``signal_name``; later ones never raise (they
    are counted in ``extra_signals``), so a save in progress is never interrupted. Previous handlers
    are restored on exit. Off the main thread Python cannot install handlers: the guard is then a
    no-op and says so in ``note``.
    """

    def __init__(self, signals: tuple[int, ...] | None = None) -> None:
        self.signals = tuple(signals) if signals is not None else _default_signals()
        self.requested = False
        self.signal_name: str | None = None
        self.extra_signals = 0
        self.note: str | None = None
        self._saving_depth = 0
        self._previous: dict[int, Any] = {}

    @property
    def is_saving(self) -> bool:
        return self._saving_depth > 0

    def _handle(self, signum: int, frame: Any) -> None:
        if not self.requested:
            self.requested = True
            self.signal_name = signal.Signals(signum).name
        else:
            # While saving this keeps the save intact; otherwise the flag is already set and the
            # loop will stop at the next step boundary anyway.
            self.extra_signals += 1

    def request(self, signal_name: str) -> None:
        """Set the flag as if a signal had arrived (e.g. a stop agreed across DDP ranks)."""
        if not self.requested:
            self.requested = True
            self.signal_name = signal_name

    def __enter__(self) -> PreemptionGuard:
        if threading.current_thread() is not threading.main_thread():
            self.note = "stop signals are not handled: the training loop is not on the main thread"
            return self
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            # Only our own handler is taken back: one installed meanwhile (the CLI ignores stop signals once
            # its run has finished) stays, or a SIGTERM between "done" and the exit would kill a finished run.
            if signal.getsignal(signum) == self._handle:
                signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    @contextlib.contextmanager
    def saving(self) -> Iterator[None]:
        """Marks a save in progress (signals arriving now are absorbed)."""
        self._saving_depth += 1
        try:
            yield
        finally:
            self._saving_depth -= 1


# ---------------------------------------------------------------------------------------------
# preemption notices from the instance metadata endpoint

_AWS_DEFAULT = "http://169.254.169.254"
_GCP_DEFAULT = "metadata.google.internal"


def notice_endpoint(spec: str) -> tuple[str, str]:
    """(kind, URL polled) for run.preemption_notice: aws, gcp or an http(s) URL.

    aws: IMDSv2 (a token from PUT /latest/api/token, then GET /latest/meta-data/spot/instance-action: 404 until
    the two-minute notice), at AWS_EC2_METADATA_SERVICE_ENDPOINT when set (the variable boto uses).
    gcp: GET /computeMetadata/v1/instance/preempted with Metadata-Flavor: Google (TRUE once preempted), at
    GCE_METADATA_HOST when set (the variable Google's client libraries use).
    URL: any endpoint that answers 200 with a body other than empty or FALSE when a stop is due."""
    text = (spec or "").strip()
    if text.lower() == "aws":
        base = os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or _AWS_DEFAULT
        return "aws", base.rstrip("/") + "/latest/meta-data/spot/instance-action"
    if text.lower() == "gcp":
        host = os.environ.get("GCE_METADATA_HOST") or _GCP_DEFAULT
        base = host if "://" in host else f"http://{host}"
        return "gcp", base.rstrip("/") + "/computeMetadata/v1/instance/preempted"
    if text.startswith(("http://", "https://")):
        return "url", text
    raise ConfigError(f"run.preemption_notice={spec!r} is not valid; choose aws, gcp or an http(s):// URL")


# The instance's metadata endpoint is reached directly: no proxy can reach a link-local address, and urlopen's
# shared opener keeps whatever proxy variables the process had at its first request.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class PreemptionNotice:
    """Polls the cloud's notice endpoint from a daemon thread every `poll_s` seconds (a request or two each
    time, nothing on the training path). On a notice it calls `on_notice(description)` once and stops."""

    def __init__(self, spec: str, poll_s: float, on_notice: Callable[[str], None],
                 on_problem: Callable[[str], None] = lambda message: None, timeout_s: float = 2.0) -> None:  # fmt: skip
        self.kind, self.url = notice_endpoint(spec)
        self.poll_s = float(poll_s)
        self.timeout_s = timeout_s
        self.on_notice = on_notice
        self.on_problem = on_problem
        self.noticed: str | None = None
        self.polls = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned = False

    def describe(self) -> str:
        return f"watching for preemption notices: {self.kind} ({self.url}, every {self.poll_s:g} s)"

    def _request(self, url: str, method: str = "GET", headers: dict | None = None) -> tuple[int, str]:
        request = urllib.request.Request(url, method=method, headers=headers or {})
        try:
            with _DIRECT.open(request, timeout=self.timeout_s) as response:
                return response.status, response.read(4096).decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.code, ""

    def check(self) -> str | None:
        """One poll: the notice's description, or None. Network errors raise OSError."""
        self.polls += 1
        if self.kind == "aws":
            base = self.url.split("/latest/", 1)[0]
            headers = {}
            status, token = self._request(base + "/latest/api/token", "PUT",
                                          {"X-aws-ec2-metadata-token-ttl-seconds": "300"})  # fmt: skip
            if status == 200 and token:
                headers["X-aws-ec2-metadata-token"] = token
            status, body = self._request(self.url, headers=headers)
            if status == 200 and body.strip():
                try:
                    action = json.loads(body)
                    return f"AWS spot {action.get('action', 'interruption')} at {action.get('time', 'soon')}"
                except ValueError:
                    return f"AWS spot interruption ({body.strip()[:80]})"
            return None
        if self.kind == "gcp":
            status, body = self._request(self.url, headers={"Metadata-Flavor": "Google"})
            return "GCP preemption" if status == 200 and body.strip().upper() == "TRUE" else None
        status, body = self._request(self.url)
        if status == 200 and body.strip() and body.strip().lower() != "false":
            return f"notice from {self.url} ({body.strip().splitlines()[0][:80]})"
        return None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                found = self.check()
            except (OSError, ValueError) as exc:  # not on that cloud, or the endpoint is down: keep polling
                found = None
                if not self._warned:
                    self._warned = True
                    self.on_problem(f"run.preemption_notice={self.kind}: {self.url} does not answer "
                                    f"({getattr(exc, 'reason', exc)}); polling goes on")  # fmt: skip
            if found:
                self.noticed = found
                self.on_notice(found)
                return
            self._stop.wait(self.poll_s)

    def start(self) -> PreemptionNotice:
        self._thread = threading.Thread(target=self._run, name="trainlab-preemption-notice", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
