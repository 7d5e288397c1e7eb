"""The watchdog of a single server (issue #26 items 4 and 5).

A server that stops making progress (a GPU hang; SIGSTOP stands in for one) still has a
process, so its exit never comes: every request would wait ``request_timeout`` and 504
while ``/health`` said ok. So every ``interval_s`` a cheap ``GET /health`` goes to the
server (it is answered on a handler thread, beside any generation). While it gets no
answer within ``timeout_s`` (and no completion finished meanwhile: a busy engine may
answer late) the model's health is down (``/health`` 503); ``failures``
in a row, and the pool replaces the server. A socket file that is gone, or that nobody
listens on, is a dead server at once: nothing will ever answer on it again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from mlxpin.gateway.aio import import_aiohttp
from mlxpin.gateway.backends import GatewayState, Upstream

__all__ = ["Liveness", "watch_liveness"]

log = logging.getLogger("mlxpin.serve")


@dataclass(frozen=True)
class Liveness:
    """How often a single server is probed, how long an answer may take, and how many
    probes in a row may go unanswered before it is replaced (~30 s by default)."""

    interval_s: float = 5.0
    timeout_s: float = 5.0
    failures: int = 3


async def watch_liveness(
    name: str, upstream: Callable[[], Upstream], health: GatewayState, policy: Liveness
) -> str:
    """Return why to replace the server, once it is dead or hung."""
    import_aiohttp()
    from mlxpin.gateway.upstream import liveness

    silent, done = 0, health.completions_ok
    while True:
        await asyncio.sleep(policy.interval_s)
        status = await liveness(upstream(), policy.timeout_s)
        if status == "gone":
            return "its private socket is gone or refuses connections"
        if status == "dead":
            return "its generation thread died (its /health answers 503)"
        if status == "ok":
            if silent:
                log.warning("%s: answers its liveness probe again", name)
                health.healthy = True  # it was ready and healthy before the silence
            silent = 0
            continue
        if health.completions_ok != done:  # busy, not hung: completions still finish
            done = health.completions_ok
            continue
        silent += 1
        health.healthy = False  # /health says so while it is silent
        log.warning("%s: no answer to a liveness probe within %g s", name, policy.timeout_s)
        if silent >= policy.failures:
            return f"hung: {silent} liveness probes in a row got no answer"
