"""Errors are immutable values: a hint added in one place never changes another reader's copy."""

from __future__ import annotations

import pytest

from mlxpin.errors import DiskError, ExitCode, Hint, IntegrityError, MlxpinError


def test_an_error_cannot_be_changed_after_it_is_built() -> None:
    error = IntegrityError("tiny", "model.safetensors", "size 3, expected 4")
    with pytest.raises(AttributeError, match="immutable"):
        error.advice = Hint.of("something else")
    with pytest.raises(AttributeError):
        error.hint = "something else"  # type: ignore[misc]
    with pytest.raises(AttributeError, match="immutable"):
        error.path = "other"


def test_with_hint_copies_and_keeps_the_fields() -> None:
    from pathlib import Path

    original = DiskError(Path("/x/y"), "read-only file system")
    changed = original.with_hint("rerun with sudo")
    assert changed.hint == "rerun with sudo"
    assert original.hint != "rerun with sudo"
    assert (changed.path, changed.message, changed.exit_code) == (
        original.path,
        original.message,
        ExitCode.IO,
    )
    assert type(changed) is DiskError
    assert str(changed) == f"{original.message}\n  hint: rerun with sudo"


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


def test_hub_refusals_carry_the_repo_and_revision_as_fields() -> None:
    from mlxpin.errors import AccessDeniedError, RepoNotFoundError, RevisionNotFoundError

    missing = RepoNotFoundError("gemma-4-31b-it", "main", "https://hub.example", False)
    assert (missing.repo, missing.revision, missing.token_sent) == ("gemma-4-31b-it", "main", False)
    assert missing.message.startswith("gemma-4-31b-it@main: repository not found")
    assert "no token was sent" in missing.message
    assert missing.hint is not None and "https://hub.example/gemma-4-31b-it" in missing.hint
    revision = RevisionNotFoundError("o/r", "mian", ["main"])
    assert revision.existing == ("main",) and revision.hint is not None
    assert revision.hint.endswith("the repo has: main")
    denied = AccessDeniedError("o/r", "v1", "access refused (403, a token was sent)", "check")
    assert (denied.repo, denied.revision, denied.exit_code) == ("o/r", "v1", ExitCode.NO_PERMISSION)
