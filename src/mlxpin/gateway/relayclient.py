"""The relay's HTTP/1.1 client to one model server: a POST, its answer, nothing else.

aiohttp's ClientSession cost ~0.2 ms of the gateway's one thread per request (request and
response objects, URL handling, cookie jar, tracing hooks, connector bookkeeping) -- and
``mlx_lm.server`` speaks HTTP/1.0, so every request also opens a new connection. This
client writes the request head in one ``write`` and parses the answer's head itself:
bodies framed by Content-Length, chunked, or by the server closing (HTTP/1.0). Connections
an HTTP/1.1 server keeps open (uvicorn's, for mlx_vlm) are reused for ``keepalive_s``; for
a server that closes each one, the next few are opened ahead (the server's thread for
each waits on it), so a request does not wait for connect and accept.

Failures are aiohttp's exception types, so :func:`~mlxpin.gateway.upstream.classify_failure`
sorts them as before: no connection or an early close: ClientConnectionError (503);
silence past a timeout: TimeoutError (504); a cut or malformed answer: ClientPayloadError
(502). Closing an answer before its end drops the connection, which is how the server
learns that the client hung up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import Final

import aiohttp
from yarl import URL

from mlxpin.gateway.backends import Upstream

__all__ = ["Answer", "RelayClient"]

_READ_SIZE: Final = 256 * 1024
_HEAD_LIMIT: Final = 64 * 1024  # the StreamReader's line limit: an answer head must fit
_MAX_IDLE: Final = 64
#: Connections opened ahead for a server that closes each one (HTTP/1.0, mlx_lm.server).
_SPARES: Final = 8


def _clean(value: str) -> str:
    """A header value that cannot end the line early (the client's Accept is copied)."""
    return value if "\r" not in value and "\n" not in value else ""


class Answer:
    """One answer's status and headers; its body is read with :meth:`read` or
    :meth:`iter_any`, and :meth:`close` must be called once (it keeps or drops the
    connection)."""

    def __init__(
        self,
        client: RelayClient,
        streams: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        head: bytes,
        read_timeout_s: float,
    ) -> None:
        self.client, self.reader, self.writer = client, streams[0], streams[1]
        self.read_timeout_s = read_timeout_s
        status_line, *lines = head.decode("latin-1").split("\r\n")
        version, _, rest = status_line.partition(" ")
        code, _, self.reason = rest.partition(" ")
        if not version.startswith("HTTP/1.") or not code.isdigit() or len(code) != 3:
            raise aiohttp.ClientPayloadError(f"not an HTTP answer: {status_line[:80]!r}")
        self.status = int(code)
        self.headers: dict[str, str] = {}
        for line in lines:
            name, colon, value = line.partition(":")
            if colon:
                self.headers[name.strip().lower()] = value.strip()
        self.chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        length = self.headers.get("content-length")
        self.remaining: int | None = None  # bytes still to read (None: chunked or to EOF)
        if self.status in (204, 304):
            self.chunked, self.remaining = False, 0  # never a body
        elif not self.chunked and length is not None:
            if not length.isdigit():
                raise aiohttp.ClientPayloadError(f"bad Content-Length {length[:40]!r}")
            self.remaining = int(length)
        closes = self.headers.get("connection", "").lower()
        self.reusable = version == "HTTP/1.1" and "close" not in closes
        self.reusable = self.reusable and (self.chunked or self.remaining is not None)
        self.finished = False

    @property
    def content_type(self) -> str:
        """The media type, lower-cased, without parameters (as aiohttp's)."""
        value = self.headers.get("content-type", "application/octet-stream")
        return value.partition(";")[0].strip().lower()

    async def _io(self, call: Awaitable[bytes]) -> bytes:
        """One read, within the read timeout; a cut or reset is a ClientPayloadError (not
        a ConnectionError: the relay reads those as the *client* hanging up)."""
        try:
            async with asyncio.timeout(self.read_timeout_s):
                return await call
        except TimeoutError:
            raise
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError) as exc:
            raise aiohttp.ClientPayloadError(
                f"Response payload is not completed: {exc!r}"
            ) from None

    async def _next_chunk(self) -> bytes:
        line = await self._io(self.reader.readuntil(b"\r\n"))
        size = line.partition(b";")[0].strip()
        try:
            length = int(size, 16)
        except ValueError:
            raise aiohttp.ClientPayloadError(f"bad chunk size {size[:20]!r}") from None
        if length == 0:  # the last chunk; trailers (if any) up to the empty line
            while await self._io(self.reader.readuntil(b"\r\n")) != b"\r\n":
                pass
            return b""
        return (await self._io(self.reader.readexactly(length + 2)))[:-2]

    async def iter_any(self) -> AsyncIterator[bytes]:
        """The body as it comes, in the pieces it comes in."""
        while not self.finished:
            if self.chunked:
                data = await self._next_chunk()
            elif self.remaining is not None:
                data = b""
                if self.remaining:
                    data = await self._io(self.reader.read(min(self.remaining, _READ_SIZE)))
                    if not data:
                        raise aiohttp.ClientPayloadError("Response payload is not completed")
                self.remaining -= len(data)
            else:
                data = await self._io(self.reader.read(_READ_SIZE))
            if not data or self.remaining == 0:
                self.finished = True
            if data:
                yield data

    async def read(self) -> bytes:
        """The whole body."""
        if self.remaining is not None and not self.chunked:
            data = await self._io(self.reader.readexactly(self.remaining))
            self.remaining, self.finished = 0, True
            return data
        return b"".join([piece async for piece in self.iter_any()])

    def close(self) -> None:
        """Keep the connection for the next request if the answer was read to its end and
        the server keeps it open; otherwise drop it (the server sees the hang-up)."""
        keep = self.finished and self.reusable and not self.reader.at_eof()
        one_shot = self.finished and not self.reusable
        self.client.done(self.reader, self.writer, keep=keep, one_shot=one_shot)


