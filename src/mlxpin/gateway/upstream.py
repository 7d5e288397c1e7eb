"""Talking to model servers: one keep-alive client session per upstream, the warm-up,
and what a failure to reach one means for the client (503, 504 or 502).

An upstream is reached over TCP or, when it has a ``socket_path``, over its Unix-domain
socket (aiohttp's ``UnixConnector``); either way the HTTP is aiohttp's.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any, Final

import aiohttp
from yarl import URL

from mlxpin.gateway.apierrors import ApiError
from mlxpin.gateway.backends import Upstream
from mlxpin.gateway.state import GatewayState

__all__ = ["CHAT_PATH", "COMPLETIONS_PATH", "UpstreamClient", "classify_failure", "warm_up_status"]

log = logging.getLogger("mlxpin.gateway")

CHAT_PATH: Final = "/v1/chat/completions"
COMPLETIONS_PATH: Final = "/v1/completions"


def url_of(upstream: Upstream, path: str) -> URL:
    base = URL(upstream.url)
    return base.with_path(base.path.rstrip("/") + path)


def _connector(upstream: Upstream, limit: int = 256) -> aiohttp.BaseConnector:
    if upstream.socket_path is not None:
        return aiohttp.UnixConnector(upstream.socket_path, limit=limit, keepalive_timeout=30.0)
    return aiohttp.TCPConnector(limit=limit, keepalive_timeout=30.0)


class UpstreamClient:
    """Client sessions, one per upstream address, opened on first use, closed together."""

    def __init__(self, connect_timeout_s: float) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.sessions: dict[tuple[str, str | None], aiohttp.ClientSession] = {}

    def session(self, upstream: Upstream) -> aiohttp.ClientSession:
        key = (upstream.url, upstream.socket_path)
        session = self.sessions.get(key)
        if session is None:
            session = aiohttp.ClientSession(
                connector=_connector(upstream),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout_s),
                auto_decompress=True,
                skip_auto_headers=("User-Agent",),
                raise_for_status=False,
            )
            self.sessions[key] = session
        return session

    def post(
        self,
        upstream: Upstream,
        path: str,
        data: bytes,
        headers: Mapping[str, str],
        read_timeout_s: float,
    ) -> Any:  # the request context manager
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.connect_timeout_s, sock_read=read_timeout_s
        )
        return self.session(upstream).post(
            url_of(upstream, path), data=data, headers=headers, timeout=timeout
        )

    async def close(self) -> None:
        sessions, self.sessions = list(self.sessions.values()), {}
        for session in sessions:
            await session.close()


def classify_failure(exc: BaseException) -> ApiError:
    """What the client is told when talking to the upstream failed."""
    if isinstance(exc, TimeoutError):  # ServerTimeoutError and friends included
        return ApiError(504, "The model server did not answer in time", "upstream_timeout")
    if isinstance(exc, aiohttp.ClientConnectionError):
        return ApiError(
            503,
            "The model server is not available (starting or restarting); retry shortly",
            "upstream_unavailable",
        )
    return ApiError(
        502, "The model server sent an incomplete or malformed answer", "upstream_error"
    )


async def warm_up_status(upstream: Upstream, state: GatewayState, *, timeout_s: float) -> str:
    """Send one 1-token chat completion straight to the upstream: "ok" (and the state is
    marked healthy, unless a restart happened meanwhile); "unreachable" (not listening yet,
    or no answer in time); "error" (it answered, but not with a completion -- a server that
    cannot load its model says so at once and will not recover by waiting)."""
    epoch = state.epoch
    payload = {
        "model": upstream.model,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 1,
        "stream": False,
    }
    timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(timeout_s, 5.0))
    url = url_of(upstream, CHAT_PATH)
    try:
        async with (
            aiohttp.ClientSession(connector=_connector(upstream, 1), timeout=timeout) as session,
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
