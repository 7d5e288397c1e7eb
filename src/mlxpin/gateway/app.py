"""The gateway: the only door to pinned models (design §5).

``mlx_lm.server`` treats any ``"model"`` it does not know as a repo id to download and
load -- and unloads the pinned model first. So clients never reach it directly: the
gateway answers bad requests itself (:mod:`~mlxpin.gateway.checks`), forwards the rest
with ``"model"`` set to the exact ``--model`` string, and puts the api_label back into
every answer, SSE streams included (:mod:`~mlxpin.gateway.rewrite`). Errors are always
OpenAI-style JSON, never a traceback; request bodies and the api key are never logged.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Final

import aiohttp
from aiohttp import web

from mlxpin.gateway.addresses import ACCEPT_BURST
from mlxpin.gateway.apierrors import ApiError
from mlxpin.gateway.backends import Backends, Lease, Route, Unavailable, Upstream
from mlxpin.gateway.checks import check_form, check_request, encode_form
from mlxpin.gateway.fastpath import EventSink, OpenStream, WholeRequest
from mlxpin.gateway.listener import WHOLE_ANSWERS, LimitedRunner, ListenerLimits
from mlxpin.gateway.observe import Exchange
from mlxpin.gateway.relayclient import Answer, RelayClient
from mlxpin.gateway.rewrite import Rewriter, SseRelay, rewrite_json
from mlxpin.gateway.routing import RoutingTable
from mlxpin.gateway.upstream import classify_failure
from mlxpin.project.engines import ALL_ENDPOINTS, TRANSCRIPTIONS_PATH

__all__ = ["Gateway", "api_error_response", "compact_dumps", "serve"]

log = logging.getLogger("mlxpin.gateway")

MODELS_PATH: Final = "/v1/models"
HEALTH_PATH: Final = "/health"
BODY_TIMEOUT_S: Final = 60.0
#: How much of a non-JSON upstream error body is quoted back to the client.
_MAX_QUOTED_ERROR: Final = 500

_JSON_CT: Final = "application/json"
_SSE_CT: Final = "text/event-stream"
_SSE_HEADERS: Final = {
    "Content-Type": _SSE_CT,
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
_SSE_HEADER_LIST: Final = tuple(_SSE_HEADERS.items())


_UNAUTHORIZED: Final = ApiError(
    401,
    "Incorrect or missing API key: send 'Authorization: Bearer <key>'",
    "invalid_api_key",
    headers=(("WWW-Authenticate", "Bearer"),),
)
_MALFORMED: Final = ApiError(
    502, "The model server sent an incomplete or malformed answer", "upstream_error"
)
_ENGINE_DIED: Final = "The model's engine failed and is being restarted; retry shortly"

#: How long the engine's own end of a stream is waited for once the client has [DONE]:
#: past it the connection is dropped rather than kept (and the lease held meanwhile).
_DRAIN_S: Final = 5.0
#: Streams that end with ``data: [DONE]`` (OpenAI chat and text completions).
_DONE_PATHS: Final = frozenset({"/v1/chat/completions", "/v1/completions"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Relay = Callable[[Route, Any, Lease], Awaitable[web.StreamResponse | None]]
#: The request's :class:`Exchange`, when someone observes them.
EXCHANGE: Final = "mlxpin.exchange"
_INTERNAL: Final = ApiError(500, "Internal gateway error", "internal_error")


def compact_dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))


def api_error_response(error: ApiError) -> web.Response:
    """An OpenAI-style error response."""
    return web.Response(
        status=error.status,
        body=error.body(),
        content_type=_JSON_CT,
        headers=dict(error.headers) or None,
    )


def from_http_exception(exc: web.HTTPException) -> ApiError:
    """aiohttp's own 4xx/5xx (no route, wrong method, too large...) as an OpenAI error."""
    status = exc.status
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allow = ", ".join(sorted(exc.allowed_methods))
        message = f"Method {exc.method} is not allowed here; use {allow}"
        return ApiError(405, message, "method_not_allowed", headers=(("Allow", allow),))
    if status == 413:
        return ApiError(413, "Request body is too large", "request_too_large")
    if status == 404:
        return ApiError(
            404,
            "Not found. This endpoint serves "
            + "".join(f"POST {path}, " for path in ALL_ENDPOINTS)
            + f"GET {MODELS_PATH} and GET {HEALTH_PATH}",
            "not_found",
        )
    return ApiError(status, exc.reason or "Error", f"http_{status}")


