"""The gateway: the only door to a pinned model (design §5).

``mlx_lm.server`` treats any ``"model"`` it does not know as a repo id to download and
load -- and unloads the pinned model first. So clients never talk to it directly: the
gateway sits on the model's public host/port, in front of a ``mlx_lm.server`` on a
private loopback port, and clients address the model by its API label::

    client ──"model": "gemma-4-31b-it"──▶ gateway ──"model": "<snapshot path>"──▶ mlx_lm.server
    client ◀─"model": "gemma-4-31b-it"─── gateway ◀─"model": "<snapshot path>"───

What it does, per route:

- ``POST /v1/chat/completions`` and ``POST /v1/completions``: the body must be a JSON
  object whose ``"model"`` is the api_label, an alias, or absent/null. Anything else is
  answered here (OpenAI-style 400/404) without touching the server. The request is
  forwarded with ``"model"`` set to the exact ``--model`` string, and every response gets
  the canonical api_label back -- SSE streams are relayed chunk by chunk, rewriting each
  ``data:`` event as it passes, never buffering more than one incomplete line.
- ``GET /v1/models``: the label and aliases (no upstream call).
- ``GET /health``: 200 only once a real completion succeeded since the last (re)start
  (:class:`GatewayState`), else 503 ``{"status": "loading"}``.
- anything else: OpenAI-style 404 / 405.

Errors always come back as OpenAI-style JSON (``{"error": {"message", "type", "param",
"code"}}``); a client never sees a traceback. Upstream unreachable → 503
``upstream_unavailable``; upstream timeout → 504 ``upstream_timeout``; a malformed
upstream answer → 502 ``upstream_error``.

Built on aiohttp (server and one shared, keep-alive client session); no HTTP parsing of
our own. Request bodies and the api key are never logged.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
from aiohttp import web
from yarl import URL

__all__ = [
    "GatewayConfig",
    "GatewayState",
    "build_app",
    "start_gateway",
    "warm_up",
]

log = logging.getLogger("mlxpin.gateway")

CHAT_PATH: Final = "/v1/chat/completions"
COMPLETIONS_PATH: Final = "/v1/completions"
MODELS_PATH: Final = "/v1/models"
HEALTH_PATH: Final = "/health"

#: An SSE line longer than this is relayed untouched instead of being held for rewriting.
MAX_SSE_LINE_BYTES: Final = 16 * 1024 * 1024
#: How much of a non-JSON upstream error body is quoted back to the client.
_MAX_QUOTED_ERROR: Final = 500

_JSON_CT: Final = "application/json"
_SSE_CT: Final = "text/event-stream"


# --------------------------------------------------------------------------- config/state


@dataclass(frozen=True)
class GatewayConfig:
    """Everything the gateway needs to know; built by ``launch`` from manifest + plan."""

    api_label: str
    """The canonical label clients send; put back in every response."""
    aliases: tuple[str, ...]
    """Extra labels that are accepted (and answered with the canonical label)."""
    upstream_url: str
    """Base URL of the private ``mlx_lm.server``, e.g. ``http://127.0.0.1:53121``."""
    upstream_model: str
    """The exact ``--model`` string the server was started with."""
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None
    """If set, every endpoint but ``/health`` requires ``Authorization: Bearer <key>``."""
    max_body_bytes: int = 8 * 1024 * 1024
    upstream_connect_timeout_s: float = 5.0
    upstream_read_timeout_s: float = 600.0
    """Longest silence between two reads from the upstream (generation can be slow)."""

    def __post_init__(self) -> None:
        if not self.api_label:
            raise ValueError("api_label must not be empty")
        if not isinstance(self.aliases, tuple):
            raise TypeError("aliases must be a tuple of strings")
        url = URL(self.upstream_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"upstream_url must be an http(s) URL, got {self.upstream_url!r}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.max_body_bytes <= 0:
            raise ValueError("max_body_bytes must be positive")
        if self.upstream_connect_timeout_s <= 0 or self.upstream_read_timeout_s <= 0:
            raise ValueError("upstream timeouts must be positive")
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key must be None or a non-empty string")

    @property
    def labels(self) -> tuple[str, ...]:
        """The canonical label first, then the aliases (without duplicates)."""
        return tuple(dict.fromkeys((self.api_label, *self.aliases)))

    def __repr__(self) -> str:  # never show the key, e.g. in a --dry-run or a log
        key = None if self.api_key is None else "***"
        return (
            f"GatewayConfig(api_label={self.api_label!r}, aliases={self.aliases!r}, "
            f"upstream_url={self.upstream_url!r}, upstream_model={self.upstream_model!r}, "
            f"host={self.host!r}, port={self.port!r}, api_key={key!r}, "
            f"max_body_bytes={self.max_body_bytes!r}, "
            f"upstream_connect_timeout_s={self.upstream_connect_timeout_s!r}, "
            f"upstream_read_timeout_s={self.upstream_read_timeout_s!r})"
        )


@dataclass(eq=False)
class GatewayState:
    """Mutable state shared by the gateway and the supervisor (one asyncio loop).

    ``healthy`` turns True only when a real completion succeeds; ``mark_restarting`` turns
    it False and starts a new *epoch*, so that a completion which began against the old
    server process cannot mark the new one healthy when it finishes late.
    """

    healthy: bool = False
    epoch: int = 0
    forwarded: int = 0
    """Requests sent on to the upstream."""
    rejected: int = 0
    """Requests answered by the gateway itself with a 4xx (auth, body, model, size, route)."""
    upstream_errors: int = 0
    """Forwarded requests that failed at the upstream (unreachable, timeout, malformed)."""
    completions_ok: int = 0
    """Upstream 200 completions relayed in full (warm-ups included)."""
    in_flight: int = 0
    restarts: int = 0

    def mark_restarting(self) -> None:
        """The server is going down (or coming up again): not healthy until a completion."""
        self.healthy = False
        self.epoch += 1
        self.restarts += 1

    def mark_healthy(self, epoch: int | None = None) -> bool:
        """Record a successful completion started in ``epoch`` (default: the current one).

        Returns False, changing nothing, if a restart happened since that epoch.
        """
        if epoch is not None and epoch != self.epoch:
            return False
        self.healthy = True
        self.completions_ok += 1
        return True

    def as_dict(self) -> dict[str, int | bool]:
        """A plain snapshot for ``status`` / ``--json``."""
        return {
            "healthy": self.healthy,
            "epoch": self.epoch,
            "restarts": self.restarts,
            "forwarded": self.forwarded,
            "rejected": self.rejected,
            "upstream_errors": self.upstream_errors,
            "completions_ok": self.completions_ok,
            "in_flight": self.in_flight,
        }


# --------------------------------------------------------------------------- errors


def _error_body(message: str, type_: str, code: str, param: str | None = None) -> bytes:
    err = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return json.dumps(err, separators=(",", ":")).encode()


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
        body=_error_body(message, type_, code, param),
        content_type=_JSON_CT,
        headers=headers,
    )


