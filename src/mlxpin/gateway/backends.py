"""The seam between the gateway and the model servers behind it.

The gateway knows HTTP: labels, request checks, rewriting, the SSE relay, error bodies.
It does not know how servers are started, restarted or evicted. It asks a
:class:`Backends` for two things:

- :meth:`Backends.routes`: which labels exist (api_label + aliases) and each model's
  request limits -- the gateway builds its routing table from them once;
- :meth:`Backends.acquire`: "give me a ready upstream for this label" -- it may wait (a
  pool starts the model, evicting idle ones), or raise :class:`Unavailable` (an
  OpenAI-style 503 with ``Retry-After``). The :class:`Lease` it returns says where to send
  the request and is told when a real completion succeeded and when the request is over
  (streams: after their last byte), so a pool never stops a server under a client.

Plus :meth:`Backends.health` for ``GET /health``. `supervise.pool.Pool` implements it, for
`serve` (many models) and `launch` (one model); the gateway's own tests use a fixed
upstream (tests/fixedgateway.py).

This module imports nothing from aiohttp: a backend is plain data plus a protocol.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_REQUEST_TIMEOUT_S",
    "Backends",
    "Health",
    "Lease",
    "Route",
    "Unavailable",
    "Upstream",
]

#: Largest request body a model accepts unless its manifest says otherwise (inline images).
DEFAULT_MAX_BODY_BYTES: Final = 8 * 1024 * 1024
#: Longest silence between two reads from a model server (a long generation is slow).
DEFAULT_REQUEST_TIMEOUT_S: Final = 600.0


@dataclass(frozen=True)
class Route:
    """One model as clients see it: its labels and its request limits."""

    api_label: str
    """The canonical label; put back into every response."""
    aliases: tuple[str, ...] = ()
    """Other labels that are accepted (and answered with the canonical one)."""
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    """Longest silence between two reads from this model's server."""

    @property
    def labels(self) -> tuple[str, ...]:
        """The canonical label first, then the aliases (without duplicates)."""
        return tuple(dict.fromkeys((self.api_label, *self.aliases)))


@dataclass(frozen=True)
class Upstream:
    """Where one request goes: a server that was started on one snapshot."""

    label: str
    """The canonical api_label of the model it serves."""
    model: str
    """The exact ``--model`` string the server was started with (sent as ``"model"``)."""
    url: str
    """Base URL, e.g. ``http://127.0.0.1:53121`` (with a socket: any host, path matters)."""
    socket_path: str | None = None
    """If set, connect over this Unix-domain socket instead of TCP."""
    epoch: int = 0
    """Which start of the server this is; a late answer from an older one proves nothing."""


@dataclass(frozen=True)
class Health:
    """What ``GET /health`` answers."""

    ready: bool
    body: Mapping[str, object]


class Unavailable(Exception):
    """No upstream for this request now: answered as an OpenAI-style error (default 503)."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "model_unavailable",
        status: int = 503,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.retry_after_s = retry_after_s


class Lease(Protocol):
    """One request's hold on an upstream, from :meth:`Backends.acquire` until release."""

    @property
    def upstream(self) -> Upstream: ...

    def completed(self) -> None:
        """A real completion succeeded on this upstream (evidence it is healthy)."""

    def release(self) -> None:
        """The request is over (streams: after their last byte). Called exactly once."""


class Backends(Protocol):
    """The servers behind a gateway (see the module docstring)."""

    def routes(self) -> Sequence[Route]:
        """Every model, in listing order. Read once when the gateway is built."""

    async def acquire(self, label: str) -> Lease:
        """A ready upstream for the canonical ``label``; may wait; raises Unavailable."""

    def health(self) -> Health:
        """Ready when the endpoint can answer completions."""
