"""`run_parallel` and the explicit cancel token: Ctrl-C stops the running workers, and one
command's cancellation never reaches another's."""

from __future__ import annotations

import threading

import pytest

from mlxpin.util import parallel
from mlxpin.util.parallel import Cancelled, CancelToken, run_parallel


def test_an_interrupt_cancels_the_token_and_stops_running_workers() -> None:
    cancel = CancelToken()
    started = threading.Event()
    stopped: list[str] = []

    def work(item: int) -> int:
        if item == 0:
            started.wait(5)
            raise KeyboardInterrupt  # what the main thread sees on Ctrl-C
        started.set()
        try:
            for _ in range(500):  # at most 5 s, unless cancelled
                cancel.wait(0.01)
        except Cancelled:
            stopped.append("cancelled")
            raise
        return item

    with pytest.raises(KeyboardInterrupt):
        run_parallel(work, [0, 1], workers=2, cancel=cancel)
    assert cancel.cancelled
    assert stopped == ["cancelled"]


def test_a_cancelled_token_stays_with_its_command() -> None:
    first = CancelToken()
    first.cancel()
    with pytest.raises(Cancelled):
        first.raise_if_cancelled()
    second = CancelToken()

    def work(item: int) -> int:
        second.raise_if_cancelled()
        second.wait(0)
        return item * 2

    assert run_parallel(work, [1, 2, 3], workers=2, cancel=second) == [2, 4, 6]
    assert not second.cancelled


def test_the_first_failure_is_raised_after_every_item_ran() -> None:
    ran: list[int] = []

    def work(item: int) -> int:
        ran.append(item)
        if item == 1:
            raise ValueError("one")
        return item

    with pytest.raises(ValueError, match="one"):
        run_parallel(work, [1, 2, 3], workers=1, cancel=CancelToken())
    assert sorted(ran) == [1, 2, 3]


def test_no_module_wide_cancel_state() -> None:
    assert not [
        name for name, value in vars(parallel).items() if isinstance(value, threading.Event)
    ]