def _from_http_exception(exc: web.HTTPException) -> web.Response:
    """Turn aiohttp's own 4xx/5xx (no route, wrong method, too large...) into OpenAI JSON."""
    status = exc.status
    headers: dict[str, str] | None = None
    if isinstance(exc, web.HTTPMethodNotAllowed):
        headers = {"Allow": ", ".join(sorted(exc.allowed_methods))}
        message = f"Method {exc.method} is not allowed here; use {headers['Allow']}"
        return error_response(405, message, code="method_not_allowed", headers=headers)
    if status == 413:
        return error_response(
            413, "Request body is too large", code="request_too_large", param=None
        )
    if status == 404:
        return error_response(
            404,
            f"Not found. This endpoint serves POST {CHAT_PATH}, POST {COMPLETIONS_PATH}, "
            f"GET {MODELS_PATH} and GET {HEALTH_PATH}",
            code="not_found",
        )
    type_ = "server_error" if status >= 500 else "invalid_request_error"
    return error_response(status, exc.reason or "Error", type_=type_, code=f"http_{status}")


# --------------------------------------------------------------------------- app plumbing

_CONFIG: Final = web.AppKey("mlxpin_gateway_config", GatewayConfig)
_STATE: Final = web.AppKey("mlxpin_gateway_state", GatewayState)
BODY_TIMEOUT_S: Final = 60.0

_IMAGE_PART_TYPES: Final = frozenset({"image_url", "input_image", "image"})


