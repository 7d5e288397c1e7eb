"""``python -m mlxpin.serve.uds_server --unix-socket PATH [mlx_lm.server options]``

Runs the pinned ``mlx_lm.server`` unchanged -- its own argument parser, model provider,
request handler and generation thread -- except that it listens on a Unix-domain socket
instead of a TCP port. The socket lives in a 0700 directory mlxpin created, and is
itself 0600: only processes of the same user can connect, none can reach it over the
network or a loopback port (issue 8 item 4: the private port bypassed the gateway's key
and label checks).

mlx_lm.server's ``run()`` accepts a ``server_class`` but does not pass it on; its TCP
listener is the module function ``_run_http_server``, which this replaces with one that
serves the same handler on the socket. Nothing else of mlx_lm is touched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import socketserver
import stat
import sys
from http.server import BaseHTTPRequestHandler
from typing import Any

__all__ = ["UnixHTTPServer", "bind_private_socket", "main", "split_socket"]


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
        handler: Any = quiet_below_info(handler_class or mlx_server.APIHandler)
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