class Gateway:
    """The aiohttp application over a :class:`Backends` (see the module docstring)."""

    def __init__(
        self,
        backends: Backends,
        *,
        api_key: str | None = None,
        connect_timeout_s: float = 5.0,
        on_exchange: Callable[[Exchange], None] | None = None,
    ) -> None:
        self.backends = backends
        self.on_exchange = on_exchange
        #: Paths open without the key; ``allow`` decides the others' other ways in.
        self.public_paths: set[str] = {HEALTH_PATH}
        self.allow: Callable[[web.Request], bool] = lambda _request: False
        self.table = RoutingTable(backends.routes())
        self.connect_timeout_s = connect_timeout_s
        self.expected_auth = None if api_key is None else ("Bearer " + api_key).encode("utf-8")
        # One client per upstream address (its kept connections), made on first use.
        self.clients: dict[tuple[str, str | None], RelayClient] = {}
        self.rewriters: dict[tuple[str, str], Rewriter] = {}

    def app(self) -> web.Application:
        """The application (not yet bound; see :func:`serve`)."""
        app = web.Application(
            middlewares=[self._middleware], client_max_size=self.table.max_body_bytes
        )
        app.cleanup_ctx.append(self._clients_ctx)
        app[WHOLE_ANSWERS] = self.answer_whole  # plain requests skip aiohttp's (fastpath)
        for path in ALL_ENDPOINTS:
            app.router.add_post(path, self.completions)
        app.router.add_get(MODELS_PATH, self.models)
        app.router.add_get(MODELS_PATH + "/{label}", self.model)
        app.router.add_get(HEALTH_PATH, self.health)
        return app

    async def _clients_ctx(self, _app: web.Application) -> AsyncIterator[None]:
        try:
            yield
        finally:
            clients, self.clients = list(self.clients.values()), {}
            for client in clients:
                client.close()

    def authorized(self, request: web.Request) -> bool:
        if self.expected_auth is None or request.path in self.public_paths:
            return True
        return self.bearer_ok(request) or self.allow(request)

    def bearer_ok(self, request: web.Request) -> bool:
        return self.key_ok(request.headers.get("Authorization", ""))

    def key_ok(self, got: str) -> bool:
        """Whether an Authorization header's value carries the key (or none is needed)."""
        if self.expected_auth is None:
            return True
        # The scheme is case-insensitive (RFC 7235); the key is compared in constant time.
        if got[:7].lower() == "bearer ":
            got = "Bearer " + got[7:].strip()
        return hmac.compare_digest(got.encode("utf-8", "surrogateescape"), self.expected_auth)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        exchange: Exchange | None = None
        if self.on_exchange is not None and request.path in ALL_ENDPOINTS:
            exchange = request[EXCHANGE] = Exchange(request.path, started)

        async def answer() -> web.StreamResponse:
            if self.authorized(request):
                return await handler(request)
            return api_error_response(_UNAUTHORIZED)

        response = await self._guarded(request.method, request.path, exchange, started, answer)
        assert response is not None  # aiohttp's way always has one
        return response

    async def answer_whole(
        self, request: WholeRequest, open_stream: OpenStream
    ) -> web.Response | None:
        """A plain request read whole (see :mod:`~mlxpin.gateway.fastpath`): the key,
        checks, routing, relay and observation that aiohttp's way gives. Its answer, or
        None once an event stream went to a sink from ``open_stream``."""
        path, authorization, raw = request.path, request.authorization, request.body
        started = time.perf_counter()
        exchange = Exchange(path, started) if self.on_exchange is not None else None

        def stream(status: int) -> EventSink:
            return open_stream(status, _SSE_HEADER_LIST)

        async def answer() -> web.StreamResponse | None:
            if not self.key_ok(authorization):
                return api_error_response(_UNAUTHORIZED)
            relay = functools.partial(
                self._forward, path, request.accept, exchange, stream, self._relay_read
            )
            return await self._relay_checked(path, raw, "", exchange, relay)

        response = await self._guarded("POST", path, exchange, started, answer)
        assert response is None or isinstance(response, web.Response)  # whole, or streamed
        return response

    async def _guarded(
        self,
        method: str,
        path: str,
        exchange: Exchange | None,
        started: float,
        answer: Callable[[], Awaitable[web.StreamResponse | None]],
    ) -> web.StreamResponse | None:
        """``answer()``, with errors of ours answered 500 (logged, never shown) and the
        exchange observed: as 499 if the client hung up, unless a stream's status line went
        out already (it may hang up right after [DONE])."""
        response: web.StreamResponse | None
        try:
            response = await answer()
        except web.HTTPException as exc:  # aiohttp's own 4xx/5xx
            response = api_error_response(from_http_exception(exc))
        except Exception:  # a bug of ours: log it, never show it
            log.exception("internal error on %s %s", method, path)
            response = api_error_response(_INTERNAL)
        except asyncio.CancelledError:
            self._observed(exchange, exchange.status or 499 if exchange else 499, started)
            raise
        status = response.status if response is not None else exchange and exchange.status
        self._finished(exchange, method, path, status or 200, started)
        return response

    def _finished(
        self, exchange: Exchange | None, method: str, path: str, status: int, started: float
    ) -> None:
        self._observed(exchange, status, started)
        if log.isEnabledFor(logging.DEBUG):
            took = (time.perf_counter() - started) * 1000
            log.debug("%s %s -> %d in %.1f ms", method, path, status, took)

    def _observed(self, exchange: Exchange | None, status: int, started: float) -> None:
        """Time the exchange now; report it once the answer is on its way (the next loop
        turn, still before any later request is read): metrics and the access log cost
        ~40 us, which the client need not wait for."""
        if exchange is not None and self.on_exchange is not None:
            exchange.status = status
            exchange.duration_s = time.perf_counter() - started
            asyncio.get_running_loop().call_soon(self._report, exchange)

    def _report(self, exchange: Exchange) -> None:
        if exchange.answer is not None:
            exchange.json_body(exchange.answer)
            exchange.answer = None
        if self.on_exchange is not None:
            self.on_exchange(exchange)

    async def models(self, _request: web.Request) -> web.Response:
        return web.Response(body=self.table.models_body, content_type=_JSON_CT)

    async def model(self, request: web.Request) -> web.Response:
        body = self.table.model_body(request.match_info["label"])
        if isinstance(body, ApiError):
            return api_error_response(body)
        return web.Response(body=body, content_type=_JSON_CT)

    async def health(self, request: web.Request) -> web.Response:
        health = self.backends.health()
        body = dict(health.body)
        if not (self.bearer_ok(request) or self.allow(request)):  # open, but names no model
            body = {"status": body["status"]}
        return web.json_response(body, status=200 if health.ready else 503, dumps=compact_dumps)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        limit = self.table.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise web.HTTPRequestEntityTooLarge(limit, request.content_length)
        try:
            if request.content.is_eof():  # the body came with the head: no wait, no timer
                raw = await request.read()
            else:
                async with asyncio.timeout(BODY_TIMEOUT_S):  # no task, unlike wait_for
                    raw = await request.read()
        except TimeoutError:
            return api_error_response(
                ApiError(408, "The request body was not sent in time", "timeout")
            )
        content_type = request.headers.get("Content-Type", "")
        exchange: Exchange | None = request.get(EXCHANGE)
        relay = functools.partial(
            self._forward,
            request.path,
            request.headers.get("Accept", "*/*"),
            exchange,
            functools.partial(_AiohttpSink, request),
            functools.partial(self._relay_raw, request),
        )
        answered = await self._relay_checked(request.path, raw, content_type, exchange, relay)
        assert answered is not None  # aiohttp's way always has a response
        return answered

    async def _relay_checked(
        self, path: str, raw: bytes, content_type: str, exchange: Exchange | None, relay: Relay
    ) -> web.StreamResponse | None:
        """Check the request, take a lease on its model, relay it with ``relay``."""
        checked = (
            check_form(raw, content_type, self.table, path)
            if path == TRANSCRIPTIONS_PATH
            else check_request(raw, self.table, path)
        )
        if isinstance(checked, ApiError):
            return api_error_response(checked)
        route, body = checked
        if exchange is not None:
            exchange.label = route.api_label
            exchange.stream = isinstance(body, dict) and body.get("stream") is True
        try:
            lease = await self.backends.acquire(route.api_label)
        except Unavailable as exc:
            return api_error_response(exc.error)
        try:
            return await relay(route, body, lease)
        finally:
            lease.release()

    def _client(self, upstream: Upstream) -> RelayClient:
        key = (upstream.url, upstream.socket_path)
        client = self.clients.get(key)
        if client is None:
            client = self.clients[key] = RelayClient(upstream, self.connect_timeout_s)
        return client

    def _rewriter(self, upstream: Upstream) -> Rewriter:
        key = (upstream.label, upstream.model)
        rewriter = self.rewriters.get(key)
        if rewriter is None:
            rewriter = self.rewriters[key] = Rewriter(upstream.label, upstream.model)
        return rewriter

    async def _send(
        self, path: str, accept: str, route: Route, body: Any, lease: Lease
    ) -> Answer | web.Response:
        """Send the checked request with the server's own ``model`` string: the answer's
        head, or the error to answer instead."""
        upstream = lease.upstream
        content_type = _JSON_CT
        if isinstance(body, list):  # a multipart form's parts
            data, content_type = encode_form(body, upstream.model)
        else:
            body["model"] = upstream.model
            try:
                data = compact_dumps(body).encode()
            except (ValueError, RecursionError):
                return api_error_response(
                    ApiError(400, "The request body is nested too deeply", "invalid_json")
                )
        headers = {"Content-Type": content_type, "Accept": accept, "Accept-Encoding": "identity"}
        try:
            return await self._client(upstream).post(path, data, headers, route.request_timeout_s)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return self._failed(exc)

    @staticmethod
    def _failed(exc: aiohttp.ClientError | TimeoutError) -> web.Response:
        error = classify_failure(exc)
        log.warning(
            "upstream request failed (%d %s): %s: %s",
            error.status,
            error.code,
            type(exc).__name__,
            exc,
        )
        return api_error_response(error)

    async def _forward(
        self,
        path: str,
        accept: str,
        exchange: Exchange | None,
        stream: Callable[[int], EventSink],
        other: Callable[[Answer, Lease], Awaitable[web.StreamResponse]],
        route: Route,
        body: Any,
        lease: Lease,
    ) -> web.StreamResponse | None:
        """Send the checked request, relay the answer: an event stream to a sink from
        ``stream``, JSON (and any error) rewritten, other bytes by ``other``. None when the
        sink sent the stream already."""
        answer = await self._send(path, accept, route, body, lease)
        if not isinstance(answer, Answer):
            return answer
        try:
            try:
                if answer.content_type == _SSE_CT:
                    sink = stream(answer.status)
                    await self._relay_sse(path, exchange, answer, lease, sink)
                    return sink.answer
                if answer.content_type != _JSON_CT and answer.status < 400:
                    return await other(answer, lease)
                response = await self._relay_json(answer, lease)
            finally:
                answer.close()  # a relay that did not reach the end drops the connection
        except (aiohttp.ClientError, TimeoutError) as exc:
            return self._failed(exc)
        if exchange is not None and answer.status == 200 and response.body:
            exchange.answer = response.body  # type: ignore[assignment]  # its usage, later
        return response

    async def _relay_read(self, answer: Answer, lease: Lease) -> web.Response:
        raw = await answer.read()
        if answer.status == 200:
            lease.completed()
        content_type = answer.headers.get("content-type", "application/octet-stream")
        return web.Response(status=answer.status, body=raw, headers={"Content-Type": content_type})

    async def _relay_json(self, answer: Answer, lease: Lease) -> web.Response:
        raw = await answer.read()
        upstream = lease.upstream
        body = rewrite_json(answer.status, raw, upstream.label, self._rewriter(upstream))
        if body is None:
            log.warning("upstream answered %d with a non-JSON body", answer.status)
            if answer.status < 400:
                return api_error_response(_MALFORMED)
            quoted = raw[:_MAX_QUOTED_ERROR].decode("utf-8", "replace")
            error = ApiError(answer.status, quoted or answer.reason or "Error", "upstream_error")
            return api_error_response(error)
        if answer.status == 200:
            lease.completed()
        elif answer.status == 404 and b"generation thread died" in raw:  # mlx_lm.server's
            lease.health.healthy = False  # the liveness probe has it restarted
            return api_error_response(Unavailable(_ENGINE_DIED, retry_after_s=5).error)
        return web.Response(status=answer.status, body=body, content_type=_JSON_CT)

    async def _relay_raw(
        self, request: web.Request, answer: Answer, lease: Lease
    ) -> web.StreamResponse:
        """Audio, text and ndjson answers, chunk by chunk as they come (no label in them)."""
        response = web.StreamResponse(
            status=answer.status, headers={"Content-Type": answer.headers.get("content-type", "")}
        )
        exchange: Exchange | None = request.get(EXCHANGE)
        try:
            await response.prepare(request)
            if exchange is not None:
                exchange.status = response.status
            async for chunk in answer.iter_any():
                await response.write(chunk)
            await response.write_eof()
        except ConnectionError as exc:
            log.debug("client disconnected mid-answer: %s", type(exc).__name__)
            return response
        if answer.status == 200:
            lease.completed()
        return response

    async def _relay_sse(
        self, path: str, exchange: Exchange | None, answer: Answer, lease: Lease, sink: EventSink
    ) -> None:
        """Relay an event stream chunk by chunk to ``sink`` (its status line and headers
        leave with the first event)."""
        # The server finished the completion once it sends [DONE]: that marks it healthy
        # before the client can see it (and perhaps hang up right away).
        relay = SseRelay(
            self._rewriter(lease.upstream),
            on_done=lease.completed if answer.status == 200 else None,
        )
        failure: BaseException | None = None
        ends_at_done = path in _DONE_PATHS
        ended = False  # the client's answer is whole: [DONE] went out with its end
        try:
            try:
                async for chunk in answer.iter_any():
                    out = relay.feed(chunk)
                    if not out or ended:
                        continue  # nothing follows [DONE] for the client
                    if exchange is not None:
                        if exchange.first_byte is None:  # the status line goes out now
                            exchange.status = sink.status
                            exchange.first_byte = time.perf_counter()
                        if b'"usage"' in out:
                            exchange.sse_block(out)
                    if relay.done and ends_at_done:
                        # The last event and the answer's end leave together; the
                        # server's own end is still read, so its connection can be kept.
                        await sink.write_eof(out)
                        ended = True
                        answer.read_timeout_s = min(answer.read_timeout_s, _DRAIN_S)
                    else:
                        await sink.write(out)
            except (aiohttp.ClientError, TimeoutError) as exc:
                failure = exc
            if ended:
                return
            tail = relay.finish()
            if tail:
                await sink.write(tail)
            if failure is None and answer.status == 200 and not relay.done:
                if ends_at_done:
                    failure = aiohttp.ClientPayloadError("stream ended before data: [DONE]")
                else:  # Responses and Messages streams end with an event, not [DONE]
                    lease.completed()
            if failure is not None:
                # The status line is decided already: tell the client in-band (the openai
                # client raises APIError on a data event that carries "error").
                error = classify_failure(failure)
                log.warning("upstream failed mid-stream: %s: %s", type(failure).__name__, failure)
                await sink.write(b"data: " + error.body() + b"\n\n")
            await sink.write_eof()
        except ConnectionError as exc:
            # The client went away mid-stream. Leaving `async with` in the caller drops the
            # upstream connection, which also ends the server's generation for it.
            log.debug("client disconnected mid-stream: %s", type(exc).__name__)