def _remote_image_url(messages: object) -> str | None:
    """The first image URL in chat messages that is not an inline data: URL."""
    if not isinstance(messages, list):
        return None
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for part in content:
            if not isinstance(part, dict) or part.get("type") not in _IMAGE_PART_TYPES:
                continue
            url = part.get("image_url", part.get("image"))
            if isinstance(url, dict):
                url = url.get("url")
            if url is not None and not (isinstance(url, str) and url.startswith("data:")):
                return str(url)
    return None


# Request fields mlx_lm.server would resolve to other weights to load.
PINNED_FIELDS: Final = frozenset({"draft_model", "adapters", "adapter", "adapter_path"})

_SESSION: Final = web.AppKey("mlxpin_gateway_session", aiohttp.ClientSession)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Rewriter:
    """Puts the canonical label into upstream JSON, as cheaply as is safe.

    For SSE events the common case is a byte substitution: ``mlx_lm.server`` writes
    ``json.dumps(resp)`` (default separators, ASCII-escaped), so its top-level pair reads
    exactly ``"model": <json.dumps(upstream_model)>``. In valid JSON that byte sequence,
    when the quote before ``model`` is not escaped, can only be a ``"model"`` key with that
    exact value; when it occurs exactly once it is the one we must rewrite. Anything else
    (other formatting, several matches, a preceding backslash) takes the general path:
    ``json.loads`` + ``json.dumps``. Both paths are tested to agree.
    """

    __slots__ = ("label", "label_json", "needle", "replacement")

    def __init__(self, label: str, upstream_model: str) -> None:
        self.label = label
        self.needle = b'"model": ' + json.dumps(upstream_model).encode()
        self.label_json = json.dumps(label).encode()
        self.replacement = b'"model": ' + self.label_json

    def event_payload(self, payload: bytes) -> bytes:
        """Rewrite one SSE ``data:`` payload (without the ``data:`` prefix)."""
        if payload.count(self.needle) == 1:
            at = payload.find(self.needle)
            if at > 0 and payload[at - 1] != 0x5C:  # not preceded by a backslash
                return payload.replace(self.needle, self.replacement, 1)
        try:
            obj = json.loads(payload)
        except ValueError:
            return payload  # not JSON: relay untouched
        if isinstance(obj, dict) and "model" in obj:
            obj["model"] = self.label
            return json.dumps(obj, separators=(",", ":")).encode()
        return payload

    def sse_block(self, block: bytes) -> bytes:
        """Rewrite a run of complete SSE lines (``block`` ends with a newline)."""
        if b"data:" not in block:  # keep-alive comments, blank lines
            return block
        lines = block.split(b"\n")
        for i, line in enumerate(lines):
            if not line.startswith(b"data:"):
                continue
            cr = line.endswith(b"\r")
            raw = line[5:-1] if cr else line[5:]
            lead = b" " if raw.startswith(b" ") else b""
            payload = raw[1:] if lead else raw
            if not payload.startswith(b"{"):
                continue  # "[DONE]" and anything that is not an object pass untouched
            new = self.event_payload(payload)
            if new is not payload:
                lines[i] = b"data:" + lead + new + (b"\r" if cr else b"")
        return b"\n".join(lines)


class _SseRelay:
    """Per-stream state: holds at most one incomplete line between upstream reads."""

    __slots__ = ("done", "on_done", "pending", "rewriter")

    def __init__(self, rewriter: _Rewriter, on_done: Callable[[], object] | None = None) -> None:
        self.rewriter = rewriter
        self.on_done = on_done
        """Called once, before the block holding ``data: [DONE]`` is returned."""
        self.pending = b""
        self.done = False

    def _check_done(self, block: bytes) -> None:
        if not self.done and b"[DONE]" in block and _has_done_line(block):
            self.done = True
            if self.on_done is not None:
                self.on_done()

    def feed(self, chunk: bytes) -> bytes:
        """The rewritten complete lines of ``pending + chunk``; keeps the incomplete rest."""
        cut = chunk.rfind(b"\n")
        if cut < 0:
            self.pending += chunk
            if len(self.pending) <= MAX_SSE_LINE_BYTES:
                return b""
            out, self.pending = self.pending, b""  # absurdly long line: relay untouched
            return out
        head = chunk[: cut + 1]
        if self.pending:
            head = self.pending + head
        self.pending = chunk[cut + 1 :]
        self._check_done(head)
        return self.rewriter.sse_block(head)

    def finish(self) -> bytes:
        """Whatever is left when the upstream ends (a last line without newline)."""
        rest, self.pending = self.pending, b""
        if not rest:
            return b""
        self._check_done(rest)
        return self.rewriter.sse_block(rest + b"\n")[:-1]


