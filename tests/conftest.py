"""Shared fixture: a local HTTP server with switches that simulate unreliable mirrors."""
from __future__ import annotations

import contextlib
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest


@dataclass
class Request:
    method: str
    path: str
    headers: dict
    status: int


@dataclass
class LocalServer:
    """State and switches of the :func:`http_server` fixture.

    root: directory served (put files there). Switches (change at any time):
    ``cut_after``: on the first GET, send only this many body bytes, then drop the connection;
    ``fail_first``: answer the first K GETs with 503;
    ``ignore_range``: answer Range requests with the whole file (200).
    ``requests`` logs every request (method, path, headers, status).
    """

    root: Path
    port: int = 0
    cut_after: int | None = None
    fail_first: int = 0
    ignore_range: bool = False
    requests: list = field(default_factory=list)
    _gets: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, name: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    @property
    def range_requests(self) -> list:
        return [r for r in self.requests if "Range" in r.headers]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kboost-test/1"

    def log_message(self, *args):  # keep test output quiet
        pass

    @property
    def state(self) -> LocalServer:
        return self.server.state  # type: ignore[attr-defined]

    def _log(self, status: int) -> None:
        with self.state._lock:
            self.state.requests.append(Request(self.command, self.path, dict(self.headers), status))

    def _simple(self, status: int, extra: dict | None = None) -> None:
        self._log(status)
        self.send_response(status)
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_HEAD(self):
        self._serve(body=False)

    def do_GET(self):
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        state = self.state
        with state._lock:
            if body:
                state._gets += 1
            number = state._gets
        if body and number <= state.fail_first:
            self._simple(503, {"Retry-After": "0"})
            return
        rel = self.path.split("?", 1)[0].lstrip("/")
        path = (state.root / rel).resolve()
        if not rel or not path.is_file() or state.root.resolve() not in path.parents:
            self._simple(404)
            return
        data = path.read_bytes()
        size = len(data)
        start, status = 0, 200
        header = self.headers.get("Range")
        if header and not state.ignore_range:
            match = re.fullmatch(r"bytes=(\d+)-", header.strip())
            if match:
                start = int(match.group(1))
                if start >= size:
                    self._simple(416, {"Content-Range": f"bytes */{size}"})
                    return
                status = 206
        payload = data[start:]
        self._log(status)
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(payload)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.end_headers()
        if not body:
            return
        if number == 1 and state.cut_after is not None:
            self.wfile.write(payload[: state.cut_after])
            self.wfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self.wfile.write(payload)


@contextlib.contextmanager
def serve(handler, state):
    """Run ``handler`` on 127.0.0.1 (random port, stored in ``state.port``) from a thread; the
    handler reaches ``state`` as ``self.server.state``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.state = state  # type: ignore[attr-defined]
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def http_server(tmp_path_factory):
    """Serve a fresh directory on 127.0.0.1 (random port) from a thread; yields LocalServer."""
    with serve(_Handler, LocalServer(root=tmp_path_factory.mktemp("served"))) as state:
        yield state
