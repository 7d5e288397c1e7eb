"""A result's JSON when it is simply its fields: one rule instead of a dict written per class."""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlxpin.errors import ExitCode

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


def fields_json(result: DataclassInstance, **keys: str) -> dict[str, Any]:
    """Every field of ``result``, in order, as a JSON value; ``keys`` renames some
    (``lock_state="lock"``)."""
    return {keys.get(f.name, f.name): json_value(getattr(result, f.name)) for f in fields(result)}


@dataclass(frozen=True)
class Done:
    """A verb's result that always succeeds (exit 0); its JSON is "ok" and its fields."""

    exit_code = ExitCode.OK

    def to_json(self) -> dict[str, Any]:
        return {"ok": True, **fields_json(self)}


def json_value(value: object) -> Any:
    """A path as its string, a tuple as a list, a value that has ``to_json()`` as that, a
    dataclass as its fields; anything else (str, int, bool, None) as it is."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [json_value(item) for item in value]
    to_json = getattr(value, "to_json", None)
    if callable(to_json):
        return to_json()
    if is_dataclass(value) and not isinstance(value, type):
        return fields_json(value)
    return value
