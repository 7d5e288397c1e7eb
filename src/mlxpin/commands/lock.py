"""`mlxpin lock`: pin what is missing or stale, move pins on --update, drop orphans."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlxpin.config import (
    DEFAULT_HUB_DEADLINE_S,
    HUB_DEADLINE_VARIABLE,
    STATE_DIR_HINT,
    Settings,
)
from mlxpin.errors import (
    ConfigError,
    ExitCode,
    LockCorruptError,
    LockStaleError,
    MlxpinError,
    PreflightError,
)
from mlxpin.hub.resolve import Resolution, resolve
from mlxpin.project.lockdir import lock_names_on_disk
from mlxpin.project.lockfile import (
    LockedModel,
    PinState,
    build_inputs,
    diff,
    lock_path,
    make_locked,
    original_of,
    pin_state,
    read_lock,
    write_lock,
)
from mlxpin.project.manifest import HubSource, Manifest, ModelSpec
from mlxpin.project.recipe import BuildInput, BuildPin, BuildSpec
from mlxpin.project.runtimespec import RuntimeSpec
from mlxpin.project.selection import (
    inputs_first,
    lock_dir_mutex,
    manifest_of,
    pick,
    read_locks,
    with_dependencies,
)
from mlxpin.runtime.lock import Resolver, RuntimeChange, lock_runtime
from mlxpin.runtime.pin import read_state
from mlxpin.runtime.server import engine_lock_dir
from mlxpin.util.atomic import hold_mutex
from mlxpin.util.jsonable import fields_json, json_value
from mlxpin.util.parallel import run_parallel
from mlxpin.util.writable import require_writable_dir

if TYPE_CHECKING:
    from mlxpin.hub.client import HubClient

MAX_PARALLEL = 32


@dataclass(frozen=True)
class LockChange:
    name: str
    action: str  # "kept" | "locked" | "updated" | "unchanged" | "removed" | "failed"
    source: str
    reason: str | None = None
    revision: str | None = None
    old_commit: str | None = None
    old_date: str | None = None
    new_commit: str | None = None
    new_date: str | None = None
    files_changed: int = 0
    size_delta: int = 0
    total_size: int = 0
    gated: bool = False
    error: MlxpinError | None = None

    def to_json(self) -> dict[str, Any]:
        return fields_json(self)


@dataclass(frozen=True)
class LockResult:
    changes: tuple[LockChange, ...]
    runtime: RuntimeChange | None = None  # lock/runtime.toml (None: no [runtime], no pin)
    engines: tuple[RuntimeChange, ...] = ()  # lock/engines/<engine>/runtime.toml

    @property
    def errors(self) -> tuple[MlxpinError, ...]:
        found = [c.error for c in self.changes if c.error is not None]
        for runtime in (self.runtime, *self.engines):
            if runtime is not None and runtime.error is not None:
                found.append(runtime.error)
        return tuple(found)

    @property
    def exit_code(self) -> ExitCode:
        return self.errors[0].exit_code if self.errors else ExitCode.OK

    def to_json(self) -> dict[str, Any]:
        data = {"ok": not self.errors, **fields_json(self, changes="models")}
        if not self.engines:  # the key is there only when the manifest pins an engine
            del data["engines"]
        if self.errors:
            data["error"] = PreflightError.of(self.errors).to_json()
        return data


@dataclass(frozen=True)
class CheckResult:
    states: tuple[PinState, ...]
    runtime: PinState | None = None  # None: neither a [runtime] nor lock/runtime.toml
    engines: tuple[PinState, ...] = ()  # [engines.x]'s pins, named engines.x

    @property
    def all_states(self) -> tuple[PinState, ...]:
        runtime = [self.runtime] if self.runtime is not None else []
        return (*self.states, *runtime, *self.engines)

    @property
    def ok(self) -> bool:
        return all(s.state == "ok" for s in self.all_states)

    @property
    def problem(self) -> LockStaleError | None:
        """What `--check` found wrong, as the error a user reads."""
        bad = [s for s in self.all_states if s.state != "ok"]
        if not bad:
            return None
        return LockStaleError(
            [f"{s.name} is {s.state}" for s in bad],
            [s.name for s in bad if s.state != "orphan" and s in self.states],
        )

    @property
    def exit_code(self) -> ExitCode:
        if self.ok:
            return ExitCode.OK
        corrupt = any(s.state == "corrupt" for s in self.all_states)
        return ExitCode.DATA if corrupt else ExitCode.CONFIG

    def to_json(self) -> dict[str, Any]:
        runtime = self.runtime
        problem = self.problem
        return {
            "ok": self.ok,
            **({} if problem is None else {"error": problem.to_json()}),
            "models": json_value(self.states),
            "runtime": None
            if runtime is None
            else {"state": runtime.state, "reason": runtime.reason},
            **(
                {
                    "engines": [
                        {"name": e.name, "state": e.state, "reason": e.reason} for e in self.engines
                    ]
                }
                if self.engines
                else {}
            ),
        }


def default_runtime_resolver() -> Resolver:
    from mlxpin.runtime.resolve import resolve_runtime

    return resolve_runtime


def files_changed(old: LockedModel | None, new: LockedModel) -> int:
    before = {} if old is None else {f.path: f for f in old.files}
    after = {f.path: f for f in new.files}
    return sum(1 for p in before.keys() | after.keys() if before.get(p) != after.get(p))


def check(settings: Settings, names: Sequence[str] = ()) -> CheckResult:
    """No network, no writes: what `mlxpin lock` would have to do."""
    manifest = manifest_of(settings)
    specs = with_dependencies(manifest, pick(manifest, names), builds=True)
    locks = read_locks(settings.lock_dir, [s.name for s in specs])
    builder = builder_of(settings, manifest, specs)
    states = diff(manifest, locks, lock_names_on_disk(settings.lock_dir), builder)
    wanted = {s.name for s in specs}
    runtime, _ = read_state(manifest.runtime, settings.lock_dir)
    engines = tuple(
        replace(
            read_state(spec, engine_lock_dir(settings.lock_dir, spec.server))[0],
            name=f"engines.{spec.server}",
        )
        for spec in manifest.engines
    )
    return CheckResult(
        tuple(s for s in states if s.name in wanted or s.state == "orphan"),
        None if runtime.reason == "not pinned" else runtime,
        engines,
    )


def builder_of(settings: Settings, manifest: Manifest, specs: Sequence[ModelSpec]) -> str | None:
    """What would build the built models among ``specs`` now (None: there are none, or
    the runtime pin that runs them is not valid: its own state says so)."""
    if not any(isinstance(s.launch.source, BuildSpec) for s in specs):
        return None
    from mlxpin.build.identity import builder_identity

    try:
        return builder_identity(settings, manifest)
    except MlxpinError:
        return None


def hub_deadline_s(settings: Settings) -> float:
    """Seconds one Hub look-up may take in all, from MLXPIN_HUB_DEADLINE (78 if invalid)."""
    if settings.hub_deadline is None:
        return DEFAULT_HUB_DEADLINE_S
    try:
        seconds = float(settings.hub_deadline)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(
            f"{HUB_DEADLINE_VARIABLE}={settings.hub_deadline} is not a number of seconds",
            f"set it to a positive number such as {DEFAULT_HUB_DEADLINE_S:g}, or unset it",
        )
    return seconds


def default_hub_client(settings: Settings) -> HubClient:
    from mlxpin.hub.client import HubClient, HubConfig

    return HubClient(
        HubConfig(
            endpoint=settings.endpoint,
            token_present=settings.token_present,
            offline=settings.offline,
            deadline_s=hub_deadline_s(settings),
        )
    )


def lock(
    settings: Settings,
    names: Sequence[str] = (),
    *,
    update: bool = False,
    jobs: int = MAX_PARALLEL,
    hub_factory: Callable[[Settings], HubClient] = default_hub_client,
    update_runtime: bool = False,
    resolver: Resolver | None = None,
    environ: Mapping[str, str] | None = None,
) -> LockResult:
    """Lock what is missing or stale (everything named, with update=True); drop orphans.
    The runtime pin is kept, locked when missing or stale, moved with `update_runtime`."""
    manifest = manifest_of(settings)
    picked = pick(manifest, names)
    specs = with_dependencies(manifest, picked, builds=True)
    built = [s for s in specs if isinstance(s.launch.source, BuildSpec)]
    specs = tuple(s for s in specs if s not in built)
    moving = {s.name for s in picked} if update else set()
    require_writable_dir(lock_dir_mutex(settings).parent, STATE_DIR_HINT)
    with hold_mutex(lock_dir_mutex(settings)):
        locks = read_locks(settings.lock_dir, [s.name for s in specs])
        states = {s.name: s for s in diff(manifest, locks, ())}
        changes: list[LockChange] = []
        todo: list[tuple[ModelSpec, LockedModel | None, str | None]] = []
        for spec in specs:
            current = locks.get(spec.name)
            old = current if isinstance(current, LockedModel) else None
            state = states[spec.name]
            if state.state == "ok" and spec.name not in moving:
                assert old is not None
                changes.append(_change(spec, "kept", old, old))
            else:
                todo.append((spec, old, state.reason))
        needs_hub = any(isinstance(spec.launch.source, HubSource) for spec, _, _ in todo)
        client = hub_factory(settings) if needs_hub else None

        def work(item: tuple[ModelSpec, LockedModel | None, str | None]) -> LockChange:
            spec, old, reason = item
            try:
                resolution = resolve(spec, client)
                write_lock(settings.lock_dir, resolution.lock)
            except MlxpinError as exc:
                return LockChange(
                    spec.name, "failed", spec.launch.source.describe(), reason, error=exc
                )
            return _changed(spec, old, resolution, reason)

        if todo:
            changes.extend(run_parallel(work, todo, workers=jobs))
        changes.extend(_remove_orphans(settings, set(manifest.names)))
        # mlx-lm's [runtime] in lock/; each [engines.x] in its own directory, read as is.
        runtimes = [
            lock_runtime(
                replace(manifest, runtime=spec),
                lock_dir,
                os.environ if environ is None else environ,
                update=update_runtime,
                resolver=resolver or default_runtime_resolver(),
            )
            for spec, lock_dir in (
                (manifest.runtime, settings.lock_dir),
                *_engine_dirs(settings, manifest),
            )
        ]
        # Built models last: their locks record their inputs' pins and the builder.
        changes.extend(_lock_builds(settings, manifest, built, moving))
    order = {s.name: i for i, s in enumerate(manifest.models)}
    changes.sort(key=lambda c: (order.get(c.name, len(order)), c.name))
    engines = tuple(change for change in runtimes[1:] if change is not None)
    return LockResult(tuple(changes), runtimes[0], engines)


def _lock_builds(
    settings: Settings, manifest: Manifest, built: Sequence[ModelSpec], moving: set[str]
) -> list[LockChange]:
    """Pin each built model's recipe to its inputs' current pins and the builder; a lock
    that already answers all three keeps its recorded output."""
    if not built:
        return []
    from mlxpin.build.identity import builder_identity

    changes: list[LockChange] = []
    try:
        builder = builder_identity(settings, manifest)
    except MlxpinError as exc:
        for spec in built:
            describe = spec.launch.source.describe()
            changes.append(LockChange(spec.name, "failed", describe, "builder", error=exc))
        return changes
    for spec in inputs_first(manifest, built):
        describe = spec.launch.source.describe()
        try:
            old = read_lock(settings.lock_dir, spec.name)
        except LockCorruptError:
            old = None
        inputs = build_inputs(settings.lock_dir, spec)
        state = pin_state(spec, old, inputs, builder)
        if state.state == "ok" and old is not None:
            changes.append(_change(spec, "kept", old, old))
            continue
        missing = [name for name, lock in inputs.items() if not isinstance(lock, LockedModel)]
        if missing:
            error = LockStaleError(
                [f"{spec.name}: its input {missing[0]} has no valid lock"], [missing[0]]
            )
            changes.append(LockChange(spec.name, "failed", describe, state.reason, error=error))
            continue
        pins = tuple(
            BuildInput(name, lock.tree_hash, lock.commit)
            for name, lock in inputs.items()
            if isinstance(lock, LockedModel)
        )
        new = make_locked(
            spec.name, original_of(spec), None, None, (), None, BuildPin(pins, builder)
        )
        write_lock(settings.lock_dir, new)
        action = "locked" if old is None or state.state != "ok" else "unchanged"
        changes.append(_change(spec, action, old, new, state.reason))
    return changes


def _engine_dirs(settings: Settings, manifest: Manifest) -> list[tuple[RuntimeSpec, Path]]:
    """[engines.x]'s pin directories (created: runtime/ writes into them as is)."""
    dirs = [(spec, engine_lock_dir(settings.lock_dir, spec.server)) for spec in manifest.engines]
    for _, path in dirs:
        path.mkdir(parents=True, exist_ok=True)
    return dirs