def _has_done_line(block: bytes) -> bool:
    return any(
        line.startswith(b"data:") and line[5:].strip() == b"[DONE]" for line in block.split(b"\n")
    )


def build_app(config: GatewayConfig, state: GatewayState) -> web.Application:
    """The gateway as an aiohttp application (not yet bound; see :func:`start_gateway`)."""
    accepted = frozenset(config.labels)
    available = ", ".join(config.labels)
    base = URL(config.upstream_url)
    upstream_urls = {
        CHAT_PATH: base.with_path(base.path.rstrip("/") + CHAT_PATH),
        COMPLETIONS_PATH: base.with_path(base.path.rstrip("/") + COMPLETIONS_PATH),
    }
    rewriter = _Rewriter(config.api_label, config.upstream_model)
    expected_auth = None if config.api_key is None else ("Bearer " + config.api_key).encode("utf-8")
    models_body = json.dumps(
        {
            "object": "list",
            "data": [
                {"id": label, "object": "model", "created": 0, "owned_by": "mlxpin"}
                for label in config.labels
            ],
        },
        separators=(",", ":"),
    ).encode()
    health_ok_body = json.dumps({"status": "ok", "model": config.api_label}).encode()
    health_loading_body = b'{"status":"loading"}'

    # ---------------------------------------------------------------- middleware

    def _authorized(request: web.Request) -> bool:
        assert expected_auth is not None
        got = request.headers.get("Authorization", "")
        # The scheme is case-insensitive (RFC 7235); the key is compared in constant time.
        if got[:7].lower() == "bearer ":
            got = "Bearer " + got[7:].strip()
        return hmac.compare_digest(got.encode("utf-8", "surrogateescape"), expected_auth)

    @web.middleware
    async def gateway_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        response: web.StreamResponse
        try:
            if (
                expected_auth is not None
                and request.path != HEALTH_PATH
                and not _authorized(request)
            ):
                state.rejected += 1
                response = error_response(
                    401,
                    "Incorrect or missing API key: send 'Authorization: Bearer <key>'",
                    code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            else:
                response = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 500:
                state.rejected += 1
            response = _from_http_exception(exc)
        except Exception:  # a bug of ours: log it, never show it
            log.exception("internal error on %s %s", request.method, request.path)
            response = error_response(
                500, "Internal gateway error", type_="server_error", code="internal_error"
            )
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

    async def models(_request: web.Request) -> web.Response:
        return web.Response(body=models_body, content_type=_JSON_CT)

    async def health(_request: web.Request) -> web.Response:
        if state.healthy:
            return web.Response(body=health_ok_body, content_type=_JSON_CT)
        return web.Response(status=503, body=health_loading_body, content_type=_JSON_CT)

    # ---------------------------------------------------------------- completions

    def _rewrite_json(status: int, raw: bytes) -> bytes | None:
        """The upstream JSON with the canonical label, or None if it is not JSON."""
        try:
            obj = json.loads(raw)
        except ValueError:
            return None
        if isinstance(obj, dict):
            if status < 400 or "model" in obj:
                obj["model"] = config.api_label
            err = obj.get("error")
            if status >= 400 and isinstance(err, str):
                # mlx_lm.server answers {"error": "<text>"}; clients expect OpenAI's shape.
                obj["error"] = {
                    "message": err,
                    "type": "server_error" if status >= 500 else "invalid_request_error",
                    "param": None,
                    "code": None,
                }
        return json.dumps(obj, separators=(",", ":")).encode()

    async def _relay_json(upstream: aiohttp.ClientResponse, epoch: int) -> web.StreamResponse:
        raw = await upstream.read()
        body = _rewrite_json(upstream.status, raw)
        if body is None:
            state.upstream_errors += 1
            quoted = raw[:_MAX_QUOTED_ERROR].decode("utf-8", "replace")
            log.warning("upstream answered %d with a non-JSON body", upstream.status)
            if upstream.status < 400:
                return error_response(
                    502,
                    "The model server sent an incomplete or malformed answer",
                    type_="server_error",
                    code="upstream_error",
                )
            type_ = "server_error" if upstream.status >= 500 else "invalid_request_error"
            return error_response(
                upstream.status,
                quoted or upstream.reason or "Error",
                type_=type_,
                code="upstream_error",
            )
        if upstream.status == 200:
            state.mark_healthy(epoch)
        return web.Response(status=upstream.status, body=body, content_type=_JSON_CT)

    async def _relay_sse(
        request: web.Request, upstream: aiohttp.ClientResponse, epoch: int
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            status=upstream.status,
            headers={
                "Content-Type": _SSE_CT,
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            },
        )
        # The server finished the completion once it sends [DONE]: that marks it healthy
        # before the client can see it (and perhaps hang up right away).
        relay = _SseRelay(
            rewriter,
            on_done=(lambda: state.mark_healthy(epoch)) if upstream.status == 200 else None,
        )
        read = upstream.content.readany
        failure: BaseException | None = None
        try:
            await response.prepare(request)
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
            if failure is None and upstream.status == 200 and not relay.done:
                failure = aiohttp.ClientPayloadError("stream ended before data: [DONE]")
            if failure is not None:
                # The status line is gone already: tell the client in-band (the openai
                # client raises APIError on a data event that carries "error").
                state.upstream_errors += 1
                _status, type_, code, message = _classify_upstream_error(failure)
                log.warning("upstream failed mid-stream: %s: %s", type(failure).__name__, failure)
                await response.write(b"data: " + _error_body(message, type_, code) + b"\n\n")
            await response.write_eof()
        except ConnectionError as exc:
            # The client went away mid-stream. Leaving `async with` in the caller drops the
            # upstream connection, which also ends the server's generation for it.
            log.debug("client disconnected mid-stream: %s", type(exc).__name__)
            return response
        return response

    async def completions(request: web.Request) -> web.StreamResponse:
        if request.content_length is not None and request.content_length > config.max_body_bytes:
            raise web.HTTPRequestEntityTooLarge(config.max_body_bytes, request.content_length)
        try:
            raw = await asyncio.wait_for(request.read(), timeout=BODY_TIMEOUT_S)
        except TimeoutError:
            state.rejected += 1
            return error_response(408, "The request body was not sent in time", code="timeout")
        try:
            body: Any = json.loads(raw)
        except ValueError:  # JSONDecodeError and UnicodeDecodeError
            state.rejected += 1
            return error_response(400, "The request body is not valid JSON", code="invalid_json")
        if not isinstance(body, dict):
            state.rejected += 1
            return error_response(
                400, "The request body must be a JSON object", code="invalid_json"
            )
        model = body.get("model")
        if model is not None and (not isinstance(model, str) or model not in accepted):
            state.rejected += 1
            shown = model if isinstance(model, str) else json.dumps(model)
            return error_response(
                404,
                f"The model '{shown[:200]}' does not exist. Available: {available}",
                code="model_not_found",
                param="model",
            )
        remote = _remote_image_url(body.get("messages"))
        if remote is not None:
            # mlx_lm.server would fetch it itself (urlopen), from wherever it points:
            # launch promises no network, and the private server is nobody's proxy.
            state.rejected += 1
            return error_response(
                400,
                f"Image URLs are not fetched ({remote[:100]!r}): send the image inline as a "
                "data: URL",
                code="unsupported_parameter",
                param="messages",
            )
        pinned = PINNED_FIELDS.intersection(body)
        if pinned:
            # mlx_lm.server would load these as repos or paths (and unload the pinned model
            # first), exactly like an unknown "model": the manifest decides them.
            state.rejected += 1
            field = sorted(pinned)[0]
            return error_response(
                400,
                f"'{field}' cannot be chosen per request: this endpoint serves a pinned "
                "model, draft model and adapter (see the mlxpin manifest)",
                code="unsupported_parameter",
                param=field,
            )
        body["model"] = config.upstream_model
        data = json.dumps(body, separators=(",", ":")).encode()
        headers = {
            "Content-Type": _JSON_CT,
            "Accept": request.headers.get("Accept", "*/*"),
            "Accept-Encoding": "identity",
        }
        session = request.app[_SESSION]
        epoch = state.epoch
        state.forwarded += 1
        state.in_flight += 1
        try:
            async with session.post(
                upstream_urls[request.path], data=data, headers=headers
            ) as upstream:
                if upstream.content_type == _SSE_CT:
                    return await _relay_sse(request, upstream, epoch)
                return await _relay_json(upstream, epoch)
        except (aiohttp.ClientError, TimeoutError) as exc:
            state.upstream_errors += 1
            status, type_, code, message = _classify_upstream_error(exc)
            log.warning(
                "upstream request failed (%d %s): %s: %s",
                status,
                code,
                type(exc).__name__,
                exc,
            )
            return error_response(status, message, type_=type_, code=code)
        finally:
            state.in_flight -= 1

    # ---------------------------------------------------------------- session lifetime

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(
            limit=256,
            keepalive_timeout=30.0,
        )
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=config.upstream_connect_timeout_s,
            sock_read=config.upstream_read_timeout_s,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
            raise_for_status=False,
        )
        app[_SESSION] = session
        try:
            yield
        finally:
            await session.close()

    app = web.Application(
        middlewares=[gateway_middleware],
        client_max_size=config.max_body_bytes,
    )
    app[_CONFIG] = config
    app[_STATE] = state
    app.cleanup_ctx.append(session_ctx)
    app.router.add_post(CHAT_PATH, completions)
    app.router.add_post(COMPLETIONS_PATH, completions)
    app.router.add_get(MODELS_PATH, models)
    app.router.add_get(HEALTH_PATH, health)
    return app


