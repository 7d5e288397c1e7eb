"""The one retry loop: attempt counts, doubling pauses, what is raised."""

from __future__ import annotations

import pytest

from mlxpin.util.retry import retry


class Flaky(Exception):
    pass


def run(failures: list[Exception], attempts: int = 4) -> tuple[str, list[float], int]:
    pauses: list[float] = []
    calls = 0

    def attempt() -> str:
        nonlocal calls
        calls += 1
        if failures:
            raise failures.pop(0)
        return "ok"

    def failure(exc: Exception) -> Exception | None:
        return RuntimeError(f"gave up: {exc}") if isinstance(exc, Flaky) else None

    result = retry(attempt, attempts, 0.25, failure, lambda exc, delay: pauses.append(delay), 0.6)
    return result, pauses, calls


def test_pauses_double_up_to_the_cap() -> None:
    failures: list[Exception] = [Flaky(), Flaky(), Flaky(), Flaky()]
    assert run(failures, attempts=6) == ("ok", [0.25, 0.5, 0.6, 0.6], 5)
    assert run([]) == ("ok", [], 1)


def test_the_last_failure_gives_up_and_others_pass_through() -> None:
    with pytest.raises(RuntimeError, match="gave up: 4"):
        run([Flaky(1), Flaky(2), Flaky(3), Flaky(4)])
    with pytest.raises(KeyError):
        run([Flaky(), KeyError("x")])
