"""What running processes use, so `gc` keeps it: `<state>/inuse/<pid>-<random>/NAME.toml`.

A process (an import, a running `serve`/`launch`) writes the locks it uses there before
it places or loads a byte and removes the directory when it ends. gc reads every such
directory whose process is alive as one more lock dir; one of a dead process is stale and
`gc --yes` removes it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from mlxpin.errors import MlxpinError
from mlxpin.project.lockdir import list_lock_dir
from mlxpin.project.lockfile import LockedModel, read_lock, write_lock
from mlxpin.store.layout import StoreLayout


class InUse:
    """This process's in-use directory (created on the first `add`)."""

    def __init__(self, layout: StoreLayout) -> None:
        self.path = layout.state_dir / "inuse" / f"{os.getpid()}-{os.urandom(4).hex()}"

    def add(self, lock: LockedModel) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_lock(self.path, lock)

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> InUse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _alive(name: str) -> bool:
    try:
        os.kill(int(name.split("-", 1)[0]), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # another user's process
        return True
    return True


def in_use_dirs(layout: StoreLayout, kind: str = "inuse") -> Iterator[tuple[Path, bool]]:
    """Every in-use directory (or `incoming` receive), and whether its process is alive."""
    try:
        entries = sorted((layout.state_dir / kind).iterdir())
    except OSError:
        return
    for entry in entries:
        yield entry, _alive(entry.name)


def locks_in_use(layout: StoreLayout) -> list[LockedModel]:
    locks: list[LockedModel] = []
    for path, alive in in_use_dirs(layout):
        for name in list_lock_dir(path).names if alive else ():
            with contextlib.suppress(MlxpinError):
                locks.extend(lock for lock in [read_lock(path, name)] if lock is not None)
    return locks


def remove_stale(layout: StoreLayout) -> None:
    """In-use records and half-received copies of processes that are gone."""
    for path, alive in (*in_use_dirs(layout), *in_use_dirs(layout, "incoming")):
        if not alive:
            shutil.rmtree(path, ignore_errors=True)
