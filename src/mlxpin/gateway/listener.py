"""The gateway's listening socket under hostile clients.

aiohttp waits for a first request as long as its keep-alive allows, so ~1,000 idle
connections use up the file descriptors: every client is locked out and restarting the
model server fails with EMFILE. Here a connection gets ``header_timeout_s`` to send a
request head; past :func:`connection_cap` (clipped so that upstream connections, two
accept bursts and ``fd_reserve`` descriptors always fit under RLIMIT_NOFILE), a new one
is answered 503 + ``Retry-After`` and closed (at most ``SHED_BAND`` pending, oldest
dropped first, so a new client always gets its 503); a request aiohttp's parser rejects
is answered with an OpenAI-style 400. A plain request that arrives whole is answered
without aiohttp's request machinery (:mod:`~mlxpin.gateway.fastpath`); a connection that
sends anything else is aiohttp's from then on, and only then is aiohttp's request loop
started (a task per connection). This reaches into aiohttp's ``RequestHandler``; the
tests pin the behaviour so an aiohttp upgrade that changes it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final

from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.tcp_helpers import tcp_keepalive
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from mlxpin.gateway.addresses import ACCEPT_BURST
from mlxpin.gateway.apierrors import ApiError
from mlxpin.gateway.fastpath import (
    MAX_HEAD,
    EventSink,
    OpenStream,
    WholeRequest,
    answer_bytes,
    chunk,
    whole_request,
)

__all__ = ["WHOLE_ANSWERS", "LimitedRunner", "ListenerLimits", "WholeAnswers", "connection_cap"]

WholeAnswers = Callable[[WholeRequest, OpenStream], Awaitable[web.Response | None]]
#: The application's answerer of whole plain requests (the gateway's ``answer_whole``).
WHOLE_ANSWERS: Final[web.AppKey[WholeAnswers]] = web.AppKey("mlxpin.whole_answers")
#: Bytes asked of one recv from a client (asyncio's default, 256 KiB, costs ~12 us more).
READ_SIZE: Final = 64 * 1024
#: How long the rest of a plain request's body is waited for before aiohttp reads it.
REST_WAIT_S: Final = 1.0

log = logging.getLogger("mlxpin.gateway")

#: Connections to the model servers the gateway may hold (its client connector's limit).
UPSTREAM_CONNECTIONS: Final = 256
#: Extra connections that still get a 503 answer past the cap; beyond, closed at once.
SHED_BAND: Final = 32
SHED_LINGER_S: Final = 2.0


@dataclass(frozen=True)
class ListenerLimits:
    """How many client connections, how long for a request head, what to keep spare."""

    max_connections: int = 1000
    header_timeout_s: float = 10.0
    fd_reserve: int = 64
    """Descriptors never used for clients: the supervisor's pipes, pid file, restarts."""

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if self.header_timeout_s <= 0:
            raise ValueError("header_timeout_s must be positive")


def connection_cap(limits: ListenerLimits, nofile: int | None = None) -> int:
    """``max_connections``, clipped to what RLIMIT_NOFILE leaves after the reserve."""
    if nofile is None:
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if nofile == resource.RLIM_INFINITY:
            return limits.max_connections
    room = nofile - limits.fd_reserve - UPSTREAM_CONNECTIONS - SHED_BAND - 2 * ACCEPT_BURST
    return max(1, min(limits.max_connections, room))