def _changed(
    spec: ModelSpec, old: LockedModel | None, resolution: Resolution, reason: str | None
) -> LockChange:
    new = resolution.lock
    if old is None or reason is not None:
        action = "locked"
    elif old.tree_hash == new.tree_hash and old.commit == new.commit:
        action = "unchanged"
    else:
        action = "updated"
    return _change(spec, action, old, new, reason, resolution.gated)


def _change(
    spec: ModelSpec,
    action: str,
    old: LockedModel | None,
    new: LockedModel,
    reason: str | None = None,
    gated: bool = False,
) -> LockChange:
    return LockChange(
        spec.name,
        action,
        spec.launch.source.describe(),
        reason,
        revision=new.original.revision,
        old_commit=old.commit if old else None,
        old_date=old.last_modified if old else None,
        new_commit=new.commit,
        new_date=new.last_modified,
        files_changed=files_changed(old, new),
        size_delta=new.total_size - (old.total_size if old else 0),
        total_size=new.total_size,
        gated=gated,
    )


def _remove_orphans(settings: Settings, names: set[str]) -> list[LockChange]:
    removed: list[LockChange] = []
    for name in lock_names_on_disk(settings.lock_dir):
        if name in names:
            continue
        path = lock_path(settings.lock_dir, name)
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(LockChange(name, "removed", str(path), "not in the manifest"))
    return removed
