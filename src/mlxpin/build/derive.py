"""Build one model from its locked recipe: check the derivation, run the step, compare the
bytes with the recorded output, then record (first build) and install — or, with
``check_only``, compare and install nothing (`nix build --check`)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from mlxpin.build.early import EarlyHashes
from mlxpin.build.identity import this_platform
from mlxpin.build.step import StepInputs, hash_output, run_step, step_argv
from mlxpin.build.step import step_environment as environment_of
from mlxpin.config import Settings
from mlxpin.errors import (
    BuildFailedError,
    BuildMismatchError,
    LockStaleError,
    MlxpinError,
    NoInputError,
    Run,
    ServerMissingError,
    human_size,
)
from mlxpin.project.lockfile import LockedFile, LockedModel, make_locked, read_lock, write_lock
from mlxpin.project.manifest import Manifest
from mlxpin.project.memory import physical_memory
from mlxpin.runtime.server import server_runtime
from mlxpin.store.adopt import adopt_files
from mlxpin.store.layout import StoreLayout, check_stamp
from mlxpin.store.verify import Progress
from mlxpin.util.atomic import hold_mutex


@dataclass(frozen=True)
class BuildOutcome:
    name: str
    action: str  # "built" | "recorded" (first build) | "checked" | "up to date"
    files: int
    total_size: int
    seconds: float
    built_on: str | None
    snapshot: Path | None


@dataclass(frozen=True)
class Builder:
    """What runs builds here: the builder's identity (as locks record it) and its
    interpreter."""

    identity: str
    python: str


def builder_here(settings: Settings, manifest: Manifest, identity: str) -> Builder:
    """The pinned runtime's interpreter (installed and intact), or this interpreter."""
    if manifest.runtime is not None:
        return Builder(identity, server_runtime(settings, manifest).python)
    if importlib.util.find_spec("mlx_lm") is None:
        raise ServerMissingError(
            f"no `mlx_lm` module for {sys.executable}: builds run mlx_lm convert and fuse"
        )
    return Builder(identity, sys.executable)


def input_views(layout: StoreLayout, lock_dir: Path, built: LockedModel) -> tuple[StepInputs, int]:
    """The verified snapshots ``built``'s step reads, and their bytes; 66 naming what to
    fetch (and, when an output is recorded, where else it may come from)."""
    assert built.original.build is not None
    name = built.name
    views: list[Path] = []
    size = 0
    for input_name in built.original.build.inputs:
        lock = read_lock(lock_dir, input_name)
        assert lock is not None  # valid_locks checked the pins the build recorded
        check = check_stamp(layout, lock)
        if lock.unbuilt or not check.ok:
            problem = "not built yet" if lock.unbuilt else check.problem
            elsewhere = (
                f" (no output of {name} is recorded yet to take from elsewhere)"
                if built.unbuilt
                else f", or take {name}'s output from a bundle ({Run.of('import', 'FILE')}) "
                "or a mirror (HF_ENDPOINT) instead"
            )
            raise NoInputError(
                f"{name}: its input {input_name} is not present here ({problem})",
                f"run {Run.of('fetch', input_name)} first{elsewhere}",
            )
        views.append(layout.view(lock))
        size += lock.total_size
    return StepInputs(views[0], views[1] if len(views) > 1 else None), size


def _preflight_memory(name: str, need: int, memory: int) -> None:
    if memory and need > memory:
        raise BuildFailedError(
            name,
            f"the build needs about {human_size(need)} of memory (its input plus its output), "
            f"more than this machine's {human_size(memory)}",
            "build it on a larger machine and carry the output over with "
            f"{Run.of('export', name, '--output', 'FILE')}, or use a mirror",
            temporary=False,
        )


def differing(recorded: tuple[LockedFile, ...], built: tuple[LockedFile, ...]) -> list[str]:
    before = {f.path: (f.size, f.oid) for f in recorded}
    after = {f.path: (f.size, f.oid) for f in built}
    return sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))


