"""How `mlxpin gc` deletes a planned item safely: under the blob's or view's mutex that
`fetch` takes (busy: a fetch is at work, the item is skipped), after re-checking it did not
become live or change, and a view's stamp before its directory (so a crash half-way leaves
nothing that looks verified)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mlxpin.errors import LockBusyError
from mlxpin.store.gc.plan import Doomed, LiveSet
from mlxpin.store.records import FileStat
from mlxpin.util.atomic import hold_mutex

LOCK_TIMEOUT_S = 0.5

Status = Literal["would_remove", "removed", "busy", "changed", "live", "gone", "failed"]


@dataclass(frozen=True)
class ItemOutcome:
    item: Doomed
    status: Status
    detail: str | None = None

    def to_json(self) -> dict[str, Any]:
        doomed = self.item
        return {
            "kind": doomed.kind,
            "path": str(doomed.path),
            "size": doomed.total_size,
            "reason": doomed.reason,
            "status": self.status,
            "detail": self.detail,
            "with": [{"kind": f.kind, "path": str(f.path)} for f in doomed.follow],
        }


def _unlink(path: Path) -> bool:
    """Remove a file or symlink; a read-only file (local blobs are 0444) is made writable."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except PermissionError:
        if not path.is_symlink():  # never chmod through a link
            with contextlib.suppress(OSError):
                os.chmod(path, 0o644)
        path.unlink()
    return True


def _remove_tree(path: Path) -> bool:
    """Move the directory out of sight first, so no half-deleted view is ever visible."""
    if not path.exists() and not path.is_symlink():
        return False
    trash = path.with_name(f".{path.name}.old-gc-{secrets.token_hex(4)}")
    path.replace(trash)
    shutil.rmtree(trash, ignore_errors=True)
    return True


def _prune(directory: Path, stop: Path) -> None:
    while directory != stop and stop in directory.parents:
        try:
            directory.rmdir()
        except OSError:
            return
        directory = directory.parent


def _remove(item: Doomed) -> bool:
    if (
        item.kind in ("view", "temp", "runtime")
        and item.path.is_dir()
        and not item.path.is_symlink()
    ):
        return _remove_tree(item.path)
    removed = _unlink(item.path)
    if item.kind in ("link", "ref") and item.prune_to is not None:
        _prune(item.path.parent, item.prune_to)
    return removed


def sweep_item(item: Doomed, live: LiveSet, timeout_s: float = LOCK_TIMEOUT_S) -> ItemOutcome:
    """Delete one planned item and its followers, unless it became live, changed, or is busy."""
    if item.path in live:
        return ItemOutcome(item, "live", "a lock written during gc references it")
    if item.unless_exists is not None and os.path.lexists(item.unless_exists):
        return ItemOutcome(item, "changed", "its snapshot is still there")
    try:
        mutex = item.mutex
        with contextlib.nullcontext() if mutex is None else hold_mutex(mutex, timeout_s):
            if item.expect is not None:
                try:
                    current = FileStat.of(item.path)
                except FileNotFoundError:
                    return ItemOutcome(item, "gone")
                if current != item.expect:
                    return ItemOutcome(item, "changed", "changed since it was scanned")
            # A view's stamp goes first: a view without its stamp is never trusted.
            stamps = [f for f in item.follow if f.kind == "stamp"]
            for follower in stamps:
                _unlink(follower.path)
            if not _remove(item):
                return ItemOutcome(item, "gone")
            for follower in item.follow:
                if follower.kind != "stamp":
                    _remove(follower)
    except LockBusyError:
        return ItemOutcome(item, "busy", "another mlxpin or huggingface_hub holds its lock")
    except OSError as exc:
        return ItemOutcome(item, "failed", exc.strerror or str(exc))
    return ItemOutcome(item, "removed")
