"""A gateway in front of one fixed upstream: how the gateway's own tests drive it.

Production runs the gateway over a `serve.pool.Pool` (launch and serve alike); these
tests need a gateway whose one upstream they start, stop and break themselves, so they
use this small :class:`~mlxpin.gateway.backends.Backends`: one route, always routed to,
healthy once a real completion succeeded since its last (re)start.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiohttp import web
from yarl import URL

from mlxpin.gateway.app import Gateway, serve
from mlxpin.gateway.backends import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_REQUEST_TIMEOUT_S,
    GatewayState,
    Health,
    Lease,
    Route,
    Upstream,
)
from mlxpin.gateway.listener import ListenerLimits
from mlxpin.gateway.upstream import warm_up_status


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
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    upstream_connect_timeout_s: float = 5.0
    upstream_read_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    """Longest silence between two reads from the upstream (generation can be slow)."""
    upstream_socket: str | None = None
    """If set, the upstream is reached over this Unix-domain socket (the URL's host is
    then only what goes into the Host header)."""
    limits: ListenerLimits = field(default_factory=ListenerLimits)
    """Client connections and request-head time on the public port."""

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
            f"upstream_read_timeout_s={self.upstream_read_timeout_s!r}, "
            f"upstream_socket={self.upstream_socket!r}, limits={self.limits!r})"
        )


class OneModel:
    """``launch``: one model, one server, always routed to (the gateway answers 503 when
    it cannot be reached); healthy once a real completion succeeded since its last start."""

    def __init__(self, route: Route, upstream: Upstream, state: GatewayState) -> None:
        if upstream.label != route.api_label:
            raise ValueError("the upstream must serve the route's api_label")
        self.route = route
        self.base = upstream
        self.state = state
        self._ok_body = {"status": "ok", "model": route.api_label}
        self._loading_body = {"status": "loading"}

    def routes(self) -> Sequence[Route]:
        return (self.route,)

    def current(self) -> Upstream:
        """The upstream as of the current start (its epoch follows restarts)."""
        if self.base.epoch != self.state.epoch:
            self.base = Upstream(
                self.base.label,
                self.base.model,
                self.base.url,
                self.base.socket_path,
                self.state.epoch,
            )
        return self.base

    async def acquire(self, label: str) -> Lease:
        return Lease(self.current(), self.state)

    def health(self) -> Health:
        if self.state.healthy:
            return Health(True, self._ok_body)
        return Health(False, self._loading_body)


def _one_model(config: GatewayConfig, state: GatewayState) -> OneModel:
    route = Route(
        config.api_label,
        config.aliases,
        max_body_bytes=config.max_body_bytes,
        request_timeout_s=config.upstream_read_timeout_s,
    )
    upstream = Upstream(
        config.api_label,
        config.upstream_model,
        config.upstream_url,
        config.upstream_socket,
        state.epoch,
    )
    return OneModel(route, upstream, state)


def build_app(config: GatewayConfig, state: GatewayState) -> web.Application:
    """The one-model gateway as an aiohttp application (not yet bound)."""
    gateway = Gateway(
        _one_model(config, state),
        api_key=config.api_key,
        connect_timeout_s=config.upstream_connect_timeout_s,
    )
    return gateway.app()


def upstream_of(config: GatewayConfig, state: GatewayState) -> Upstream:
    """The upstream of a one-model config, as of the state's current start."""
    return _one_model(config, state).current()


async def warm_up(config: GatewayConfig, state: GatewayState, *, timeout_s: float) -> bool:
    """Send one 1-token chat completion straight to the upstream; True if it succeeded
    (and the state is now healthy). Any failure returns False; the caller retries."""
    return await warm_up_status(upstream_of(config, state), state, timeout_s=timeout_s) == "ok"


async def start_gateway(config: GatewayConfig, state: GatewayState) -> web.AppRunner:
    """Serve the one-model gateway of ``config`` on ``config.host:config.port``."""
    return await serve_gateway(config, state)


async def serve_gateway(
    config: GatewayConfig, state: GatewayState, sockets: Sequence[socket.socket] = ()
) -> web.AppRunner:
    """Serve the one-model gateway of ``config`` (on ``sockets`` if given)."""
    app = build_app(config, state)
    return await serve(app, config.host, config.port, config.limits, sockets)