def _shed_response(error: ApiError) -> bytes:
    body = error.body()
    head = (
        f"HTTP/1.1 {error.status} Service Unavailable\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


_SHED: Final = _shed_response(
    ApiError(503, "Too many connections to this endpoint; retry shortly", "too_many_connections")
)


class _Handler(RequestHandler):
    """aiohttp's connection handler, with a head deadline, shedding, JSON parse errors and
    plain requests answered whole."""

    __slots__ = (
        "_aiohttps",
        "_answering",
        "_head_deadline",
        "_held",
        "_held_paused",
        "_rest_wait",
        "_sent",
        "_shed",
        "_streamed",
    )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._head_deadline: asyncio.TimerHandle | None = None
        self._shed = False
        self._aiohttps = False  # once aiohttp reads one request, it reads them all
        self._held = b""  # a plain request's start, or what came while one was answered
        self._rest_wait: asyncio.TimerHandle | None = None
        self._answering: asyncio.Task[None] | None = None
        self._held_paused = False  # reading stopped: too much came while one was answered
        self._streamed = False  # the answer being sent is a stream, begun
        self._sent = False  # ... and ended: what runs on only reads the engine's end
        if hasattr(transport, "max_size"):  # asyncio's recv size (see relayclient._READ_SIZE)
            transport.max_size = READ_SIZE
        self._connected(transport)
        server = self._manager
        assert isinstance(server, _Server)
        if len(server._connections) - len(server.shedding) > server.cap:
            self._start_shedding(server, transport)
            return
        self._head_deadline = self._loop.call_later(server.header_timeout_s, self._no_head)

    def _connected(self, transport: asyncio.BaseTransport) -> None:
        """``RequestHandler.connection_made`` without its request loop's task, which
        :meth:`_to_aiohttp` starts if the connection ever needs it: most never do, and the
        task, its first step and its cancellation cost ~15 us a connection."""
        BaseProtocol.connection_made(self, transport)
        assert self._manager is not None
        if self._tcp_keepalive:
            tcp_keepalive(transport)  # type: ignore[arg-type]
        self._manager.connection_made(self, transport)  # type: ignore[arg-type]
        if self._keepalive_timeout > 0:  # a connection that never sends a request is closed
            self._idle_from_now()

    def _to_aiohttp(self) -> None:
        """From now on aiohttp reads and answers this connection's requests."""
        self._aiohttps = True
        if self._task_handler is None:
            self._task_handler = self._loop.create_task(self.start())

    def _start_shedding(self, server: _Server, transport: asyncio.BaseTransport) -> None:
        """Answer 503 and close once the client's request is read (a close with unread
        data is a reset, which would lose the 503), or after a short linger. The oldest
        connection being shed makes room, so every new client gets its 503."""
        # No force_close(): aiohttp's request loop would close the transport before the
        # 503 is out; it waits for a request that data_received never parses.
        self._shed = True
        if len(server.shedding) >= SHED_BAND:
            oldest = server.shedding.popleft()
            if oldest.transport is not None:
                oldest.transport.close()
        server.shedding.append(self)
        transport.write(_SHED)  # type: ignore[attr-defined]
        self._head_deadline = self._loop.call_later(SHED_LINGER_S, transport.close)

    def _no_head(self) -> None:
        self._head_deadline = None
        if self._request_count == 0 and self.transport is not None:
            log.debug("closing a connection that sent no request head in time")
            self.force_close()  # closes the transport too

    def data_received(self, data: bytes) -> None:
        if self._shed:
            if self.transport is not None:
                self.transport.close()
            return
        if not self._aiohttps:
            if self._close or self._force_close:  # shutting down: no new request
                return
            if self._held:
                data, self._held = self._held + data, b""
            server = self._manager
            assert isinstance(server, _Server)
            if self._answering is not None:  # answered in order: after this one
                self._held = data
                if len(data) > server.max_body + MAX_HEAD and self.transport is not None:
                    self._held_paused = True  # the rest waits in the kernel, not here
                    self.transport.pause_reading()
                return
            whole = whole_request(data, server.max_body) if server.whole_answers else None
            if whole == "more":
                self._held = data
                if self._rest_wait is None:
                    self._rest_wait = self._loop.call_later(REST_WAIT_S, self._rest_late)
                return
            self._rest_wait = _cancelled(self._rest_wait)
            if isinstance(whole, WholeRequest):
                self._answer(whole)
                return
            self._to_aiohttp()
        super().data_received(data)
        if self._request_count:
            self._head_deadline = _cancelled(self._head_deadline)

    def _rest_late(self) -> None:
        """The body is slow to come: aiohttp reads it (and times it out) from here."""
        self._rest_wait = None
        self._to_aiohttp()
        held, self._held = self._held, b""
        if held:
            self.data_received(held)

    def _answer(self, request: WholeRequest) -> None:
        self._request_count += 1
        self._head_deadline = _cancelled(self._head_deadline)
        server = self._manager
        assert isinstance(server, _Server) and server.whole_answers is not None
        answer = server.whole_answers(request, self._open_stream)
        self._answering = self._loop.create_task(self._send_whole(answer))

    def _open_stream(self, status: int, headers: Sequence[tuple[str, str]]) -> EventSink:
        self._streamed = True
        return _ChunkedSink(self, status, headers)

    async def _send_whole(self, answer: Awaitable[web.Response | None]) -> None:
        response: web.Response | None = None
        try:
            response = await answer
        except Exception:  # a bug of ours: what was sent so far cannot be trusted
            log.exception("internal error answering a request")
            broken = True
        else:  # an answer after a stream began: it cannot be sent, nor the stream ended
            broken = response is not None and self._streamed
        transport = self.transport
        if transport is None or transport.is_closing():
            return  # (connection_lost comes)
        if broken:
            transport.close()
            return
        if response is not None:  # (None: it was streamed)
            body = response.body
            assert isinstance(body, bytes)
            headers = [(k, v) for k, v in response.headers.items() if k != "Content-Length"]
            date = rfc822_formatted_time()
            transport.write(answer_bytes(response.status, response.reason, headers, body, date))
        self._answering, self._streamed, self._sent = None, False, False
        if self._close or self._force_close:  # shutting down: this was the last answer
            transport.close()
            return
        self._idle_from_now()
        held, self._held = self._held, b""
        if self._held_paused:
            self._held_paused = False
            transport.resume_reading()
        if held:  # the next request came while this one was answered
            self.data_received(held)

    def _process_keepalive(self) -> None:
        if self._aiohttps:
            super()._process_keepalive()
            return
        self._keepalive_handle = None
        if self._answering is not None:  # not idle: its end schedules the next check
            return
        if self._loop.time() < self._next_keepalive_close_time:
            self._keepalive_handle = self._loop.call_at(
                self._next_keepalive_close_time, self._process_keepalive
            )
            return
        self.force_close()  # idle for the whole keep-alive time

    def _idle_from_now(self) -> None:
        """Close the connection if it stays idle for the keep-alive time from now (a
        check already scheduled reschedules itself to the new time)."""
        self._next_keepalive_close_time = self._loop.time() + self._keepalive_timeout
        if self._keepalive_handle is None:
            self._keepalive_handle = self._loop.call_at(
                self._next_keepalive_close_time, self._process_keepalive
            )

    def close(self) -> None:
        """Stop taking requests (the server is stopping): now if idle, else once the
        request being answered is."""
        if self._aiohttps:
            super().close()
            return
        self._close = True
        if self._answering is None:
            self.force_close()

    async def shutdown(self, timeout: float | None = 15.0) -> None:
        """The server stops: the request being answered gets ``timeout`` to finish."""
        if self._aiohttps:
            await super().shutdown(timeout)
            return
        self._close = True
        if self._keepalive_handle is not None:
            self._keepalive_handle.cancel()
        answering = self._answering
        if answering is not None:
            await asyncio.wait({answering}, timeout=timeout)
            answering.cancel()
        self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        server = self._manager
        if self._shed and isinstance(server, _Server):
            with contextlib.suppress(ValueError):
                server.shedding.remove(self)
        self._head_deadline = _cancelled(self._head_deadline)
        self._rest_wait = _cancelled(self._rest_wait)
        if self._answering is not None and not self._sent:  # the client hung up: its
            self._answering.cancel()  # request is dropped
            self._answering = None
        super().connection_lost(exc)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        reason = (message or "malformed request").splitlines()[0][:200]
        log.warning("refused a malformed HTTP request (%d): %s", status, reason)
        error = ApiError(status, f"Malformed HTTP request: {reason}", "invalid_request")
        response = web.Response(status=status, body=error.body(), content_type="application/json")
        response.force_close()
        return response


def _cancelled(timer: asyncio.TimerHandle | None) -> asyncio.TimerHandle | None:
    """Cancel ``timer`` if there is one; what to store in its place (None)."""
    if timer is not None:
        timer.cancel()
    return None


class _ChunkedSink:
    """An event stream to one client, in HTTP/1.1 chunks: the head leaves with the first
    one, and a client that reads slowly holds the relay (not the gateway's memory)."""

    answer: web.StreamResponse | None = None  # nothing is left to send once relayed

    def __init__(self, handler: _Handler, status: int, headers: Sequence[tuple[str, str]]) -> None:
        self.handler, self.status = handler, status
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = ""
        self.head: bytes | None = answer_bytes(
            status, reason, headers, None, rfc822_formatted_time()
        )

    async def _send(self, data: bytes) -> None:
        transport = self.handler.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client has gone")
        if self.head is not None:
            data, self.head = self.head + data, None
        transport.write(data)
        if self.handler.writing_paused:
            await self.handler._drain_helper()

    async def write(self, data: bytes) -> None:
        if data:
            await self._send(chunk(data))

    async def write_eof(self, data: bytes = b"") -> None:
        """The stream's end. A client that hangs up once it has it (as most do) no longer
        cancels the relay, which reads the engine's own end and so keeps its connection
        (dropped, the engine would take a new connection, thread and traceback each)."""
        await self._send(chunk(data) + b"0\r\n\r\n")
        self.handler._sent = True


class _Server(Server):
    """aiohttp's protocol factory, making :class:`_Handler` connections."""

    cap: int
    header_timeout_s: float
    shedding: deque[_Handler]
    whole_answers: WholeAnswers | None
    max_body: int

    def __call__(self) -> RequestHandler:
        return _Handler(self, loop=self._loop, **self._kwargs)


class LimitedRunner(web.AppRunner):
    """An ``AppRunner`` whose connections follow :class:`ListenerLimits`."""

    def __init__(self, app: web.Application, limits: ListenerLimits, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.limits = limits

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        server.__class__ = _Server  # same layout; only __call__ differs
        assert isinstance(server, _Server)
        server.cap = connection_cap(self.limits)
        server.header_timeout_s = self.limits.header_timeout_s
        server.shedding = deque()
        server.whole_answers = self.app.get(WHOLE_ANSWERS)
        server.max_body = self.app._client_max_size
        return server
