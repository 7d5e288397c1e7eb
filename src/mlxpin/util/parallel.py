"""Thread pools that stop promptly on Ctrl-C, for downloads, hashing and Hub look-ups."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Cancelled(Exception):
    """The user interrupted the command; workers stop at their next chunk."""


# Set by the main thread on Ctrl-C so that worker threads stop at their next chunk.
CANCEL = threading.Event()


def run_parallel(func: Callable[[T], R], items: Sequence[T], workers: int) -> list[R]:
    """Run `func` over `items` in threads, in order. Every item runs even if one fails
    (the first failure is raised at the end); Ctrl-C stops the workers at their next
    chunk and cancels what has not started."""
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
        CANCEL.set()  # ... then stop the running ones, so none picks up a new item
        pool.shutdown(wait=True)
        raise
    pool.shutdown(wait=True)
    if failures:
        raise failures[0]
    return results
