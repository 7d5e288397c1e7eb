"""``python -m mlxpin.serve.uds_server --unix-socket PATH [mlx_lm.server options]``

Runs the pinned ``mlx_lm.server`` unchanged -- its own argument parser, model provider,
request handler and generation thread -- except that it listens on a Unix-domain socket
instead of a TCP port. The socket lives in a 0700 directory mlxpin created, and is
itself 0600: only processes of the same user can connect, none can reach it over the
network or a loopback port (issue 8 item 4: the private port bypassed the gateway's key
and label checks).

mlx_lm.server's ``run()`` accepts a ``server_class`` but does not pass it on; its TCP
listener is the module function ``_run_http_server``, which this replaces with one that
serves the same handler on the socket, and keeps each connection open for the gateway's
next request (:func:`keep_alive`). Nothing else of mlx_lm is touched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import socketserver
import stat
import sys
import time
from http.server import BaseHTTPRequestHandler
from typing import Any, BinaryIO, cast

__all__ = ["UnixHTTPServer", "bind_private_socket", "keep_alive", "main", "split_socket"]


class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """``ThreadingHTTPServer``, on a Unix socket."""

    daemon_threads = True
    allow_reuse_address = False
    # Python's default backlog is 5, and a connect to a full Unix socket is refused at
    # once: while generation holds the GIL, the accept loop falls behind a burst of
    # clients. The gateway sends at most MLXPIN_ENGINE_SLOTS at once; the kernel clips
    # this to its somaxconn (4096 on Linux, 128 on macOS).
    request_queue_size = 4096

    def server_bind(self) -> None:
        path = str(self.server_address)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)  # left by a server killed before (the directory is ours)
        old = os.umask(0o177)  # the socket file is created 0600
        try:
            super().server_bind()
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        # What BaseHTTPRequestHandler reads from an HTTPServer.
        self.server_name = "localhost"
        self.server_port = 0

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, _ = self.socket.accept()
        return conn, ("unix", 0)  # handlers log client_address[0]


def bind_private_socket(path: str) -> socket.socket:
    """A listening-ready Unix socket at ``path``, created 0600 (for uvicorn's ``fd=``)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    return sock


def split_socket(argv: list[str]) -> tuple[str, list[str]]:
    if "--unix-socket" not in argv:
        raise SystemExit("usage: python -m mlxpin.serve.uds_server --unix-socket PATH [options]")
    at = argv.index("--unix-socket")
    if at + 1 >= len(argv):
        raise SystemExit("--unix-socket needs a path")
    return argv[at + 1], argv[:at] + argv[at + 2 :]


def quiet_below_info(handler: type[BaseHTTPRequestHandler]) -> type[BaseHTTPRequestHandler]:
    """``handler``, without its access line per request when the server's --log-level
    (already set on the root logger by mlx_lm.server's main) is above INFO: http.server
    writes those to stderr whatever the level, and each costs a line the gateway relays."""
    if logging.getLogger().getEffectiveLevel() <= logging.INFO:
        return handler

    class Quiet(handler):  # type: ignore[valid-type,misc]
        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            pass

    return Quiet


class _Chunks:
    """A response body written as HTTP/1.1 chunks, one per ``write`` (an SSE event each)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw

    def write(self, data: bytes) -> int:
        if data:  # an empty chunk would end the body
            self.raw.write(b"%x\r\n%s\r\n" % (len(data), data))
        return len(data)

    def flush(self) -> None:
        self.raw.flush()


class _Body:
    """A request's body, as the handler reads it: what it left unread is known."""

    def __init__(self, raw: BinaryIO, length: int) -> None:
        self.raw, self.left = raw, length

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        data = self.raw.read(size)
        self.left -= len(data)
        return data


def keep_alive(handler: type[BaseHTTPRequestHandler]) -> type[BaseHTTPRequestHandler]:
    """``handler``, speaking HTTP/1.1: a connection serves one request after another.

    ``mlx_lm.server`` speaks HTTP/1.0 and closes every connection, so each request cost a
    connect, an accept and a new handler thread, in the server and in the gateway. Here a
    body sent without a Content-Length (its streams, its errors) goes out chunked, and the
    connection stays open unless the client asked to close it -- or the handler answered
    without reading the request's body (mlx_lm's 404), which would be read as the next
    request. mlx_lm stamps ``created`` when a connection's handler is made: it is stamped
    again for each request."""

    class KeepAlive(handler):  # type: ignore[valid-type,misc]
        protocol_version = "HTTP/1.1"
        # mlx_lm's handler keeps its own state in attributes (self.body, self.stream...):
        # these names are not among them.
        _sent_status = 0
        _framed = False
        _plain: BinaryIO | None = None  # the connection's writer, while chunks are written
        _request_body: _Body | None = None  # the request's body, while its handler runs

        def handle_one_request(self) -> None:
            self._sent_status, self._framed = 0, False
            connection: BinaryIO = self.rfile  # type: ignore[has-type]
            try:
                super().handle_one_request()
                if self._plain is not None:
                    self._plain.write(b"0\r\n\r\n")  # the last chunk
            finally:
                if self._plain is not None:
                    self.wfile, self._plain = self._plain, None
                if self._request_body is not None and self._request_body.left:
                    self.close_connection = True
                self.rfile, self._request_body = connection, None

        def parse_request(self) -> bool:
            if not super().parse_request():
                return False
            self.created = int(time.time())  # the request is in (the wait for it is over)
            length = self.headers.get("Content-Length", "0")
            if "Transfer-Encoding" in self.headers or not length.isdigit():
                self.close_connection = True  # mlx_lm reads neither: the rest is not a request
            else:
                self._request_body = _Body(self.rfile, int(length))
                self.rfile = cast(BinaryIO, self._request_body)  # mlx_lm's handler only reads(n)
            return True

        def send_response_only(self, code: int, message: str | None = None) -> None:
            self._sent_status = code
            super().send_response_only(code, message)

        def send_header(self, keyword: str, value: str) -> None:
            if keyword.lower() in ("content-length", "transfer-encoding"):
                self._framed = True
            super().send_header(keyword, value)

        def end_headers(self) -> None:
            unread = self._request_body is not None and self._request_body.left > 0
            if unread and not self.close_connection:
                super().send_header("Connection", "close")  # else read as the next request
            chunked = not (
                self._framed
                or self.close_connection
                or self.command == "HEAD"
                or self._sent_status < 200
                or self._sent_status in (204, 304)
            )
            if chunked:
                super().send_header("Transfer-Encoding", "chunked")
            super().end_headers()
            if chunked:
                # mlx_lm's handler only writes and flushes its wfile.
                self._plain, self.wfile = self.wfile, cast(BinaryIO, _Chunks(self.wfile))

    return KeepAlive


def main(argv: list[str]) -> None:
    path, rest = split_socket(argv)
    import mlx_lm.server

    mlx_server: Any = mlx_lm.server

    def serve_on_socket(
        host: str,
        port: int,
        response_generator: Any,
        server_class: Any = None,
        handler_class: type[BaseHTTPRequestHandler] | None = None,
    ) -> None:
        handler: Any = keep_alive(quiet_below_info(handler_class or mlx_server.APIHandler))
        fingerprint = mlx_server.get_system_fingerprint()
        httpd = UnixHTTPServer(
            path,
            lambda *args, **kwargs: handler(
                response_generator, *args, system_fingerprint=fingerprint, **kwargs
            ),
        )
        logging.info("Starting httpd at unix:%s...", path)
        try:
            httpd.serve_forever()
        except KeyboardInterrupt:
            httpd.shutdown()
            response_generator.stop_and_join()

    mlx_server._run_http_server = serve_on_socket
    sys.argv = ["mlx_lm.server", *rest]
    mlx_server.main()


if __name__ == "__main__":
    main(sys.argv[1:])
