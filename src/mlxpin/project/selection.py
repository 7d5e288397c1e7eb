"""Helpers shared by the verbs: loading the manifest and locks, picking models by name."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from mlxpin.config import Settings
from mlxpin.errors import LockCorruptError, UsageError
from mlxpin.project.lockfile import LockedModel, read_lock, valid_locks
from mlxpin.project.manifest import Manifest, ModelSpec, load_manifest


def manifest_of(settings: Settings) -> Manifest:
    return load_manifest(settings.manifest_path)


def label_not_name(manifest: Manifest, name: str) -> UsageError | None:
    """When ``name`` is a model's label (or alias): an error that names the model."""
    owner = next((m for m in manifest.models if name in m.labels), None)
    if owner is None:
        return None
    return UsageError(
        f"{name!r} is not a model name: that is {owner.name}'s label",
        f"use the name: {owner.name}",
    )


def pick(manifest: Manifest, names: Sequence[str]) -> tuple[ModelSpec, ...]:
    """The named models (all when none are named); unknown names are a usage error."""
    if not names:
        return manifest.models
    picked: list[ModelSpec] = []
    for name in names:
        spec = manifest.get(name)
        if spec is None:
            if (label := label_not_name(manifest, name)) is not None:
                raise label
            import difflib  # errors only

            close = difflib.get_close_matches(name, manifest.names, n=1)
            hint = f"did you mean {close[0]!r}?" if close else None
            raise UsageError(
                f"no model named {name!r} in {manifest.path} (models: {', '.join(manifest.names)})",
                hint,
            )
        if spec not in picked:
            picked.append(spec)
    return tuple(picked)


def with_dependencies(
    manifest: Manifest, specs: Sequence[ModelSpec], *, builds: bool = False
) -> tuple[ModelSpec, ...]:
    """Add the draft and adapter models the given models launch with; with ``builds``,
    also the models a built model is built from (`lock` pins them first)."""
    result: list[ModelSpec] = []
    pending = list(specs)
    while pending:
        spec = pending.pop(0)
        if spec in result:
            continue
        result.append(spec)
        inputs = _inputs(spec) if builds else ()
        for dependency in (spec.launch.draft, spec.launch.adapter, *inputs):
            if dependency is not None:
                target = manifest.get(dependency)
                if target is not None:
                    pending.append(target)
    return tuple(result)


def _inputs(spec: ModelSpec) -> tuple[str, ...]:
    """The models a built model is built from (none for others)."""
    if not spec.launch.source.built:
        return ()
    from mlxpin.project.recipe import BuildSpec

    assert isinstance(spec.launch.source, BuildSpec)
    return spec.launch.source.inputs


def inputs_first(manifest: Manifest, specs: Sequence[ModelSpec]) -> tuple[ModelSpec, ...]:
    """``specs`` in their order, except that a built model comes after those of ``specs``
    it is built from (`lock`, `fetch` and `build` make inputs first)."""
    ordered: list[ModelSpec] = []

    def visit(spec: ModelSpec) -> None:
        for name in _inputs(spec):
            dependency = manifest.get(name)
            if dependency is not None and dependency in specs:
                visit(dependency)
        if spec not in ordered:
            ordered.append(spec)

    for spec in specs:
        visit(spec)
    return tuple(ordered)


def read_locks(
    lock_dir: Path, names: Sequence[str]
) -> dict[str, LockedModel | LockCorruptError | None]:
    locks: dict[str, LockedModel | LockCorruptError | None] = {}
    for name in names:
        try:
            locks[name] = read_lock(lock_dir, name)
        except LockCorruptError as exc:
            locks[name] = exc
    return locks


def lock_dir_mutex(settings: Settings) -> Path:
    """The cross-process mutex guarding one lock directory (kept out of the project tree)."""
    digest = hashlib.sha256(os.fsencode(settings.lock_dir)).hexdigest()[:16]
    return settings.state_dir / "locks" / f"lockdir-{digest}.lock"


def locked_models(
    settings: Settings, manifest: Manifest, specs: Sequence[ModelSpec]
) -> tuple[LockedModel, ...]:
    """The valid locks of the given models (and their drafts/adapters), or a clear refusal."""
    return valid_locks(settings.lock_dir, with_dependencies(manifest, specs))
