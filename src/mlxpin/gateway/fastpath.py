"""Which requests skip aiohttp's request machinery, and their answers' bytes (pure).

aiohttp spends ~0.3 ms of the gateway's one thread on each request (a task, a request and
a response object, several loop turns) -- as much as everything the gateway itself does.
A request that is whole and plain -- ``POST`` of a JSON endpoint, HTTP/1.1, a
Content-Length body that has all arrived, not a stream, no header that changes how it is
read -- is answered by :meth:`~mlxpin.gateway.app.Gateway.answer_whole` and written back as
bytes. Everything else, and anything this parser is unsure of, goes to aiohttp, whose
parser decides (and refuses) as before.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Final, Literal

from mlxpin.project.engines import ALL_ENDPOINTS, TRANSCRIPTIONS_PATH

__all__ = ["FAST_PATHS", "MAX_HEAD", "WholeRequest", "answer_bytes", "whole_request"]

#: Endpoints answered with one JSON body (a form upload and audio bytes are not).
FAST_PATHS: Final = frozenset(ALL_ENDPOINTS) - {TRANSCRIPTIONS_PATH, "/v1/audio/speech"}
#: A longer head is left to aiohttp's limits.
MAX_HEAD: Final = 8 * 1024
_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
#: Headers that change how a request is read or answered: aiohttp's business.
_NOT_PLAIN: Final = frozenset(
    {b"transfer-encoding", b"content-encoding", b"expect", b"upgrade", b"connection"}
)
_REQUEST_LINES: Final = {b"POST " + path.encode() + b" HTTP/1.1": path for path in FAST_PATHS}


@dataclass(frozen=True)
class WholeRequest:
    """A plain request, all of it in."""

    path: str
    authorization: str
    body: bytes


def whole_request(data: bytes, max_body: int) -> WholeRequest | Literal["more"] | None:
    """``data`` as one plain request; "more" if it is the start of one whose body has not
    all arrived (at most ``max_body`` bytes); None if aiohttp must read it."""
    end = data.find(b"\r\n\r\n", 0, MAX_HEAD)
    if end < 0:
        return None
    request_line, *lines = data[:end].split(b"\r\n")
    path = _REQUEST_LINES.get(request_line)
    if path is None:
        return None
    length: int | None = None
    authorization: str | None = None
    names: set[bytes] = set()  # aiohttp refuses some twice; any twice is aiohttp's to judge
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value):
            return None
        name = name.lower()
        if name in _NOT_PLAIN or name in names:
            return None
        names.add(name)
        value = value.strip(b" \t")
        if name == b"content-length":
            if not value.isdigit() or len(value) > 18:
                return None
            length = int(value)
        elif name == b"authorization":
            authorization = value.decode("latin-1")
    if length is None or length > max_body or b"host" not in names:
        return None
    start = end + 4
    if len(data) < start + length:
        return "more"
    if len(data) > start + length:
        return None  # pipelined: aiohttp keeps them in order
    body = data[start:]
    if b'"stream"' in body and _streams(body):
        return None
    return WholeRequest(path, authorization or "", body)


def _streams(body: bytes) -> bool:
    try:
        asked = json.loads(body)
    except (ValueError, RecursionError):
        return False  # answered 400 whole
    return isinstance(asked, dict) and asked.get("stream") is True


def answer_bytes(
    status: int, reason: str, headers: list[tuple[str, str]], body: bytes, date: str
) -> bytes:
    """An answer's status line, headers and body (its Content-Length counted here)."""
    head = [f"HTTP/1.1 {status} {reason}\r\nDate: {date}\r\nContent-Length: {len(body)}\r\n"]
    head += [f"{name}: {value}\r\n" for name, value in headers]
    head.append("\r\n")
    return "".join(head).encode("latin-1") + body
