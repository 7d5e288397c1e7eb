"""The relay's HTTP/1.1 client to one model server: a POST, its answer, nothing else.

aiohttp's ClientSession cost ~0.2 ms of the gateway's one thread per request (request and
response objects, URL handling, cookie jar, tracing hooks, connector bookkeeping). This
client writes the request head and body in one ``send`` and parses the answer's head itself:
bodies framed by Content-Length, chunked, or by the server closing (HTTP/1.0). Connections
an HTTP/1.1 server keeps open (uvicorn's for mlx_vlm, mlxpin's launcher for mlx_lm) are
reused for ``keepalive_s``. ``mlx_lm.server`` on its own (a pinned runtime's, a rank's)
speaks HTTP/1.0 and closes each one: then the next few are opened ahead (the server's
thread for each waits on it), so a request does not wait for connect and accept. Each is
a plain socket, :class:`Link`: an asyncio transport and stream pair cost as much again.

Failures are aiohttp's exception types, so :func:`~mlxpin.gateway.upstream.classify_failure`
sorts them as before: no connection or an early close: ClientConnectionError (503);
silence past a timeout: TimeoutError (504); a cut or malformed answer: ClientPayloadError
(502). Closing an answer before its end drops the connection, which is how the server
learns that the client hung up.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import Any, Final

import aiohttp
from yarl import URL

from mlxpin.gateway.backends import Upstream

__all__ = ["Answer", "Link", "RelayClient"]

#: Bytes asked of one recv: Python allocates all of them first, and at 256 KiB (asyncio's
#: default) that cost ~12 us a call, four times a whole 1 KiB recv at 64 KiB.
_READ_SIZE: Final = 64 * 1024
_HEAD_LIMIT: Final = 64 * 1024  # an answer head (or a chunk-size line) must fit
_MAX_IDLE: Final = 64
#: Connections opened ahead for a server that closes each one (HTTP/1.0: mlx_lm.server alone).
_SPARES: Final = 8


def _clean(value: str) -> str:
    """A header value that cannot end the line early (the client's Accept is copied)."""
    return value if "\r" not in value and "\n" not in value else ""


class Link:
    """One connection to the server: a non-blocking socket the loop reads while an answer
    is awaited, and what it sent that was not read yet.

    Not an asyncio transport and stream pair: making one costs a task, three loop
    callbacks, two name lookups on the socket and several objects -- per request, when
    the server closes every connection. A read that finds its bytes buffered neither
    waits nor arms a timer. Reads raise IncompleteReadError, LimitOverrunError or the
    connection's OSError, as asyncio's streams do."""

    __slots__ = ("buffer", "eof", "error", "loop", "reading", "sock", "waiter")

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self.sock, self.loop = sock, loop
        self.buffer = bytearray()
        self.eof = False
        self.error: OSError | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.reading = False  # registered with the loop

    def _readable(self) -> None:
        try:
            data = self.sock.recv(_READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.error, data = exc, b""
        if data:
            self.buffer += data
        else:
            self.eof = True
        if self.eof or len(self.buffer) > _READ_SIZE:  # the end, or nobody reads it yet
            self._stop_reading()
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _stop_reading(self) -> None:
        if self.reading:
            self.reading = False
            self.loop.remove_reader(self.sock.fileno())

    def at_eof(self) -> bool:
        return self.eof and not self.buffer

    async def send(self, data: bytes, timeout_s: float) -> None:
        """All of ``data``; at once unless the socket's buffer is full."""
        sent = self.sock.send(data)
        if sent < len(data):
            async with asyncio.timeout(timeout_s):
                await self.loop.sock_sendall(self.sock, memoryview(data)[sent:])

    def close(self) -> None:
        self._stop_reading()
        self.eof = True
        self.sock.close()

    async def _more(self, timeout_s: float) -> None:
        """Wait for more bytes (or the end), at most ``timeout_s`` (TimeoutError)."""
        if self.eof:
            if self.error is not None:
                raise self.error
            raise asyncio.IncompleteReadError(bytes(self.buffer), None)
        if not self.reading:
            self.reading = True
            self.loop.add_reader(self.sock.fileno(), self._readable)
        waiter = self.waiter = self.loop.create_future()
        timer = self.loop.call_later(timeout_s, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()

    async def readuntil(self, separator: bytes, timeout_s: float, limit: int) -> bytes:
        """Up to and with ``separator`` (LimitOverrunError past ``limit`` bytes)."""
        start = 0
        while True:
            at = self.buffer.find(separator, start)
            if at >= 0:
                end = at + len(separator)
                data = bytes(self.buffer[:end])
                del self.buffer[:end]
                return data
            if len(self.buffer) > limit:
                raise asyncio.LimitOverrunError("separator not found within the limit", limit)
            start = max(0, len(self.buffer) - len(separator) + 1)
            await self._more(timeout_s)

    async def readexactly(self, n: int, timeout_s: float) -> bytes:
        while len(self.buffer) < n:
            await self._more(timeout_s)
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    async def read(self, n: int, timeout_s: float) -> bytes:
        """What is buffered (at most ``n`` bytes), waiting if nothing is; b"" at the end."""
        if not self.buffer:
            if self.eof and self.error is None:
                return b""
            await self._more(timeout_s)
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class Answer:
    """One answer's status and headers; its body is read with :meth:`read` or
    :meth:`iter_any`, and :meth:`close` must be called once (it keeps or drops the
    connection)."""

    def __init__(self, client: RelayClient, link: Link, head: bytes, read_timeout_s: float) -> None:
        self.client, self.link = client, link
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
        """One read; a cut or reset is a ClientPayloadError (not a ConnectionError: the
        relay reads those as the *client* hanging up)."""
        try:
            return await call
        except TimeoutError:
            raise
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError) as exc:
            raise aiohttp.ClientPayloadError(
                f"Response payload is not completed: {exc!r}"
            ) from None

    async def _next_chunk(self) -> bytes:
        link, timeout_s = self.link, self.read_timeout_s
        line = await self._io(link.readuntil(b"\r\n", timeout_s, _HEAD_LIMIT))
        size = line.partition(b";")[0].strip()
        try:
            length = int(size, 16)
        except ValueError:
            raise aiohttp.ClientPayloadError(f"bad chunk size {size[:20]!r}") from None
        if length == 0:  # the last chunk; trailers (if any) up to the empty line
            while await self._io(link.readuntil(b"\r\n", timeout_s, _HEAD_LIMIT)) != b"\r\n":
                pass
            return b""
        return (await self._io(link.readexactly(length + 2, timeout_s)))[:-2]

    async def iter_any(self) -> AsyncIterator[bytes]:
        """The body as it comes, in the pieces it comes in."""
        while not self.finished:
            if self.chunked:
                data = await self._next_chunk()
            elif self.remaining is not None:
                data = b""
                if self.remaining:
                    want = min(self.remaining, _READ_SIZE)
                    data = await self._io(self.link.read(want, self.read_timeout_s))
                    if not data:
                        raise aiohttp.ClientPayloadError("Response payload is not completed")
                self.remaining -= len(data)
            else:
                data = await self._io(self.link.read(_READ_SIZE, self.read_timeout_s))
            if not data or self.remaining == 0:
                self.finished = True
            if data:
                yield data

    async def read(self) -> bytes:
        """The whole body."""
        if self.remaining is not None and not self.chunked:
            data = await self._io(self.link.readexactly(self.remaining, self.read_timeout_s))
            self.remaining, self.finished = 0, True
            return data
        return b"".join([piece async for piece in self.iter_any()])

    def close(self) -> None:
        """Keep the connection for the next request if the answer was read to its end and
        the server keeps it open; otherwise drop it (the server sees the hang-up)."""
        keep = self.finished and self.reusable and not self.link.at_eof()
        one_shot = self.finished and not self.reusable
        self.client.done(self.link, keep=keep, one_shot=one_shot)


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
        self.resolved: tuple[Any, ...] | None = None  # a TCP server's getaddrinfo entry
        self.idle: list[tuple[Link, float]] = []
        self.open = asyncio.Semaphore(limit)  # at most `limit` connections in use
        # The server closes every connection (mlx_lm.server alone is HTTP/1.0): connect ahead,
        # so that connect, accept and its handler thread's start are off the request's path.
        self.one_shot = False
        self.opening: set[asyncio.Task[None]] = set()

    async def _connect(self) -> tuple[Link, bool]:
        """A connection, and whether it is a kept one (the server may have closed it)."""
        while self.idle:
            link, expires = self.idle.pop()
            if expires > time.monotonic() and not link.eof:
                return link, True
            link.close()
        return await self._fresh(), False

    def _socket(self) -> Link | None:
        """A connected socket, if it connects at once (a Unix socket with room in the
        server's backlog); None if connecting has to wait."""
        if self.socket_path is None:
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(self.socket_path)
        except (BlockingIOError, InterruptedError):
            sock.close()
            return None
        except OSError as exc:
            sock.close()
            raise aiohttp.ClientOSError(exc.errno, f"cannot reach the server: {exc}") from exc
        return Link(sock, asyncio.get_running_loop())

    async def _fresh(self) -> Link:
        link = self._socket()
        if link is not None:
            return link
        loop = asyncio.get_running_loop()
        sock: socket.socket | None = None
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                if self.socket_path is not None:
                    address: Any = self.socket_path
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                else:
                    if self.resolved is None:  # once: the server's address does not change
                        infos = await loop.getaddrinfo(
                            self.host, self.port, type=socket.SOCK_STREAM
                        )
                        self.resolved = infos[0]
                    family, kind, proto, _, address = self.resolved
                    sock = socket.socket(family, kind, proto)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setblocking(False)
                await loop.sock_connect(sock, address)
        except BaseException as exc:
            if sock is not None:
                sock.close()
            if isinstance(exc, OSError) and not isinstance(exc, TimeoutError):
                raise aiohttp.ClientOSError(exc.errno, f"cannot reach the server: {exc}") from exc
            raise
        return Link(sock, loop)

    def _open_spare(self) -> None:
        if len(self.idle) + len(self.opening) >= _SPARES:
            return
        try:
            link = self._socket()
        except aiohttp.ClientError:
            return  # the next request connects (and fails) itself
        if link is not None:
            self.idle.append((link, time.monotonic() + self.keepalive_s))
            return
        task = asyncio.get_running_loop().create_task(self._spare())
        self.opening.add(task)
        task.add_done_callback(self.opening.discard)

    async def _spare(self) -> None:
        try:
            link = await self._fresh()
        except (TimeoutError, aiohttp.ClientError):
            return  # the next request connects (and fails) itself
        self.idle.append((link, time.monotonic() + self.keepalive_s))

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
                link, kept = await self._connect()
                try:
                    await link.send(request, read_timeout_s)
                    if self.one_shot:
                        self._open_spare()
                    answer_head = await link.readuntil(b"\r\n\r\n", read_timeout_s, _HEAD_LIMIT)
                    return Answer(self, link, answer_head[:-4], read_timeout_s)
                except (asyncio.IncompleteReadError, ConnectionError) as exc:
                    link.close()
                    if kept:  # closed by the server while idle: it never saw this request
                        continue
                    raise aiohttp.ServerDisconnectedError(f"the server closed: {exc!r}") from None
                except asyncio.LimitOverrunError:
                    link.close()
                    raise aiohttp.ClientPayloadError("the answer's head is too long") from None
                except BaseException:
                    link.close()
                    raise
        except BaseException:
            self.open.release()
            raise

    def done(self, link: Link, *, keep: bool, one_shot: bool) -> None:
        """An answer is over: keep its connection for the next request, or drop it.
        ``one_shot``: it was read to its end, and the server closes connections."""
        self.open.release()
        self.one_shot = one_shot or (self.one_shot and not keep)
        if keep and len(self.idle) < _MAX_IDLE:
            self.idle.append((link, time.monotonic() + self.keepalive_s))
        else:
            link.close()

    def close(self) -> None:
        """Drop the idle connections (the gateway is stopping)."""
        idle, self.idle = self.idle, []
        for link, _expires in idle:
            link.close()
        for task in self.opening:
            task.cancel()