def build_model(
    settings: Settings,
    lock: LockedModel,
    builder: Builder,
    progress: Progress,
    *,
    check_only: bool = False,
    environ: Mapping[str, str] | None = None,
    memory: Callable[[], int] = physical_memory,
    note: Callable[[str], None] = lambda _: None,
) -> BuildOutcome:
    """Build ``lock`` (a built model's valid lock). Raises BuildMismatchError (65) when the
    bytes differ from a recorded output: nothing is installed then."""
    started = time.monotonic()
    assert lock.build is not None and lock.original.build is not None
    spec = lock.original.build
    if lock.build.builder != builder.identity:
        raise LockStaleError(
            [f"{lock.name}: the builder changed: {lock.build.builder} → {builder.identity}"],
            [lock.name],
        )
    if check_only and lock.unbuilt:
        raise NoInputError(
            f"{lock.name}: no output is recorded yet, so there is nothing to check against",
            f"run {Run.of('build', lock.name)} first",
        )
    layout = StoreLayout.of(settings)
    if not check_only and not lock.unbuilt and check_stamp(layout, lock).ok:
        return BuildOutcome(
            lock.name, "up to date", len(lock.files), lock.total_size, 0.0, None, layout.view(lock)
        )
    inputs, input_size = input_views(layout, settings.lock_dir, lock)
    expected = lock.total_size if not lock.unbuilt else input_size
    _preflight_memory(lock.name, input_size + expected, memory())
    progress.add_total(expected)
    work = layout.state_dir / "builds" / f"{lock.name}-{os.urandom(4).hex()}"
    work.mkdir(parents=True, mode=0o700)
    try:
        out = work / "out"
        argv = step_argv(builder.python, spec, inputs, out)
        log_path = layout.state_dir / "logs" / "builds" / f"{lock.name}.log"
        env = environ_for_build(environ)
        note(
            f"{lock.name}: {spec.describe()}, by {builder.identity} ({builder.python}); "
            f"its log: {log_path}"
        )
        early = EarlyHashes(out)
        try:
            run_step(lock.name, argv, env, out, log_path, progress, early)
            files = hash_output(lock.name, out, early)
        finally:
            early.close()
        platform = this_platform()
        made = make_locked(
            lock.name,
            lock.original,
            None,
            None,
            files,
            None,
            replace(lock.build, built_on=platform),
        )
        if not lock.unbuilt:
            changed = differing(lock.files, made.files)
            if changed:
                other = lock.build.built_on
                raise BuildMismatchError(
                    lock.name,
                    changed,
                    f"{other} (this is {platform})" if other != platform else None,
                )
        seconds = time.monotonic() - started
        if check_only:
            return BuildOutcome(
                lock.name, "checked", len(files), made.total_size, seconds, platform, None
            )
        action = "built"
        if lock.unbuilt:
            _record(settings, lock, made)
            action = "recorded"
        made_paths = {f.path: out / f.path for f in files}
        view = adopt_files(layout, made if lock.unbuilt else lock, made_paths)
        return BuildOutcome(
            lock.name,
            action,
            len(files),
            made.total_size,
            time.monotonic() - started,
            platform,
            view,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def environ_for_build(environ: Mapping[str, str] | None) -> dict[str, str]:
    return environment_of(os.environ if environ is None else environ)


def _record(settings: Settings, unbuilt: LockedModel, made: LockedModel) -> None:
    """Write the first output into the lock, unless the lock moved meanwhile (another build
    recorded one, or `lock` re-pinned it): then this build is refused, not merged."""
    from mlxpin.project.selection import lock_dir_mutex

    with hold_mutex(lock_dir_mutex(settings)):
        now = None
        with contextlib.suppress(MlxpinError):
            now = read_lock(settings.lock_dir, unbuilt.name)
        if now != unbuilt:
            if now is not None and now.build is not None and not now.unbuilt:
                changed = differing(now.files, made.files)
                if not changed:
                    return
                raise BuildMismatchError(unbuilt.name, changed, None)
            raise LockStaleError(
                [f"{unbuilt.name}: its lock changed while it was building"], [unbuilt.name]
            )
        write_lock(settings.lock_dir, made)
