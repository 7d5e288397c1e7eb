"""Errors are plain data: a message, a hint and a stable exit code."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlxpin.errors import (
    ConfigError,
    DataError,
    DiskError,
    ExitCode,
    MlxpinError,
    NoInputError,
    PreflightError,
    UsageError,
)


def test_a_hint_given_where_the_error_is_raised_replaces_the_default() -> None:
    default = DiskError(Path("/x/y"), "read-only file system")
    assert default.hint is not None and default.hint.startswith("free some space")
    chosen = DiskError(Path("/x/y"), "read-only file system", "rerun with sudo")
    assert (chosen.message, chosen.exit_code) == (default.message, ExitCode.IO)
    assert str(chosen) == f"{default.message}\n  hint: rerun with sudo"


def test_several_problems_exit_with_the_code_of_the_earliest_step() -> None:
    lone = NoInputError("a: not fetched")
    assert PreflightError.of([lone]) is lone
    data, missing = DataError("b: bad bytes"), NoInputError("a: not fetched")
    assert PreflightError.of([missing, data]).exit_code == ExitCode.DATA
    assert PreflightError.of([data, ConfigError("c: stale")]).exit_code == ExitCode.CONFIG
    other = PreflightError.of([UsageError("x"), DiskError(Path("/"), "y")])
    assert other.exit_code == ExitCode.SOFTWARE  # none of the preflight steps: 70
    assert type(other) is PreflightError and other.to_json()["exit_code"] == 70


def test_python_can_still_chain_and_trace_an_error() -> None:
    def fail() -> None:
        try:
            raise OSError("disk")
        except OSError as exc:
            raise MlxpinError("wrapped", "retry") from exc

    with pytest.raises(MlxpinError) as caught:
        fail()
    assert isinstance(caught.value.__cause__, OSError)
    assert caught.value.__traceback__ is not None


def test_hub_refusals_name_the_repo_and_revision() -> None:
    from mlxpin.errors import AccessDeniedError, RepoNotFoundError, RevisionNotFoundError

    missing = RepoNotFoundError("gemma-4-31b-it", "main", "https://hub.example", False)
    assert missing.message.startswith("gemma-4-31b-it@main: repository not found")
    assert "no token was sent" in missing.message
    assert missing.hint is not None and "https://hub.example/gemma-4-31b-it" in missing.hint
    revision = RevisionNotFoundError("o/r", "mian", ["main"])
    assert revision.message == "o/r: revision 'mian' not found"
    assert revision.hint is not None and revision.hint.endswith("the repo has: main")
    denied = AccessDeniedError("o/r", "v1", "access refused (403, a token was sent)", "check")
    assert denied.message.startswith("o/r@v1: ") and denied.exit_code == ExitCode.NO_PERMISSION


def test_over_budget_is_said_in_human_units() -> None:
    """Issue #20 item 19: 'needs 1500000000 bytes ... budget of 1000000 bytes'."""
    from mlxpin.errors import OverBudgetError

    error = OverBudgetError("gemma", 1_500_000_000, 1_000_000, "[serve] memory_budget")
    assert "needs 1.5 GB" in error.message and "budget of 1.0 MB" in error.message
    assert "bytes" not in error.message
