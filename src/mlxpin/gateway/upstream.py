"""Talking to model servers: the connector (TCP, or the server's Unix socket), the
warm-up, and what a failure to reach one means for the client (503, 504 or 502)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import struct
import time
from typing import Any, Final

import aiohttp
from yarl import URL

from mlxpin.gateway.apierrors import ApiError
from mlxpin.gateway.backends import GatewayState, Upstream
from mlxpin.project.engines import CHAT_PATH, EMBEDDINGS_PATH, TRANSCRIPTIONS_PATH

__all__ = [
    "CHAT_PATH",
    "COMPLETIONS_PATH",
    "classify_failure",
    "connector",
    "liveness",
    "url_of",
    "warm_up_status",
]

log = logging.getLogger("mlxpin.gateway")

COMPLETIONS_PATH: Final = "/v1/completions"


def url_of(upstream: Upstream, path: str) -> URL:
    base = URL(upstream.url)
    return base.with_path(base.path.rstrip("/") + path)


def connector(upstream: Upstream, limit: int = 256) -> aiohttp.BaseConnector:
    if upstream.socket_path is not None:
        return aiohttp.UnixConnector(upstream.socket_path, limit=limit, keepalive_timeout=30.0)
    return aiohttp.TCPConnector(limit=limit, keepalive_timeout=upstream.keepalive_s)


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


# Per role: where the warm-up goes, what it sends besides "model", and the key a real
# answer has ("": any 200 -- speech answers audio). mlx_vlm.server's /health stays 200
# after a failed preload: only a real request proves the model serves.
_PROBES: Final[dict[str, tuple[str, dict[str, object], str]]] = {
    "chat": (
        CHAT_PATH,
        {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "stream": False},
        "choices",
    ),
    "embedding": (EMBEDDINGS_PATH, {"input": "Hi"}, "data"),
    "rerank": ("/v1/rerank", {"query": "Hi", "documents": ["Hi"]}, "results"),
    "speech": ("/v1/audio/speech", {"input": "Hi", "response_format": "wav"}, ""),
    "transcription": (TRANSCRIPTIONS_PATH, {}, "text"),
}


#: How often a server's socket file is looked for while it boots: a stat is far cheaper
#: than a connect attempt, so readiness is noticed within ms of the server binding.
SOCKET_POLL_S: Final = 0.005


async def _socket_appeared(path: str, timeout_s: float) -> float | None:
    """Seconds left of ``timeout_s`` once ``path`` exists; None if it did not in time."""
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        if time.monotonic() >= deadline:
            return None
        await asyncio.sleep(SOCKET_POLL_S)
    return max(deadline - time.monotonic(), 0.001)


def _silent_wav(seconds: float = 0.1, rate: int = 16000) -> bytes:
    frames = int(seconds * rate)
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + 2 * frames, b"WAVE", b"fmt ", 16, 1, 1, rate,
        2 * rate, 2, 16, b"data", 2 * frames,
    )  # fmt: skip
    return header + bytes(2 * frames)


async def warm_up_status(upstream: Upstream, state: GatewayState, *, timeout_s: float) -> str:
    """Send one real request for its role (chat: a 1-token completion) straight to the
    upstream: "ok" (and the state is marked healthy, unless a restart happened meanwhile);
    "unreachable" (not listening yet -- a socket file is waited for, within
    ``timeout_s`` -- or no answer in time); "error" (it answered, but not with a
    completion -- a server that cannot load its model says so at once and will not
    recover by waiting)."""
    epoch = state.epoch
    if upstream.socket_path is not None:
        left = await _socket_appeared(upstream.socket_path, timeout_s)
        if left is None:
            return "unreachable"
        timeout_s = left
    path, payload, expected = _PROBES[upstream.role]
    data: Any = {"model": upstream.model, **payload}
    if path == TRANSCRIPTIONS_PATH:
        data = aiohttp.FormData({"model": upstream.model})
        data.add_field("file", _silent_wav(), filename="probe.wav", content_type="audio/wav")
        kwargs: dict[str, Any] = {"data": data}
    else:
        kwargs = {"json": data}
    timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(timeout_s, 5.0))
    url = url_of(upstream, path)
    try:
        async with (
            aiohttp.ClientSession(connector=connector(upstream, 1), timeout=timeout) as session,
            session.post(url, headers={"Accept-Encoding": "identity"}, **kwargs) as resp,
        ):
            raw = await resp.read()
            if resp.status != 200:
                log.debug("warm-up: upstream answered %d: %s", resp.status, raw[:200])
                return "error"
            answer = json.loads(raw) if expected else {}
    except ValueError as exc:
        log.debug("warm-up: not JSON: %s", exc)
        return "error"
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.debug("warm-up failed: %s: %s", type(exc).__name__, exc)
        return "unreachable"
    if not isinstance(answer, dict) or (expected and expected not in answer):
        log.warning("warm-up: upstream 200 without a completion")
        return "error"
    return "ok" if state.mark_healthy(epoch) else "unreachable"


async def liveness(upstream: Upstream, timeout_s: float) -> str:
    """One cheap ``GET /health`` to the server: "ok" (any HTTP answer but 503: it is alive);
    "dead" (503: mlx_lm.server's generation thread died, it will never generate again);
    "gone" (its socket file is missing, or nothing listens: it will never answer again);
    "silent" (no answer in time: hung, or too busy to accept)."""
    if upstream.socket_path is not None and not os.path.exists(upstream.socket_path):
        return "gone"
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with (
            aiohttp.ClientSession(connector=connector(upstream, 1), timeout=timeout) as session,
            session.get(url_of(upstream, "/health")) as resp,
        ):
            await resp.read()
            return "dead" if resp.status == 503 else "ok"
    except aiohttp.ClientConnectorError as exc:
        refused = isinstance(exc.os_error, FileNotFoundError | ConnectionRefusedError)
        return "gone" if refused else "silent"
    except (aiohttp.ClientError, TimeoutError):
        return "silent"
