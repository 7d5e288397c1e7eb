"""The gateway: the only door to pinned models (design §5).

``mlx_lm.server`` treats any ``"model"`` it does not know as a repo id to download and
load -- and unloads the pinned model first. So clients never talk to it directly: the
gateway sits on the public host/port, in front of servers it reaches only through a
:class:`~mlxpin.gateway.backends.Backends`, and clients address a model by its API label::

    client ──"model": "gemma-4-31b-it"──▶ gateway ──"model": "<snapshot path>"──▶ mlx_lm.server
    client ◀─"model": "gemma-4-31b-it"─── gateway ◀─"model": "<snapshot path>"───

What it does, per route:

- ``POST /v1/chat/completions`` and ``POST /v1/completions``: the body must be a JSON
  object whose ``"model"`` is an api_label, an alias, or absent/null (one model only).
  Anything else is answered here (OpenAI-style 400/404, :mod:`~mlxpin.gateway.checks`)
  without touching a server. The request is forwarded with ``"model"`` set to the exact
  ``--model`` string, and every response gets the canonical api_label back -- SSE
  streams are relayed chunk by chunk (:mod:`~mlxpin.gateway.rewrite`).
- ``GET /v1/models`` and ``GET /v1/models/{label}``: the labels (no upstream call).
- ``GET /health``: what the backends say (launch: 200 only once a real completion
  succeeded since the last (re)start, else 503 ``{"status": "loading"}``).
- anything else: OpenAI-style 404 / 405.

Errors always come back as OpenAI-style JSON (:mod:`~mlxpin.gateway.apierrors`); a client
never sees a traceback. Upstream unreachable → 503 ``upstream_unavailable``; upstream
timeout → 504 ``upstream_timeout``; a malformed upstream answer → 502 ``upstream_error``.

Built on aiohttp (server, and client sessions per upstream); no HTTP parsing of our own.
Request bodies and the api key are never logged.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Final

import aiohttp
from aiohttp import web

from mlxpin.gateway.addresses import ACCEPT_BURST
from mlxpin.gateway.apierrors import ApiError, error_body
from mlxpin.gateway.backends import (
    Backends,
    Lease,
    Route,
    Unavailable,
    Upstream,
)
from mlxpin.gateway.checks import check_request
from mlxpin.gateway.listener import LimitedRunner, ListenerLimits
from mlxpin.gateway.rewrite import Rewriter, SseRelay, rewrite_json
from mlxpin.gateway.routing import RoutingTable
from mlxpin.gateway.upstream import (
    CHAT_PATH,
    COMPLETIONS_PATH,
    UpstreamClient,
    classify_failure,
)

__all__ = ["Gateway", "api_error_response", "error_response", "serve"]

log = logging.getLogger("mlxpin.gateway")

MODELS_PATH: Final = "/v1/models"
HEALTH_PATH: Final = "/health"
BODY_TIMEOUT_S: Final = 60.0
#: How much of a non-JSON upstream error body is quoted back to the client.
_MAX_QUOTED_ERROR: Final = 500

_JSON_CT: Final = "application/json"
_SSE_CT: Final = "text/event-stream"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --------------------------------------------------------------------------- responses


def error_response(
    status: int,
    message: str,
    *,
    type_: str = "invalid_request_error",
    code: str,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """An OpenAI-style error response."""
    return web.Response(
        status=status,
        body=error_body(message, type_, code, param),
        content_type=_JSON_CT,
        headers=headers,
    )


def api_error_response(error: ApiError) -> web.Response:
    return error_response(
        error.status,
        error.message,
        type_=error.type,
        code=error.code,
        param=error.param,
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
            f"Not found. This endpoint serves POST {CHAT_PATH}, POST {COMPLETIONS_PATH}, "
            f"GET {MODELS_PATH} and GET {HEALTH_PATH}",
            "not_found",
        )
    return ApiError(status, exc.reason or "Error", f"http_{status}")


def _unavailable(exc: Unavailable) -> ApiError:
    headers: tuple[tuple[str, str], ...] = ()
    if exc.retry_after_s is not None:
        headers = (("Retry-After", str(max(1, round(exc.retry_after_s)))),)
    return ApiError(exc.status, exc.message, exc.code, headers=headers)


# --------------------------------------------------------------------------- the gateway


class Gateway:
    """The aiohttp application over a :class:`Backends` (see the module docstring)."""

    def __init__(
        self,
        backends: Backends,
        *,
        api_key: str | None = None,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self.backends = backends
        self.table = RoutingTable(backends.routes())
        self.client = UpstreamClient(connect_timeout_s)
        self.expected_auth = None if api_key is None else ("Bearer " + api_key).encode("utf-8")
        self.rewriters: dict[tuple[str, str], Rewriter] = {}

    # ---------------------------------------------------------------- plumbing

    def app(self) -> web.Application:
        """The application (not yet bound; see :func:`serve`)."""
        app = web.Application(
            middlewares=[self._middleware], client_max_size=self.table.max_body_bytes
        )
        app.cleanup_ctx.append(self._client_ctx)
        app.router.add_post(CHAT_PATH, self.completions)
        app.router.add_post(COMPLETIONS_PATH, self.completions)
        app.router.add_get(MODELS_PATH, self.models)
        app.router.add_get(MODELS_PATH + "/{label}", self.model)
        app.router.add_get(HEALTH_PATH, self.health)
        return app

    async def _client_ctx(self, _app: web.Application) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await self.client.close()

    def _authorized(self, request: web.Request) -> bool:
        if self.expected_auth is None or request.path == HEALTH_PATH:
            return True
        got = request.headers.get("Authorization", "")
        # The scheme is case-insensitive (RFC 7235); the key is compared in constant time.
        if got[:7].lower() == "bearer ":
            got = "Bearer " + got[7:].strip()
        return hmac.compare_digest(got.encode("utf-8", "surrogateescape"), self.expected_auth)

    async def _answer(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if not self._authorized(request):
                return error_response(
                    401,
                    "Incorrect or missing API key: send 'Authorization: Bearer <key>'",
                    code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            return await handler(request)
        except web.HTTPException as exc:
            return api_error_response(from_http_exception(exc))
        except Exception:  # a bug of ours: log it, never show it
            log.exception("internal error on %s %s", request.method, request.path)
            return error_response(
                500, "Internal gateway error", type_="server_error", code="internal_error"
            )

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        response = await self._answer(request, handler)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s %s -> %d in %.1f ms",
                request.method,
                request.path,
                response.status,
                (time.perf_counter() - started) * 1000,
            )
        return response

    # ---------------------------------------------------------------- simple routes

    async def models(self, _request: web.Request) -> web.Response:
        return web.Response(body=self.table.models_body, content_type=_JSON_CT)

    async def model(self, request: web.Request) -> web.Response:
        body = self.table.model_body(request.match_info["label"])
        if isinstance(body, ApiError):
            return api_error_response(body)
        return web.Response(body=body, content_type=_JSON_CT)

    async def health(self, _request: web.Request) -> web.Response:
        health = self.backends.health()
        return web.json_response(
            dict(health.body), status=200 if health.ready else 503, dumps=_compact_dumps
        )

    # ---------------------------------------------------------------- completions

    async def completions(self, request: web.Request) -> web.StreamResponse:
        limit = self.table.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise web.HTTPRequestEntityTooLarge(limit, request.content_length)
        try:
            raw = await asyncio.wait_for(request.read(), timeout=BODY_TIMEOUT_S)
        except TimeoutError:
            return api_error_response(
                ApiError(408, "The request body was not sent in time", "timeout")
            )
        checked = check_request(raw, self.table)
        if isinstance(checked, ApiError):
            return api_error_response(checked)
        route, body = checked
        try:
            lease = await self.backends.acquire(route.api_label)
        except Unavailable as exc:
            return api_error_response(_unavailable(exc))
        try:
            return await self._forward(request, route, body, lease)
        finally:
            lease.release()

    def _rewriter(self, upstream: Upstream) -> Rewriter:
        key = (upstream.label, upstream.model)
        rewriter = self.rewriters.get(key)
        if rewriter is None:
            rewriter = self.rewriters[key] = Rewriter(upstream.label, upstream.model)
        return rewriter

    async def _forward(
        self, request: web.Request, route: Route, body: dict[str, Any], lease: Lease
    ) -> web.StreamResponse:
        upstream = lease.upstream
        body["model"] = upstream.model
        try:
            data = _compact_dumps(body).encode()
        except (ValueError, RecursionError):
            return api_error_response(
                ApiError(400, "The request body is nested too deeply", "invalid_json")
            )
        headers = {
            "Content-Type": _JSON_CT,
            "Accept": request.headers.get("Accept", "*/*"),
            "Accept-Encoding": "identity",
        }
        try:
            async with self.client.post(
                upstream, request.path, data, headers, route.request_timeout_s
            ) as answer:
                if answer.content_type == _SSE_CT:
                    return await self._relay_sse(request, answer, lease)
                return await self._relay_json(answer, lease)
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = classify_failure(exc)
            log.warning(
                "upstream request failed (%d %s): %s: %s",
                error.status,
                error.code,
                type(exc).__name__,
                exc,
            )
            return api_error_response(error)

    async def _relay_json(self, answer: aiohttp.ClientResponse, lease: Lease) -> web.Response:
        raw = await answer.read()
        body = rewrite_json(answer.status, raw, lease.upstream.label)
        if body is None:
            log.warning("upstream answered %d with a non-JSON body", answer.status)
            if answer.status < 400:
                return api_error_response(
                    ApiError(
                        502,
                        "The model server sent an incomplete or malformed answer",
                        "upstream_error",
                    )
                )
            quoted = raw[:_MAX_QUOTED_ERROR].decode("utf-8", "replace")
            error = ApiError(answer.status, quoted or answer.reason or "Error", "upstream_error")
            return api_error_response(error)
        if answer.status == 200:
            lease.completed()
        return web.Response(status=answer.status, body=body, content_type=_JSON_CT)

    async def _relay_sse(
        self, request: web.Request, answer: aiohttp.ClientResponse, lease: Lease
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            status=answer.status,
            headers={
                "Content-Type": _SSE_CT,
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            },
        )
        # The server finished the completion once it sends [DONE]: that marks it healthy
        # before the client can see it (and perhaps hang up right away).
        relay = SseRelay(
            self._rewriter(lease.upstream),
            on_done=lease.completed if answer.status == 200 else None,
        )
        try:
            await response.prepare(request)
            failure = await _pump(answer, relay, response)
            if failure is None and answer.status == 200 and not relay.done:
                failure = aiohttp.ClientPayloadError("stream ended before data: [DONE]")
            if failure is not None:
                # The status line is gone already: tell the client in-band (the openai
                # client raises APIError on a data event that carries "error").
                error = classify_failure(failure)
                log.warning("upstream failed mid-stream: %s: %s", type(failure).__name__, failure)
                await response.write(b"data: " + error.body() + b"\n\n")
            await response.write_eof()
        except ConnectionError as exc:
            # The client went away mid-stream. Leaving `async with` in the caller drops the
            # upstream connection, which also ends the server's generation for it.
            log.debug("client disconnected mid-stream: %s", type(exc).__name__)
        return response


async def _pump(
    answer: aiohttp.ClientResponse, relay: SseRelay, response: web.StreamResponse
) -> BaseException | None:
    """Relay the upstream's SSE bytes until it ends; the failure that ended it, if any."""
    read = answer.content.readany
    failure: BaseException | None = None
    while True:
        try:
            chunk = await read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            failure = exc
            break
        if not chunk:
            break
        out = relay.feed(chunk)
        if out:
            await response.write(out)
    tail = relay.finish()
    if tail:
        await response.write(tail)
    return failure


def _compact_dumps(obj: object) -> str:
    import json

    return json.dumps(obj, separators=(",", ":"))


# --------------------------------------------------------------------------- entry points


async def serve(
    app: web.Application,
    host: str,
    port: int,
    limits: ListenerLimits | None = None,
    sockets: Sequence[socket.socket] = (),
) -> web.AppRunner:
    """Serve ``app`` on ``sockets`` (already bound and listening), or else bind
    ``host:port`` (raises OSError if the address is taken).

    Stop it with ``await runner.cleanup()``. With ``port=0`` the bound port is in
    ``runner.addresses``.
    """
    runner = LimitedRunner(
        app,
        limits or ListenerLimits(),
        access_log=None,  # one DEBUG line per request from our middleware instead
        handle_signals=False,  # the runner (poolserver) owns signals
        shutdown_timeout=2.0,
        keepalive_timeout=75.0,  # idle client connections (aiohttp's default is an hour)
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
