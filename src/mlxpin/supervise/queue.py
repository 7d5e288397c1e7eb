"""How many requests one engine gets at once, and the bounded wait for the others.

``mlx_lm.server`` accepts connections on one thread that competes with generation for
the GIL; past its listen backlog a connect on a Unix socket is refused at once. So each
model lets ``slots`` requests through to its engine and queues the rest, FIFO: past
``limit`` waiting, or after ``timeout_s`` in the queue, a request gets 503 + Retry-After
(issue #26 item 1). The numbers come from the environment (:func:`queue_from_env`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Final

from mlxpin.gateway.backends import Unavailable

__all__ = ["EngineQueue", "queue_from_env"]

SLOTS_ENV: Final = "MLXPIN_ENGINE_SLOTS"
LIMIT_ENV: Final = "MLXPIN_QUEUE_LIMIT"
TIMEOUT_ENV: Final = "MLXPIN_QUEUE_TIMEOUT"
DEFAULTS: Final = (32, 1000, 300.0)  # slots; waiting requests; seconds waited


class EngineQueue:
    """The engine slots of one model and the requests waiting for one."""

    def __init__(self, slots: int, limit: int, timeout_s: float) -> None:
        self.slots, self.limit, self.timeout_s = slots, limit, timeout_s
        self.free = asyncio.Semaphore(slots)
        self.waiting = 0
        self.active = 0  # requests through to the engine now
        self.busy_until = 0.0  # monotonic: when the last of them ended

    def busy(self, grace_s: float = 2.0) -> bool:
        """Was a request through to the engine now or within ``grace_s``? (A client sees
        the engine's death at about the moment its process is reaped.)"""
        return self.active > 0 or time.monotonic() - self.busy_until < grace_s

    async def enter(self, label: str) -> None:
        """Take a slot, waiting in line if none is free; Unavailable past the limits."""
        if not self.free.locked():  # a free slot and nobody in line: no wait_for (its
            await self.free.acquire()  # task costs a loop turn), this never suspends
            self.active += 1
            return
        if self.waiting >= self.limit:
            raise Unavailable(
                f"The model '{label}' has {self.waiting} requests waiting already; retry shortly",
                code="queue_full",
                retry_after_s=2.0,
            )
        self.waiting += 1
        try:
            await asyncio.wait_for(self.free.acquire(), self.timeout_s)
        except TimeoutError:
            raise Unavailable(
                f"The model '{label}' is busy: no free slot after {self.timeout_s:g} s",
                code="queue_timeout",
                retry_after_s=max(1.0, min(30.0, self.timeout_s / 4)),
            ) from None
        finally:
            self.waiting -= 1
        self.active += 1

    def leave(self) -> None:
        self.active -= 1
        self.busy_until = time.monotonic()
        self.free.release()


def queue_from_env(environ: Mapping[str, str]) -> EngineQueue:
    """An :class:`EngineQueue` as MLXPIN_ENGINE_SLOTS, MLXPIN_QUEUE_LIMIT and
    MLXPIN_QUEUE_TIMEOUT say (unset or not a positive number: the default)."""
    values: list[float] = []
    for env, default in zip((SLOTS_ENV, LIMIT_ENV, TIMEOUT_ENV), DEFAULTS, strict=True):
        try:
            value = float(environ.get(env, ""))
        except ValueError:
            value = default
        values.append(value if 0 < value < 1e9 else default)
    return EngineQueue(int(values[0]), int(values[1]), values[2])