def _classify_upstream_error(exc: BaseException) -> tuple[int, str, str, str]:
    """(status, type, code, message) for a failure talking to the upstream."""
    if isinstance(exc, TimeoutError):  # ServerTimeoutError and friends included
        return 504, "server_error", "upstream_timeout", "The model server did not answer in time"
    if isinstance(exc, aiohttp.ClientConnectionError):
        return (
            503,
            "server_error",
            "upstream_unavailable",
            "The model server is not available (starting or restarting); retry shortly",
        )
    return (
        502,
        "server_error",
        "upstream_error",
        "The model server sent an incomplete or malformed answer",
    )


# --------------------------------------------------------------------------- entry points


async def warm_up(config: GatewayConfig, state: GatewayState, *, timeout_s: float) -> bool:
    """Send one 1-token chat completion straight to the upstream.

    On an upstream 200 with a JSON completion, marks the state healthy (unless a restart
    happened meanwhile) and returns True. Any failure returns False; the caller retries.
    """
    return await warm_up_status(config, state, timeout_s=timeout_s) == "ok"


async def warm_up_status(config: GatewayConfig, state: GatewayState, *, timeout_s: float) -> str:
    """Like `warm_up`, telling failures apart: "ok"; "unreachable" (not listening yet,
    or no answer in time); "error" (it answered, but not with a completion — a server
    that cannot load its model says so at once and will not recover by waiting)."""
    epoch = state.epoch
    base = URL(config.upstream_url)
    url = base.with_path(base.path.rstrip("/") + CHAT_PATH)
    payload = {
        "model": config.upstream_model,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 1,
        "stream": False,
    }
    timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(timeout_s, 5.0))
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(url, json=payload, headers={"Accept-Encoding": "identity"}) as resp,
        ):
            raw = await resp.read()
            if resp.status != 200:
                log.debug("warm-up: upstream answered %d: %s", resp.status, raw[:200])
                return "error"
            answer = json.loads(raw)
    except ValueError as exc:
        log.debug("warm-up: not JSON: %s", exc)
        return "error"
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.debug("warm-up failed: %s: %s", type(exc).__name__, exc)
        return "unreachable"
    if not isinstance(answer, dict) or "choices" not in answer:
        log.warning("warm-up: upstream 200 without a completion")
        return "error"
    return "ok" if state.mark_healthy(epoch) else "unreachable"


async def start_gateway(config: GatewayConfig, state: GatewayState) -> web.AppRunner:
    """Bind ``config.host:config.port`` and serve. Raises OSError if the address is taken.

    Stop it with ``await runner.cleanup()``. With ``port=0`` the bound port is in
    ``runner.addresses``.
    """
    runner = web.AppRunner(
        build_app(config, state),
        access_log=None,  # one DEBUG line per request from our middleware instead
        handle_signals=False,  # the supervisor owns signals
        shutdown_timeout=2.0,
        keepalive_timeout=75.0,  # idle client connections (aiohttp's default is an hour)
    )
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, backlog=512)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    log.info("gateway for %r listening on %s:%s", config.api_label, config.host, config.port)
    return runner
