"""A real S3-compatible server on the loopback for the tests: moto's server mode, in this process.

Requests go through a thin WSGI layer in front of moto's app, so a test can act at an exact moment of a real
upload: SIGKILL the uploading process while the server is reading a checkpoint's body (the object is then
never stored), or take the whole server down after a given request and bring it back later. The client is
the real s3fs/botocore stack; nothing of it is replaced.

Credentials are checked: the first requests (without authentication) make an IAM user with full access and
its access key, then moto enforces authentication, so wrong keys are refused as by AWS.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Optional


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class S3Server:
    """moto's S3 server on 127.0.0.1:<free port>, with request hooks. `env` holds what a client needs."""

    def __init__(self) -> None:
        from moto.moto_server.threaded_moto_server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log lines in the test output
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.puts: list[str] = []  # paths of completed PUT requests, in order
        self.on_put: Optional[Callable[[str, dict], Optional[str]]] = None  # may answer "kill" or "drop"
        self.after_put: Optional[Callable[[str], None]] = None
        outer = self

        class Server(ThreadedMotoServer):
            def _server_entry(self) -> None:  # moto's own entry, with the hook layer around its app
                from moto.moto_server.werkzeug_app import (
                    DomainDispatcherApplication,
                    MotoRequestHandler,
                    create_backend_app,
                )
                from werkzeug.serving import make_server

                app = outer._hooked(DomainDispatcherApplication(create_backend_app))
                self._server = make_server(self._ip_address, self._port, app, True,
                                           request_handler=MotoRequestHandler)  # fmt: skip
                self._server_ready_event.set()
                self._server.serve_forever()

        self._server_class = Server
        self._server: Any = None
        self.env: dict[str, str] = {}

    def _hooked(self, app: Callable) -> Callable:
        def wsgi(environ: dict, start_response: Callable) -> Any:
            path = environ.get("PATH_INFO", "")
            if environ.get("REQUEST_METHOD") == "PUT" and self.on_put is not None:
                action = self.on_put(path, environ)
                if action == "kill":  # the uploader dies while its body is on the wire
                    environ["wsgi.input"].read(512)
                    start_response("500 Internal Server Error", [("Content-Length", "0")])
                    return [b""]
            result = app(environ, start_response)
            if environ.get("REQUEST_METHOD") == "PUT":
                self.puts.append(path)
                if self.after_put is not None:
                    self.after_put(path)
            return result

        return wsgi

    def start(self) -> None:
        self._server = self._server_class(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def outage(self, seconds: float) -> None:
        """Take the server down now (from another thread: a request may be in flight) and back up later."""

        def run() -> None:
            time.sleep(0.05)
            self.stop()
            time.sleep(seconds)
            self.start()

        threading.Thread(target=run, daemon=True).start()

    def setup_credentials(self) -> None:
        """An IAM user with full access and its key (made before authentication is on), then auth on."""
        import boto3
        from moto import settings

        plain = {"endpoint_url": self.endpoint, "region_name": "us-east-1", "aws_access_key_id": "bootstrap",
                 "aws_secret_access_key": "bootstrap"}  # fmt: skip
        iam = boto3.client("iam", **plain)
        iam.create_user(UserName="trainlab")
        iam.put_user_policy(UserName="trainlab", PolicyName="all", PolicyDocument=(
            '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}'))
        key = iam.create_access_key(UserName="trainlab")["AccessKey"]
        boto3.client("s3", **plain).create_bucket(Bucket="runs")
        settings.INITIAL_NO_AUTH_ACTION_COUNT = 0  # from here on every request is authenticated
        self.env = {
            "AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": self.endpoint,
        }  # fmt: skip

    def filesystem(self) -> Any:
        import s3fs

        return s3fs.S3FileSystem(key=self.env["AWS_ACCESS_KEY_ID"], secret=self.env["AWS_SECRET_ACCESS_KEY"],
                                 endpoint_url=self.endpoint, skip_instance_cache=True)  # fmt: skip


def kill_on_put(pid_of: Callable[[], int], suffix: str, nth: int) -> Callable[[str, dict], Optional[str]]:
    """An `on_put` hook: SIGKILL the process `pid_of()` at the nth PUT whose path ends with `suffix`."""
    seen = {"count": 0}

    def hook(path: str, environ: dict) -> Optional[str]:
        if not path.endswith(suffix):
            return None
        seen["count"] += 1
        if seen["count"] != nth:
            return None
        os.kill(pid_of(), signal.SIGKILL)
        return "kill"

    return hook
