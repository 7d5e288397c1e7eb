"""One retry loop, with pauses that double: Hub look-ups, downloads and their ranges."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class RetryAtOnce(Exception):
    """An attempt failed in a way that needs no pause (e.g. start a file over)."""


def retry(
    attempt: Callable[[], T],
    attempts: int,
    delay: float,
    *,
    retryable: Callable[[Exception], bool],
    give_up: Callable[[Exception], BaseException],
    pause: Callable[[Exception, float], None],
    max_delay: float = math.inf,
) -> T:
    """`attempt()` up to `attempts` times. An exception `retryable` refuses is raised as it
    is; after the last attempt, `give_up(exc)` is raised; else `pause(exc, delay)` (which
    sleeps, or raises to stop early) and the next delay is twice this one, at most
    `max_delay`."""
    for number in range(1, attempts + 1):
        try:
            return attempt()
        except Exception as exc:
            if not isinstance(exc, RetryAtOnce) and not retryable(exc):
                raise
            if number == attempts:
                raise give_up(exc) from None
            if not isinstance(exc, RetryAtOnce):
                pause(exc, delay)
                delay = min(delay * 2, max_delay)
    raise AssertionError("unreachable")
