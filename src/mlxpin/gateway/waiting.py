"""A request that reached the public port while `serve` was still booting.

The port listens before the gateway has imported aiohttp and set up (~0.1 s): a client
that connects then waits in the backlog, and its model's start -- the long part of an
on-demand cold start -- would only begin once the gateway reads it. The runner accepts
the first such connection early, peeks (MSG_PEEK: the bytes stay for the gateway) at a
complete JSON request, and learns the model it names -- only if the gateway would route
it there (its key, path, label and checks) -- so that model starts while the gateway
sets up; the connection is then handed to the gateway as if it had just been accepted.
"""

from __future__ import annotations

import hmac
import socket
from collections.abc import Sequence

from mlxpin.gateway.apierrors import ApiError
from mlxpin.gateway.checks import check_request
from mlxpin.gateway.routing import RoutingTable
from mlxpin.project.engines import TRANSCRIPTIONS_PATH

__all__ = ["accept_waiting", "peek", "requested_label"]

_PEEK_BYTES = 256 * 1024


def accept_waiting(listeners: Sequence[socket.socket]) -> socket.socket | None:
    """The first connection waiting on the (non-blocking) ``listeners``, or None."""
    for listener in listeners:
        try:
            conn, _ = listener.accept()
        except OSError:  # BlockingIOError: nobody is waiting there
            continue
        conn.setblocking(False)
        return conn
    return None


def peek(conn: socket.socket) -> bytes:
    """What the client has sent so far, left unread."""
    try:
        return conn.recv(_PEEK_BYTES, socket.MSG_PEEK)
    except OSError:
        return b""


def requested_label(data: bytes, table: RoutingTable, api_key: str | None) -> str | None:
    """The api_label a complete JSON request in ``data`` is routed to, if the gateway
    would accept it (with ``api_key``: its Bearer key); None when not sure."""
    head, end, rest = data.partition(b"\r\n\r\n")
    if not end:
        return None
    request_line, *lines = head.decode("latin-1").split("\r\n")
    method, _, target = request_line.partition(" ")
    path = target.partition(" ")[0].partition("?")[0]
    if method != "POST" or path == TRANSCRIPTIONS_PATH:
        return None
    headers: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    length = headers.get("content-length", "")
    if not length.isdigit() or len(rest) < int(length):
        return None
    if "content-encoding" in headers or "transfer-encoding" in headers:
        return None
    if api_key is not None:
        got = headers.get("authorization", "")
        if got[:7].lower() == "bearer ":
            got = "Bearer " + got[7:].strip()
        expected = ("Bearer " + api_key).encode("utf-8")
        if not hmac.compare_digest(got.encode("latin-1"), expected):
            return None
    checked = check_request(rest[: int(length)], table, path)
    return None if isinstance(checked, ApiError) else checked[0].api_label
