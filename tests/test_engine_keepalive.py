"""The engine wrapper keeps the gateway's connections open (mlx_lm.server alone closes each).

A handler written like mlx_lm's -- bodies with a Content-Length, SSE and error bodies
without one, a 204 -- served by :func:`keep_alive` on the private Unix socket: one
connection carries request after request, each answer framed so the client finds its end.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from mlxpin.serve.uds_server import UnixHTTPServer, keep_alive


class LikeMlxLm(BaseHTTPRequestHandler):
    """Writes the way mlx_lm.server's APIHandler does (HTTP/1.0 unless wrapped)."""

    connections = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        LikeMlxLm.connections += 1
        self.created = 1000  # mlx_lm stamps this once per handler, i.e. per connection
        super().__init__(*args, **kwargs)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        if self.path in ("/json", "/sse"):  # like mlx_lm, a 404 leaves the body unread
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path == "/json":
            body = json.dumps({"created": self.created}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/sse":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for event in (b'data: {"n": 1}\n\n', b"", b'data: {"n": 2}\n\n', b"data: [DONE]\n\n"):
                self.wfile.write(event)
                self.wfile.flush()
        else:
            self.send_response(404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"Not Found")

    def do_OPTIONS(self) -> None:
        self.send_response(204)
        self.end_headers()


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[str]:
    LikeMlxLm.connections = 0
    path = str(tmp_path / "server.sock")
    server = UnixHTTPServer(path, keep_alive(LikeMlxLm))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        server.shutdown()
        server.server_close()


def ask(conn: http.client.HTTPConnection, method: str, path: str) -> tuple[int, bytes, str]:
    conn.request(method, path, b"{}" if method == "POST" else None)
    response = conn.getresponse()
    return response.status, response.read(), response.getheader("Transfer-Encoding", "")


def test_one_connection_carries_streams_errors_and_plain_answers(engine: str) -> None:
    conn = UnixConnection(engine)
    status, body, framing = ask(conn, "POST", "/sse")
    assert (status, framing) == (200, "chunked")
    assert body == b'data: {"n": 1}\n\ndata: {"n": 2}\n\ndata: [DONE]\n\n'
    assert ask(conn, "OPTIONS", "/json") == (204, b"", "")
    first = json.loads(ask(conn, "POST", "/json")[1])["created"]
    time.sleep(1.1)  # `created` counts whole seconds
    second = json.loads(ask(conn, "POST", "/json")[1])["created"]
    assert LikeMlxLm.connections == 1  # one handler served all four
    assert first < second  # stamped per request, not once per connection
    conn.close()


def test_an_answer_that_left_the_body_unread_closes_the_connection(engine: str) -> None:
    """Else the body would be read as the next request (mlx_lm's 404 does not read it)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(engine)
        sock.sendall(b'POST /nowhere HTTP/1.1\r\nContent-Length: 14\r\n\r\n{"model": "x"}')
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert (response.status, response.read()) == (404, b"Not Found")
        assert response.getheader("Connection") == "close"
        assert sock.recv(1) == b""  # closed: the body was never taken for a request
    assert ask(UnixConnection(engine), "POST", "/json")[0] == 200
    assert LikeMlxLm.connections == 2


def read_to_the_end(engine: str, request: bytes) -> tuple[bytes, bytes]:
    """The answer's head and body, read until the server closes the connection."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(engine)
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return head, body


def test_a_client_that_closes_gets_an_answer_ended_by_the_close(engine: str) -> None:
    head, body = read_to_the_end(engine, b"POST /sse HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"chunked" not in head.lower()  # HTTP/1.0: the close ends it
    assert body.endswith(b"data: [DONE]\n\n")
    request = b"POST /sse HTTP/1.1\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}"
    head, body = read_to_the_end(engine, request)
    assert b"chunked" not in head.lower()
    assert body.endswith(b"data: [DONE]\n\n")