class _EventStream(web.StreamResponse):
    """An SSE answer whose status line and headers leave with its first event: one send
    to the client, not two (aiohttp's own ``Response`` does the same with its body)."""

    _send_headers_immediately = False


class _AiohttpSink:
    """An :class:`EventSink` over aiohttp's response to ``request``."""

    def __init__(self, request: web.Request, status: int) -> None:
        self.request = request
        self.response = _EventStream(status=status, headers=_SSE_HEADERS)
        self.answer: web.StreamResponse | None = self.response  # aiohttp sends it
        self.status = status
        self.prepared = False

    async def _prepared(self) -> web.StreamResponse:
        if not self.prepared:
            self.prepared = True
            await self.response.prepare(self.request)
        return self.response

    async def write(self, data: bytes) -> None:
        await (await self._prepared()).write(data)

    async def write_eof(self, data: bytes = b"") -> None:
        await (await self._prepared()).write_eof(data)


async def serve(
    app: web.Application,
    host: str,
    port: int,
    limits: ListenerLimits | None = None,
    sockets: Sequence[socket.socket] = (),
) -> web.AppRunner:
    """Serve ``app`` on ``sockets`` (bound and listening), or else bind ``host:port``
    (OSError if taken). Stop it with ``await runner.cleanup()``."""
    runner = LimitedRunner(
        app,
        limits or ListenerLimits(),
        access_log=None,  # one DEBUG line per request from our middleware instead
        handle_signals=False,  # the runner (poolserver) owns signals
        shutdown_timeout=2.0,
        keepalive_timeout=75.0,  # idle client connections (aiohttp's default is an hour)
        # A client that hangs up cancels its handler: the upstream request is dropped and
        # the lease released at once, not after the read timeout (issue #20 item 7).
        handler_cancellation=True,
    )
    await runner.setup()
    burst = ACCEPT_BURST  # asyncio accepts up to its backlog per wake-up, unseen
    sites: list[web.BaseSite] = [web.SockSite(runner, sock, backlog=burst) for sock in sockets]
    if not sites:
        sites.append(web.TCPSite(runner, host, port, backlog=burst))
    try:
        for site in sites:
            await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
