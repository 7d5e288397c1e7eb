"""Keep lock/runtime.toml in step with the manifest's `[runtime]` (what `mlxpin lock` does).

A valid pin is kept without the network; a missing or stale one is resolved; `update`
re-resolves to the newest closure the ranges allow and reports old → new versions; a pin
whose manifest has no `[runtime]` any more is removed. The caller holds the lock dir's mutex.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlxpin.errors import LockCorruptError, MlxpinError
from mlxpin.project.manifest import Manifest
from mlxpin.project.runtimespec import RuntimeSpec
from mlxpin.runtime.pin import RuntimePin, pin_path, read_state, write_pin
from mlxpin.util.jsonable import fields_json

Resolver = Callable[[RuntimeSpec, Path, Mapping[str, str]], RuntimePin]


@dataclass(frozen=True)
class VersionChange:
    name: str
    old: str | None  # None: added
    new: str | None  # None: removed


@dataclass(frozen=True)
class RuntimeChange:
    action: str  # "kept" | "locked" | "updated" | "unchanged" | "removed" | "failed"
    reason: str | None = None
    key: str | None = None
    old_key: str | None = None
    packages: int = 0
    mlx_lm: str | None = None
    mlx: str | None = None
    changes: tuple[VersionChange, ...] = ()
    error: MlxpinError | None = None

    def to_json(self) -> dict[str, Any]:
        return fields_json(self)


def _versions(pin: RuntimePin) -> dict[str, str]:
    """name -> version(s); a package pinned twice under markers shows both."""
    found: dict[str, dict[str, None]] = {}
    for dist in pin.packages:
        found.setdefault(dist.name, {})[dist.version] = None
    return {name: " | ".join(versions) for name, versions in found.items()}


def version_changes(old: RuntimePin | None, new: RuntimePin) -> tuple[VersionChange, ...]:
    before = _versions(old) if old is not None else {}
    after = _versions(new)
    return tuple(
        VersionChange(name, before.get(name), after.get(name))
        for name in sorted(before.keys() | after.keys())
        if before.get(name) != after.get(name)
    )


def _summary(action: str, pin: RuntimePin, **fields: object) -> RuntimeChange:
    return RuntimeChange(
        action=action,
        key=pin.key,
        packages=len({d.name for d in pin.packages}),
        mlx_lm=pin.version_of("mlx-lm"),
        mlx=pin.version_of("mlx"),
        **fields,  # type: ignore[arg-type]
    )


def lock_runtime(
    manifest: Manifest,
    lock_dir: Path,
    environ: Mapping[str, str],
    *,
    update: bool,
    resolver: Resolver,
) -> RuntimeChange | None:
    """None when there is neither a `[runtime]` nor a runtime.toml."""
    state, old = read_state(manifest.runtime, lock_dir)
    if manifest.runtime is None:
        if state.state not in ("orphan", "corrupt"):
            return None
        try:
            pin_path(lock_dir).unlink()
        except FileNotFoundError:
            return None
        return RuntimeChange("removed", state.reason)
    if state.state == "ok" and old is not None and not update:
        return _summary("kept", old)
    reason = None if state.state == "ok" else state.reason
    try:
        new = resolver(manifest.runtime, manifest.path, environ)
        write_pin(lock_dir, new)
    except (MlxpinError, LockCorruptError) as exc:
        return RuntimeChange("failed", reason, error=exc)
    if old is None or state.state != "ok":
        action = "locked"
    elif old.key == new.key:
        action = "unchanged"
    else:
        action = "updated"
    return _summary(
        action,
        new,
        reason=reason,
        old_key=old.key if old is not None else None,
        changes=version_changes(old, new),
    )
