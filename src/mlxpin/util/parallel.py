"""Thread pools that stop promptly on Ctrl-C: one `CancelToken` per command (never a
module-wide flag, so an interruption never leaks into the next command), which workers
check at each chunk or retry pause."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Cancelled(Exception):
    """The user interrupted the command; workers stop at their next chunk."""


class CancelToken:
    """A one-way switch shared by one command's threads: once cancelled, always cancelled."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled()

    def wait(self, delay: float) -> None:
        """Sleep `delay` seconds (a retry pause); raise Cancelled as soon as cancelled."""
        if self._event.wait(delay):
            raise Cancelled() from None


def run_parallel(
    func: Callable[[T], R],
    items: Sequence[T],
    workers: int,
    cancel: CancelToken | None = None,
) -> list[R]:
    """Run `func` over `items` in threads, in order. Every item runs even if one fails
    (the first failure is raised at the end); Ctrl-C cancels what has not started and
    `cancel`, the token `func` watches, so the running ones stop at their next chunk."""
    if not items:
        return []
    from concurrent.futures import ThreadPoolExecutor  # `verify` of small files needs none

    pool = ThreadPoolExecutor(max_workers=max(1, min(workers, len(items))))
    futures = [pool.submit(func, item) for item in items]
    results: list[R] = []
    failures: list[Exception] = []
    try:
        for future in futures:
            try:
                results.append(future.result())
            except Exception as exc:  # collected; re-raised after the others finish
                failures.append(exc)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)  # drop the queue first ...
        if cancel is not None:
            cancel.cancel()  # ... then stop the running ones, so none picks up a new item
        pool.shutdown(wait=True)
        raise
    pool.shutdown(wait=True)
    if failures:
        raise failures[0]
    return results
