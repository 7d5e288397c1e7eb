"""`mlxpin export` and `mlxpin import`: carry verified pins to another host as one bundle."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from mlxpin.config import Settings
from mlxpin.errors import (
    ConfigError,
    DataError,
    DiskError,
    Flag,
    MlxpinError,
    NoInputError,
    PinMismatchError,
    UsageError,
)
from mlxpin.project.lockdir import lock_names_on_disk
from mlxpin.project.lockfile import LockedModel, lock_path, read_lock, write_lock
from mlxpin.project.manifest import RESERVED_NAMES
from mlxpin.project.selection import lock_dir_mutex, locked_models, manifest_of, pick
from mlxpin.project.validate import is_commit
from mlxpin.store.bundle import BundleReader
from mlxpin.store.gc.inventory import read_roots
from mlxpin.store.inuse import InUse
from mlxpin.store.layout import StoreLayout, register_root
from mlxpin.store.transfer import import_bundle, plan_export, write_bundle
from mlxpin.store.verify import NoProgress, Progress
from mlxpin.util.atomic import disk_error, fsync_dir, hold_mutex, temp_name
from mlxpin.util.jsonable import Done, fields_json


@dataclass(frozen=True)
class ExportResult(Done):
    models: tuple[str, ...]
    blobs: int
    total_size: int
    written_bytes: int
    output: str  # a path, or "-" for stdout

    def to_json(self) -> dict[str, Any]:
        return {"ok": True, **fields_json(self, written_bytes="bytes")}


def export(
    settings: Settings,
    names: Sequence[str],
    output: Path | None,
    stdout: BinaryIO,
    progress: Progress | None = None,
) -> ExportResult:
    """Write the named models (with drafts and adapters) and their verified files.

    `output` None writes to `stdout`; a path is written aside and renamed into place at
    the end, so a bundle under its name is always complete.
    """
    manifest = manifest_of(settings)
    locks = locked_models(settings, manifest, pick(manifest, names))
    plan = plan_export(StoreLayout.of(settings), locks)  # refuses before any byte is written
    progress = progress or NoProgress()
    if output is None:
        written = write_bundle(plan, stdout, progress)
        label = "-"
    else:
        target = output.absolute()
        tmp = temp_name(target)
        try:
            with open(tmp, "xb") as handle:
                written = write_bundle(plan, handle, progress)
                os.fsync(handle.fileno())
            tmp.replace(target)
            fsync_dir(target.parent)
        except OSError as exc:
            raise disk_error(target, exc) or DiskError(target, exc.strerror or str(exc)) from None
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        label = str(target)
    return ExportResult(
        tuple(lock.name for lock in locks), len(plan.blobs), plan.total_size, written, label
    )


@dataclass(frozen=True)
class ImportedModelResult:
    name: str
    snapshot: Path
    files: int
    total_size: int
    written_bytes: int
    commit: str | None
    lock: str  # "same" (the project pins the same) | "written" | "absent" (not adopted)


@dataclass(frozen=True)
class ImportResult(Done):
    models: tuple[ImportedModelResult, ...]
    received_bytes: int
    source: str


def _pin(lock: LockedModel) -> str:
    where = lock.original.repo or lock.original.path or "?"
    return f"{where}@{lock.commit}" if lock.commit else f"{where} ({lock.tree_hash})"


def _pin_key(lock: LockedModel) -> tuple[str | None, str | None, str | None, str]:
    return lock.original.repo, lock.original.path, lock.commit, lock.tree_hash


def _locks_everywhere(settings: Settings, layout: StoreLayout) -> list[LockedModel]:
    """Every lock of this project and of every project registered with the cache."""
    dirs = {settings.lock_dir, *(r.lock_dir for r in read_roots(layout) if r.lock_dir)}
    locks: list[LockedModel] = []
    for lock_dir in dirs:
        for name in lock_names_on_disk(lock_dir):
            with contextlib.suppress(MlxpinError, OSError):
                locks.extend(lock for lock in [read_lock(lock_dir, name)] if lock is not None)
    return locks


def _clashes(new: LockedModel, old: LockedModel) -> bool:
    """Would publishing `new` move a ref or replace a snapshot file that `old` pins?"""
    if new.original.repo is None or new.original.repo != old.original.repo:
        return False
    if new.commit == old.commit:
        theirs = {f.path: f.oid for f in old.files}
        return any(theirs.get(f.path, f.oid) != f.oid for f in new.files)
    revision = new.original.revision
    return revision is not None and not is_commit(revision) and revision == old.original.revision


def import_(
    settings: Settings,
    source: Path | None,
    stdin: BinaryIO,
    write_locks: bool = False,
    progress: Progress | None = None,
) -> ImportResult:
    """Import a bundle (a path, or `stdin` when None); no network, no token."""
    layout = StoreLayout.of(settings)
    progress = progress or NoProgress()

    pinned = _locks_everywhere(settings, layout)
    with InUse(layout) as in_use:  # gc keeps what it places, until its locks are written
        return _import(settings, layout, source, stdin, write_locks, progress, in_use, pinned)


def _import(
    settings: Settings,
    layout: StoreLayout,
    source: Path | None,
    stdin: BinaryIO,
    write_locks: bool,
    progress: Progress,
    in_use: InUse,
    pinned: list[LockedModel],
) -> ImportResult:
    def check_lock(lock: LockedModel) -> None:
        """The project's locks are the trust anchor: a bundle's lock vouches only for itself."""
        if lock.name in RESERVED_NAMES:
            raise DataError(f"{lock.name}: the bundle uses a reserved model name")
        ours = read_lock(settings.lock_dir, lock.name)
        if ours is not None and _pin_key(ours) != _pin_key(lock):
            raise PinMismatchError(
                lock.name, _pin(ours), _pin(lock), lock_path(settings.lock_dir, lock.name)
            )
        if ours is None and not write_locks:
            raise ConfigError(
                f"{lock.name}: this project has no lock for {_pin(lock)}",
                "lock it here, or adopt the bundle's lock with "
                f"{Flag('import', '--write-locks')} if you trust where the bundle came from",
            )
        clash = None if ours else next((o for o in pinned if _clashes(lock, o)), None)
        if clash is not None:
            raise ConfigError(
                f"{lock.name}: the bundle's {_pin(lock)} would change what the lock of "
                f"{clash.name} pins ({_pin(clash)}) in the shared cache",
                "nothing was imported",
            )
        in_use.add(lock)

    if source is None:
        label = "<stdin>"
        outcome = import_bundle(layout, BundleReader(stdin, label), check_lock, progress)
    else:
        label = str(source)
        try:
            handle = open(source, "rb")  # noqa: SIM115 -- closed below
        except FileNotFoundError:
            raise NoInputError(f"{source}: no such bundle", "check the path") from None
        except IsADirectoryError:
            raise UsageError(f"{source} is a directory, not a bundle") from None
        with handle:
            outcome = import_bundle(layout, BundleReader(handle, label), check_lock, progress)
    register_root(layout, settings.lock_dir)
    results: list[ImportedModelResult] = []
    with hold_mutex(lock_dir_mutex(settings)):
        for model in outcome.models:
            state = "same" if read_lock(settings.lock_dir, model.name) is not None else "absent"
            if state == "absent" and write_locks:
                write_lock(settings.lock_dir, model.lock)
                state = "written"
            results.append(
                ImportedModelResult(
                    model.name,
                    model.view,
                    model.files,
                    model.total_size,
                    model.written_bytes,
                    model.lock.commit,
                    state,
                )
            )
    return ImportResult(tuple(results), outcome.received_bytes, label)
