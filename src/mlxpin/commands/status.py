"""`mlxpin status`: what is declared, locked, fetched and verified — without the network."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlxpin.config import Settings
from mlxpin.errors import LockCorruptError, ServerMissingError
from mlxpin.project.lockfile import LockedModel, pin_state, read_lock
from mlxpin.project.manifest import Manifest, ModelIdentity
from mlxpin.project.selection import manifest_of, pick
from mlxpin.runtime.server import PIN_FILE, unpinned_server
from mlxpin.store.layout import StoreLayout, check_stamp, size_on_disk
from mlxpin.util.jsonable import Done, fields_json


@dataclass(frozen=True)
class ModelStatus(ModelIdentity):
    """One model's line of `mlxpin status`."""

    source: str
    endpoint: str
    lock_state: str  # ok | missing | stale | corrupt
    lock_reason: str | None
    commit: str | None
    last_modified: str | None
    files: int
    total_size: int
    fetch_state: str  # verified | unverified | missing | unknown
    fetch_reason: str | None
    size_on_disk: int
    snapshot: Path | None
    origin: str | None  # where the verified bytes came from: hub | mirror | bundle | path

    def to_json(self) -> dict[str, Any]:
        return fields_json(self, lock_state="lock", fetch_state="fetch")


@dataclass(frozen=True)
class RuntimeStatus:
    """The runtime's line of `mlxpin status`."""

    state: str  # lock/runtime.toml: ok | missing | stale | corrupt | orphan; or "unpinned"
    reason: str | None
    key: str | None = None
    packages: int = 0
    mlx_lm: str | None = None  # pinned versions
    mlx: str | None = None
    installed: bool = False
    problem: str | None = None  # why it is not installed
    path: Path | None = None
    python: str | None = None  # unpinned: the interpreter that runs the server

    def to_json(self) -> dict[str, Any]:
        return fields_json(self)


@dataclass(frozen=True)
class StatusResult(Done):
    """What `mlxpin status` reports."""

    models: tuple[ModelStatus, ...]
    runtime: RuntimeStatus | None = None


def _unpinned() -> RuntimeStatus:
    try:
        server = unpinned_server()
    except ServerMissingError as exc:
        return RuntimeStatus("unpinned", "no [runtime]", problem=exc.message)
    return RuntimeStatus(
        "unpinned",
        "no [runtime]",
        mlx_lm=server.mlx_lm,
        mlx=server.mlx,
        installed=True,
        python=server.python,
    )


def _no_pin_file(lock_dir: Path) -> bool:
    try:
        os.stat(lock_dir / PIN_FILE)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False  # read_state says what is wrong with it
    return False


def runtime_status(settings: Settings, manifest: Manifest) -> RuntimeStatus:
    if manifest.runtime is None and _no_pin_file(settings.lock_dir):
        return _unpinned()  # the common case, without importing the pin's parser
    from mlxpin.runtime.layout import RuntimeLayout, check_runtime
    from mlxpin.runtime.pin import read_state

    state, pin = read_state(manifest.runtime, settings.lock_dir)
    if state.reason == "not pinned":
        return _unpinned()
    if pin is None:
        return RuntimeStatus(state.state, state.reason)
    layout = RuntimeLayout.of(settings)
    check = check_runtime(layout, pin.key)
    return RuntimeStatus(
        state=state.state,
        reason=state.reason,
        key=pin.key,
        packages=len({d.name for d in pin.packages}),
        mlx_lm=pin.version_of("mlx-lm"),
        mlx=pin.version_of("mlx"),
        installed=check.ok,
        problem=check.problem,
        path=layout.path(pin.key) if check.ok else None,
    )


def status(settings: Settings, names: Sequence[str] = ()) -> StatusResult:
    manifest = manifest_of(settings)
    layout = StoreLayout.of(settings)
    rows: list[ModelStatus] = []
    for spec in pick(manifest, names):
        lock: LockedModel | None = None
        try:
            lock = read_lock(settings.lock_dir, spec.name)
            state = pin_state(spec, lock)
            lock_state, lock_reason = state.state, state.reason
        except LockCorruptError as exc:
            lock_state, lock_reason = "corrupt", exc.problem
        fetch_state = "unknown"
        fetch_reason: str | None = "not locked"
        on_disk = 0
        snapshot: Path | None = None
        origin: str | None = None
        if lock is not None:
            stamp = check_stamp(layout, lock)
            snapshot = layout.view(lock)
            on_disk = size_on_disk(layout, lock)
            if stamp.ok:
                fetch_state, fetch_reason, origin = "verified", None, stamp.origin
            elif snapshot.is_dir():
                fetch_state, fetch_reason = "unverified", stamp.problem
            else:
                fetch_state, fetch_reason, snapshot = "missing", stamp.problem, None
        rows.append(
            ModelStatus(
                name=spec.name,
                api_label=spec.api_label,
                aliases=spec.aliases,
                source=spec.launch.source.describe(),
                endpoint=f"{spec.host}:{spec.port}",
                lock_state=lock_state,
                lock_reason=lock_reason,
                commit=lock.commit if lock else None,
                last_modified=lock.last_modified if lock else None,
                files=len(lock.files) if lock else 0,
                total_size=lock.total_size if lock else 0,
                fetch_state=fetch_state,
                fetch_reason=fetch_reason,
                size_on_disk=on_disk,
                snapshot=snapshot,
                origin=origin,
            )
        )
    return StatusResult(tuple(rows), runtime_status(settings, manifest))
