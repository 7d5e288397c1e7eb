"""`mlxpin build`: make built models from their locked recipes (or, with --check, make
them again and compare with the recorded output, installing nothing)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from mlxpin.build.derive import BuildOutcome, build_model, builder_here
from mlxpin.build.identity import builder_identity
from mlxpin.config import STATE_DIR_HINT, Settings
from mlxpin.errors import UsageError
from mlxpin.project.lockfile import valid_locks
from mlxpin.project.manifest import Manifest, ModelSpec
from mlxpin.project.recipe import BuildSpec
from mlxpin.project.selection import inputs_first, manifest_of, pick
from mlxpin.store.layout import StoreLayout, register_root
from mlxpin.store.verify import NoProgress, Progress
from mlxpin.util.jsonable import Done
from mlxpin.util.writable import require_writable_dir


@dataclass(frozen=True)
class BuildResult(Done):
    models: tuple[BuildOutcome, ...]
    seconds: float
    check: bool


def built_models(manifest: Manifest, names: Sequence[str]) -> tuple[ModelSpec, ...]:
    """The named models (every built model when none is named), inputs first; a named
    model without [build] is a usage error."""
    picked = pick(manifest, names) if names else manifest.models
    for spec in picked:
        if names and not isinstance(spec.launch.source, BuildSpec):
            raise UsageError(
                f"{spec.name} is not built: it has no [models.{spec.name}.build]",
                "name a built model; a repo or path model is fetched, not built",
            )
    chosen = [s for s in picked if isinstance(s.launch.source, BuildSpec)]
    if not chosen:
        raise UsageError(
            f"{manifest.path} declares no built model",
            'add one: [models.q4.build] from = "gemma", step = "quantize", bits = 4',
        )
    return inputs_first(manifest, chosen)


def build(
    settings: Settings,
    names: Sequence[str] = (),
    *,
    check: bool = False,
    progress: Callable[[str], Progress] = lambda _: NoProgress(),
    environ: Mapping[str, str] | None = None,
    note: Callable[[str], None] = lambda _: None,
) -> BuildResult:
    started = time.monotonic()
    manifest = manifest_of(settings)
    specs = built_models(manifest, names)
    valid_locks(settings.lock_dir, specs)  # 78 naming every stale one, before any work
    builder = builder_here(settings, manifest, builder_identity(settings, manifest))
    layout = StoreLayout.of(settings)
    require_writable_dir(layout.state_dir, STATE_DIR_HINT)
    register_root(layout, settings.lock_dir)
    outcomes: list[BuildOutcome] = []
    for spec in specs:
        # Re-read: building an input (first build) records its output in its lock.
        (lock,) = valid_locks(settings.lock_dir, [spec])
        outcomes.append(
            build_model(
                settings,
                lock,
                builder,
                progress(spec.name),
                check_only=check,
                environ=environ,
                note=note,
            )
        )
    return BuildResult(tuple(outcomes), time.monotonic() - started, check)