class RelayClient:
    """The connections of one upstream (see the module docstring)."""

    def __init__(self, upstream: Upstream, connect_timeout_s: float, limit: int = 256) -> None:
        self.socket_path = upstream.socket_path
        self.keepalive_s = upstream.keepalive_s
        self.connect_timeout_s = connect_timeout_s
        url = URL(upstream.url)
        self.host, self.port = url.host or "localhost", url.port or 80
        host = url.raw_host or "localhost"
        self.host_header = host if url.is_default_port() else f"{host}:{url.port}"
        self.prefix = url.path.rstrip("/")
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self.open = asyncio.Semaphore(limit)  # at most `limit` connections in use
        # The server closes every connection (mlx_lm.server is HTTP/1.0): connect ahead,
        # so that connect, accept and its handler thread's start are off the request's path.
        self.one_shot = False
        self.opening: set[asyncio.Task[None]] = set()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
        """A connection, and whether it is a kept one (the server may have closed it)."""
        while self.idle:
            reader, writer, expires = self.idle.pop()
            if expires > time.monotonic() and not reader.at_eof() and not writer.is_closing():
                return reader, writer, True
            writer.close()
        reader, writer = await self._fresh()
        return reader, writer, False

    async def _fresh(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                if self.socket_path is not None:
                    streams = await asyncio.open_unix_connection(
                        self.socket_path, limit=_HEAD_LIMIT
                    )
                else:
                    streams = await asyncio.open_connection(self.host, self.port, limit=_HEAD_LIMIT)
        except TimeoutError:
            raise
        except OSError as exc:
            raise aiohttp.ClientOSError(exc.errno, f"cannot reach the server: {exc}") from exc
        return streams

    def _open_spare(self) -> None:
        if len(self.idle) + len(self.opening) < _SPARES:
            task = asyncio.get_running_loop().create_task(self._spare())
            self.opening.add(task)
            task.add_done_callback(self.opening.discard)

    async def _spare(self) -> None:
        try:
            reader, writer = await self._fresh()
        except (TimeoutError, aiohttp.ClientError):
            return  # the next request connects (and fails) itself
        self.idle.append((reader, writer, time.monotonic() + self.keepalive_s))

    async def post(
        self, path: str, data: bytes, headers: Mapping[str, str], read_timeout_s: float
    ) -> Answer:
        """Send the request; the answer once its head is in (close it when done)."""
        head = [f"POST {self.prefix}{path} HTTP/1.1\r\nHost: {self.host_header}\r\n"]
        head += [f"{name}: {_clean(value)}\r\n" for name, value in headers.items()]
        head.append(f"Content-Length: {len(data)}\r\n\r\n")
        request = "".join(head).encode("latin-1") + data
        await self.open.acquire()  # no suspension unless `limit` are in use
        try:
            while True:
                reader, writer, kept = await self._connect()
                try:
                    writer.write(request)
                    if self.one_shot:
                        self._open_spare()
                    async with asyncio.timeout(read_timeout_s):
                        answer_head = await reader.readuntil(b"\r\n\r\n")
                    return Answer(self, (reader, writer), answer_head[:-4], read_timeout_s)
                except (asyncio.IncompleteReadError, ConnectionError) as exc:
                    writer.close()
                    if kept:  # closed by the server while idle: it never saw this request
                        continue
                    raise aiohttp.ServerDisconnectedError(f"the server closed: {exc!r}") from None
                except asyncio.LimitOverrunError:
                    writer.close()
                    raise aiohttp.ClientPayloadError("the answer's head is too long") from None
                except BaseException:
                    writer.close()
                    raise
        except BaseException:
            self.open.release()
            raise

    def done(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        keep: bool,
        one_shot: bool,
    ) -> None:
        """An answer is over: keep its connection for the next request, or drop it.
        ``one_shot``: it was read to its end, and the server closes connections."""
        self.open.release()
        self.one_shot = one_shot or (self.one_shot and not keep)
        if keep and len(self.idle) < _MAX_IDLE:
            self.idle.append((reader, writer, time.monotonic() + self.keepalive_s))
        else:
            writer.close()

    def close(self) -> None:
        """Drop the idle connections (the gateway is stopping)."""
        idle, self.idle = self.idle, []
        for _reader, writer, _expires in idle:
            writer.close()
        for task in self.opening:
            task.cancel()
