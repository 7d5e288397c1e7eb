"""The seam between the gateway and the model servers behind it.

The gateway knows HTTP; a :class:`Backends` knows how servers start, restart and stop.
The gateway builds its routing table from :meth:`Backends.routes` once, and asks
:meth:`Backends.acquire` for a ready upstream per request (it may wait, or raise
:class:`Unavailable`); the :class:`Lease` is released after the last byte, so a pool never
stops a server under a client. `supervise.pool.Pool` is the one production backend; the
gateway's own tests use a fixed upstream (tests/fixedgateway.py). No aiohttp here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from mlxpin.gateway.apierrors import ApiError
from mlxpin.project.engines import MLX_LM, endpoints

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_REQUEST_TIMEOUT_S",
    "Backends",
    "GatewayState",
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

    api_label: str  # the canonical label, put back into every response
    aliases: tuple[str, ...] = ()  # also accepted, answered with the canonical one
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    engine: str = MLX_LM
    role: str = "chat"
    vocab_size: int | None = None  # token ids in logit_bias must be below it

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The POST paths this model serves."""
        return endpoints(self.engine, self.role)

    @property
    def labels(self) -> tuple[str, ...]:
        """The canonical label first, then the aliases (without duplicates)."""
        return tuple(dict.fromkeys((self.api_label, *self.aliases)))


@dataclass(frozen=True)
class Upstream:
    """Where one request goes: a server that was started on one snapshot."""

    label: str  # the canonical api_label of the model it serves
    model: str  # the exact --model string the server was started with (sent as "model")
    url: str  # e.g. http://127.0.0.1:53121 (with a socket: any host, the path matters)
    socket_path: str | None = None  # connect over this Unix-domain socket instead of TCP
    epoch: int = 0  # which start of the server; a late answer from an older one proves nothing
    role: str = "chat"  # what its warm-up asks for (project.engines)
    keepalive_s: float = 30.0  # idle pooled connections live this long (below the server's)


@dataclass(eq=False)
class GatewayState:
    """Health of one served model (one asyncio loop, no locks).

    ``healthy`` turns True only when a real completion succeeds; ``mark_restarting`` turns
    it False and starts a new *epoch*, so that a completion which began against the old
    server process cannot mark the new one healthy when it finishes late.
    """

    healthy: bool = False
    epoch: int = 0
    completions_ok: int = 0
    """Upstream 200 completions relayed in full (warm-ups included): a rank group's
    watchdog reads it as proof of progress."""

    def mark_restarting(self) -> None:
        self.healthy = False
        self.epoch += 1

    def mark_healthy(self, epoch: int | None = None) -> bool:
        """Record a completion started in ``epoch`` (default: the current one); False,
        changing nothing, if a restart happened since."""
        if epoch is not None and epoch != self.epoch:
            return False
        self.healthy = True
        self.completions_ok += 1
        return True


@dataclass(frozen=True)
class Health:
    """What ``GET /health`` answers."""

    ready: bool
    body: Mapping[str, object]


class Unavailable(Exception):
    """No upstream for this request now: answered as an OpenAI-style 503."""

    def __init__(
        self, message: str, *, code: str = "model_unavailable", retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        headers = (
            () if retry_after_s is None else (("Retry-After", f"{max(1, round(retry_after_s))}"),)
        )
        self.error = ApiError(503, message, code, headers=headers)


def _nothing() -> None:
    pass


@dataclass(eq=False)
class Lease:
    """One request's hold on an upstream, from :meth:`Backends.acquire` until release."""

    upstream: Upstream
    health: GatewayState
    on_release: Callable[[], None] = _nothing

    def completed(self) -> None:
        """A real completion succeeded on this upstream (evidence it is healthy)."""
        self.health.mark_healthy(self.upstream.epoch)

    def release(self) -> None:
        """The request is over (streams: after their last byte); only the first call counts."""
        release, self.on_release = self.on_release, _nothing
        release()


class Backends(Protocol):
    """The servers behind a gateway (see the module docstring)."""

    def routes(self) -> Sequence[Route]:
        """Every model, in listing order. Read once when the gateway is built."""

    async def acquire(self, label: str) -> Lease:
        """A ready upstream for the canonical ``label``; may wait; raises Unavailable."""

    def health(self) -> Health:
        """Ready when the endpoint can answer completions."""
