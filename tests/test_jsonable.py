"""`fields_json`: a result that is simply its fields reports every one, in order, as JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mlxpin.errors import UsageError
from mlxpin.util.jsonable import fields_json


@dataclass(frozen=True)
class Inner:
    name: str
    old: str | None


@dataclass(frozen=True)
class Row:
    name: str
    lock_state: str
    path: Path | None
    aliases: tuple[str, ...]
    changes: tuple[Inner, ...]
    error: UsageError | None


def test_every_field_in_order_as_json_values() -> None:
    row = Row("x", "ok", Path("/a/b"), ("l1", "l2"), (Inner("p", None),), UsageError("bad"))
    data = fields_json(row, lock_state="lock")
    assert list(data) == ["name", "lock", "path", "aliases", "changes", "error"]
    assert data["path"] == "/a/b"
    assert data["aliases"] == ["l1", "l2"]
    assert data["changes"] == [{"name": "p", "old": None}]
    assert data["error"] == UsageError("bad").to_json()
    assert json.loads(json.dumps(data)) == data


def test_absent_values_stay_null() -> None:
    data = fields_json(Row("x", "missing", None, (), (), None))
    assert data == {
        "name": "x",
        "lock_state": "missing",
        "path": None,
        "aliases": [],
        "changes": [],
        "error": None,
    }
