"""Preemption notices: a local HTTP server on the loopback plays the instance metadata endpoint (AWS IMDSv2,
GCP's metadata server), reached through the variables the clouds' own libraries read
(AWS_EC2_METADATA_SERVICE_ENDPOINT, GCE_METADATA_HOST). It starts announcing a termination mid-run; the run
stops at an agreed step with exit 143 and a complete checkpoint, and the same command continues it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests import prewarmed
from tests.conftest import TINY, read_metrics
from tests.drills import callback
from trainlab.errors import ConfigError
from trainlab.state.checkpoint import load_checked
from trainlab.state.stops import PreemptionNotice

SRC = str(Path(__file__).resolve().parents[1] / "src")
TOKEN = "imds-token-123"


class Metadata:
    """The metadata endpoint: 404 / FALSE until `announce` is set; records the requests it saw."""

    def __init__(self) -> None:
        self.announce = False
        self.seen: list[tuple[str, str, dict]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _answer(self, code: int, body: str = "") -> None:
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self) -> None:
                outer.seen.append(("PUT", self.path, dict(self.headers)))
                if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                    self._answer(200, TOKEN)
                else:
                    self._answer(400)

            def do_GET(self) -> None:
                outer.seen.append(("GET", self.path, dict(self.headers)))
                if self.path == "/latest/meta-data/spot/instance-action":
                    if self.headers.get("X-aws-ec2-metadata-token") != TOKEN:
                        self._answer(401)
                    elif outer.announce:
                        self._answer(200, json.dumps({"action": "terminate", "time": "2026-12-03T14:20:00Z"}))
                    else:
                        self._answer(404)
                elif self.path == "/computeMetadata/v1/instance/preempted":
                    if self.headers.get("Metadata-Flavor") != "Google":
                        self._answer(403)
                    else:
                        self._answer(200, "TRUE" if outer.announce else "FALSE")
                elif self.path == "/stop-now":
                    self._answer(200, "yes, stop" if outer.announce else "")
                else:
                    self._answer(404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Metadata:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_the_three_notice_kinds_against_the_endpoint(monkeypatch):
    # A proxy in the environment (a closed local port: refused at once) is not used for the instance's own
    # metadata endpoint, which no proxy can reach.
    for var in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    with Metadata() as meta:
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", meta.endpoint)
        monkeypatch.setenv("GCE_METADATA_HOST", meta.endpoint.removeprefix("http://"))
        notices = [PreemptionNotice(spec, 1.0, on_notice=print) for spec in ("aws", "gcp", meta.endpoint + "/stop-now")]
        assert [n.check() for n in notices] == [None, None, None]
        meta.announce = True
        assert [n.check() for n in notices] == ["AWS spot terminate at 2026-12-03T14:20:00Z", "GCP preemption",
                                                f"notice from {meta.endpoint}/stop-now (yes, stop)"]  # fmt: skip
    with pytest.raises(ConfigError, match="run.preemption_notice='azure' is not valid; choose aws, gcp"):
        PreemptionNotice("azure", 1.0, on_notice=print)


@pytest.mark.slow
def test_a_notice_mid_run_stops_at_an_agreed_step_and_the_run_resumes(tmp_path):
    run_dir = tmp_path / "run"
    args = [*TINY, "run.progress=none", "watch.print_every=2", f"run.dir={run_dir}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINLAB_")}
    env.update(PYTHONPATH=SRC + os.pathsep + env.get("PYTHONPATH", ""), PYTHONUNBUFFERED="1")
    with Metadata() as meta:
        noticed = dict(env, AWS_EC2_METADATA_SERVICE_ENDPOINT=meta.endpoint)
        slow = callback("SlowHook", seconds=0.05)  # 50 ms per step: the run lasts past a few polls
        proc = subprocess.Popen([sys.executable, "-m", "trainlab", "train", *args, "run.preemption_notice=aws",
                                 "run.preemption_poll_s=0.2", slow], env=noticed, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if (run_dir / "steps.jsonl").exists():  # training is under way: the cloud announces the end
                meta.announce = True
                break
            time.sleep(0.02)
        out, err = proc.communicate(timeout=120)
        gets = [{k.lower(): v for k, v in headers.items()} for method, path, headers in meta.seen
                if path.endswith("instance-action")]  # fmt: skip
    assert proc.returncode == 143, err[-3000:]
    assert f"watching for preemption notices: aws ({meta.endpoint}/latest/meta-data/spot/instance-action, " \
           "every 0.2 s)" in out
    assert "stopped by a preemption notice (AWS spot terminate at 2026-12-03T14:20:00Z)" in err
    assert gets and all(h.get("x-aws-ec2-metadata-token") == TOKEN for h in gets)  # IMDSv2: a token each time
    state = load_checked(run_dir / "checkpoints" / "last.pt", require_checksum=True)
    assert state["phase"] == "train" and 2 <= state["global_step"] < 20  # stopped mid-run, at a step
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in events].count("preemption_notice") == 1
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "stopped"

    again = prewarmed.run([sys.executable, "-m", "trainlab", "train", *args], env=env, capture_output=True,
                           text=True, timeout=240)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"step {state['global_step']})" in again.stdout and "resuming from" in again.stdout
    assert len(read_metrics(run_dir)) == 2
