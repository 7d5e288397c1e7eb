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
