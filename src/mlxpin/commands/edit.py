"""`mlxpin add`, `remove`, `init`: manifest edits that keep every comment and line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlxpin.commands import lock as lock_cmd
from mlxpin.config import Settings
from mlxpin.errors import ExitCode
from mlxpin.project import edit
from mlxpin.project.edit import AddRequest, AddResult, InitResult, RemoveResult
from mlxpin.util.jsonable import Done, fields_json, json_value


@dataclass(frozen=True)
class Added:
    added: AddResult
    locked: lock_cmd.LockResult | None  # with --lock

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.OK if self.locked is None else self.locked.exit_code

    def to_json(self) -> dict[str, Any]:
        ok = self.locked is None or not self.locked.errors
        lock = None if self.locked is None else json_value(self.locked.changes)
        data = {"ok": ok, **fields_json(self.added), "lock": lock}
        if not ok and self.locked is not None:
            data["error"] = self.locked.to_json()["error"]
        return data


@dataclass(frozen=True)
class Removed(Done):
    removed: RemoveResult

    def to_json(self) -> dict[str, Any]:
        return {"ok": True, **fields_json(self.removed, removed_text="removed")}


@dataclass(frozen=True)
class Initialised(Done):
    created: InitResult

    def to_json(self) -> dict[str, Any]:
        return {"ok": True, **fields_json(self.created)}


def add(settings: Settings, request: AddRequest, *, then_lock: bool = False) -> Added:
    added = edit.add(settings, request)
    locked = lock_cmd.lock(settings, [added.name]) if then_lock else None
    return Added(added, locked)


def remove(settings: Settings, name: str) -> Removed:
    return Removed(edit.remove(settings, name))


def init(settings: Settings) -> Initialised:
    return Initialised(edit.init(settings))
