"""Which requests skip aiohttp's request machinery, and their answers' bytes (pure).

aiohttp spends ~0.3 ms of the gateway's one thread on each request (a task, a request and
a response object, several loop turns) -- as much as everything the gateway itself does.
A request that is whole and plain -- ``POST`` of a JSON endpoint, HTTP/1.1, a
Content-Length body that has all arrived, no header that changes how it is read (but
``Connection: keep-alive``, which changes nothing in HTTP/1.1) -- is
answered by :meth:`~mlxpin.gateway.app.Gateway.answer_whole` and written back as bytes (an
event stream as chunks, each as it comes). Everything else, and anything this parser is
unsure of, goes to aiohttp, whose parser decides (and refuses) as before.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, Protocol

from mlxpin.project.engines import ALL_ENDPOINTS, TRANSCRIPTIONS_PATH

if TYPE_CHECKING:
    from aiohttp import web

__all__ = [
    "FAST_PATHS",
    "MAX_HEAD",
    "EventSink",
    "OpenStream",
    "WholeRequest",
    "answer_bytes",
    "chunk",
    "whole_request",
]

#: Endpoints answered with one JSON body (a form upload and audio bytes are not).
FAST_PATHS: Final = frozenset(ALL_ENDPOINTS) - {TRANSCRIPTIONS_PATH, "/v1/audio/speech"}
#: A longer head is left to aiohttp's limits.
MAX_HEAD: Final = 8 * 1024
_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
#: Headers that change how a request is read or answered: aiohttp's business. So is
#: ``Connection``, but for ``keep-alive``: HTTP/1.1's default, which httpx (the openai SDK)
#: and requests send on every request.
_NOT_PLAIN: Final = frozenset({b"transfer-encoding", b"content-encoding", b"expect", b"upgrade"})
_REQUEST_LINES: Final = {b"POST " + path.encode() + b" HTTP/1.1": path for path in FAST_PATHS}


class EventSink(Protocol):
    """Where an event stream goes: its status line and headers leave with the first
    write; a write to a client that has gone raises ConnectionError."""

    status: int
    answer: web.StreamResponse | None
    """What the relay returns once the stream went to the sink: aiohttp's response, or
    None when the sink wrote it to the connection itself."""

    async def write(self, data: bytes) -> None: ...

    async def write_eof(self, data: bytes = b"") -> None: ...


#: Makes the sink for an event stream answered with a status and headers.
OpenStream = Callable[[int, Sequence[tuple[str, str]]], EventSink]


@dataclass(frozen=True)
class WholeRequest:
    """A plain request, all of it in."""

    path: str
    authorization: str
    accept: str  # relayed to the engine, as aiohttp's way does ("*/*" when none)
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
    accept = "*/*"
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
        elif name == b"accept":
            accept = value.decode("latin-1")
        elif name == b"connection" and value.lower() != b"keep-alive":
            return None
    if length is None or length > max_body or b"host" not in names:
        return None
    start = end + 4
    if len(data) < start + length:
        return "more"
    if len(data) > start + length:
        return None  # pipelined: aiohttp keeps them in order
    return WholeRequest(path, authorization or "", accept, data[start:])


def answer_bytes(
    status: int, reason: str, headers: Sequence[tuple[str, str]], body: bytes | None, date: str
) -> bytes:
    """An answer's status line, headers and body (its Content-Length counted here); with
    ``body`` None, the head of a chunked answer."""
    framing = "Transfer-Encoding: chunked" if body is None else f"Content-Length: {len(body)}"
    head = [f"HTTP/1.1 {status} {reason}\r\nDate: {date}\r\n{framing}\r\n"]
    head += [f"{name}: {value}\r\n" for name, value in headers]
    head.append("\r\n")
    return "".join(head).encode("latin-1") + (body or b"")


def chunk(data: bytes) -> bytes:
    """``data`` as one chunk of a chunked body (empty: nothing; the end is b"0\\r\\n\\r\\n")."""
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""
