"""A moto S3 server of its own whose request log a test reads: honest evidence of which
objects the product downloaded (moto logs every request line, the product cannot hide one)."""
from __future__ import annotations

import dataclasses
import re
import secrets
import subprocess
import time
from pathlib import Path

import requests

from .conftest import VENV_BIN, free_port

REQUEST = re.compile(r'"(?:\x1b\[[0-9;]*m)*(GET|PUT|HEAD|POST|DELETE) (/[^ "\x1b]*) HTTP/1\.1')  # werkzeug colours errors


class RequestLog:
    def __init__(self, path: Path, endpoint: str):
        self.path = path
        self.endpoint = endpoint
        self.offset = 0

    def _lines(self) -> list[tuple[str, str]]:
        text = self.path.read_text(errors="replace")
        return REQUEST.findall(text)

    def mark(self) -> None:
        """Forget what was logged so far."""
        self.settle()
        self.offset = len(self._lines())

    def settle(self) -> None:
        """Wait until every request made so far is in the log: a sentinel request sent after
        them must appear (polled, with a deadline)."""
        sentinel = f"/sentinel-{secrets.token_hex(6)}"
        requests.get(self.endpoint + sentinel, timeout=10)
        deadline = time.monotonic() + 30
        while not any(path == sentinel for _, path in self._lines()):
            assert time.monotonic() < deadline, "moto never logged the sentinel request"
            time.sleep(0.05)

    def object_gets(self, bucket: str) -> list[str]:
        """Keys of `bucket` read with GetObject (no query string) since the last mark."""
        self.settle()
        prefix = f"/{bucket}/"
        return [path[len(prefix):] for method, path in self._lines()[self.offset:]
                if method == "GET" and path.startswith(prefix) and "?" not in path]


def logged_server(settings, tmp_path_factory):
    """Generator for a fixture: (settings pointing at a logged moto server, its RequestLog)."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("moto-log") / "requests.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(endpoint, timeout=1)
                break
            except requests.RequestException:
                assert time.monotonic() < deadline, "moto_server did not start"
                time.sleep(0.2)
        yield dataclasses.replace(settings, s3_endpoint=endpoint), RequestLog(log_path, endpoint)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
