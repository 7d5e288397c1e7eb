"""One retry loop, with pauses that double: Hub look-ups, downloads and their ranges."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class ClosedEarly(Exception):
    """A transfer ended before all its bytes came."""

    def __str__(self) -> str:
        return "connection closed early"


def retry(
    attempt: Callable[[], T],
    attempts: int,
    delay: float,
    failure: Callable[[Exception], BaseException | None],
    pause: Callable[[Exception, float], None],
    max_delay: float = float("inf"),
    asked: Callable[[Exception], float | None] = lambda exc: None,
) -> T:
    """`attempt()` up to `attempts` times. `failure(exc)` is None for an exception not worth
    retrying (raised as it is), else the error to raise when no attempt is left; between
    two, `pause(exc, delay)` sleeps (or raises to stop) and the delay doubles, at most to
    `max_delay`. `asked(exc)`: the wait a server asked for (429 Retry-After); such a
    retry pauses that long and does not count (`pause` enforces any deadline)."""
    number = 1
    while True:
        try:
            return attempt()
        except Exception as exc:
            error = failure(exc)
            if error is None:
                raise
            wait = asked(exc)
            if wait is None and number == attempts:
                raise error from None
            pause(exc, delay if wait is None else wait)
            if wait is None:
                number += 1
                delay = min(delay * 2, max_delay)
