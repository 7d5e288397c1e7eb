"""`mlxpin add`, `remove`, `init`: manifest edits that keep every comment and line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlxpin.commands import lock as lock_cmd
from mlxpin.config import Settings
from mlxpin.errors import ExitCode
from mlxpin.project import edit
from mlxpin.project.edit import AddRequest, AddResult, InitResult, RemoveResult


@dataclass(frozen=True)
class Added:
    added: AddResult
    locked: lock_cmd.LockResult | None  # with --lock

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.OK if self.locked is None else self.locked.exit_code

    def to_json(self) -> dict[str, Any]:
        a = self.added
        return {
            "ok": self.locked is None or not self.locked.errors,
            "name": a.name,
            "manifest": str(a.manifest),
            "api_label": a.api_label,
            "port": a.port,
            "source": a.source,
            "added": a.added,
            "warnings": list(a.warnings),
            "lock": None if self.locked is None else [c.to_json() for c in self.locked.changes],
        }


@dataclass(frozen=True)
class Removed:
    removed: RemoveResult

    exit_code = ExitCode.OK

    def to_json(self) -> dict[str, Any]:
        r = self.removed
        return {
            "ok": True,
            "name": r.name,
            "manifest": str(r.manifest),
            "removed": r.removed_text,
            "lock_file": str(r.lock_file) if r.lock_file else None,
        }


@dataclass(frozen=True)
class Initialised:
    created: InitResult

    exit_code = ExitCode.OK

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": True,
            "manifest": str(self.created.manifest),
            "models": list(self.created.models),
        }


def add(settings: Settings, request: AddRequest, *, then_lock: bool = False) -> Added:
    added = edit.add(settings, request)
    locked = lock_cmd.lock(settings, [added.name]) if then_lock else None
    return Added(added, locked)


def remove(settings: Settings, name: str) -> Removed:
    return Removed(edit.remove(settings, name))


def init(settings: Settings) -> Initialised:
    return Initialised(edit.init(settings))
