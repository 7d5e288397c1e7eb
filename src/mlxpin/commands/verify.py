"""`mlxpin verify`: re-hash every fetched file against the lock (no network, no fetch code)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mlxpin.config import Settings
from mlxpin.errors import DataError, ExitCode, IntegrityError, Run
from mlxpin.project.lockfile import LockedModel
from mlxpin.project.manifest import Manifest
from mlxpin.project.selection import locked_models, manifest_of, pick
from mlxpin.store.layout import StoreLayout
from mlxpin.store.verify import ProgressFactory, VerifyOutcome, no_progress, verify_model
from mlxpin.util.parallel import CancelToken


@dataclass(frozen=True)
class VerifyResult:
    """What `mlxpin verify` reports."""

    models: tuple[VerifyOutcome, ...]

    @property
    def ok(self) -> bool:
        return all(not m.bad for m in self.models)

    @property
    def first_problem(self) -> IntegrityError | None:
        """The error that stands for a failed verification (its hint is the next step)."""
        for model in self.models:
            for path in model.differs:
                return IntegrityError(model.name, path, dict(model.bad)[path])
        for model in self.models:  # only missing or extra files: fetch rebuilds the view
            for path, problem in model.bad:
                return IntegrityError(
                    model.name,
                    path,
                    problem,
                    hint="the snapshot lacks locked files or holds files the lock does not "
                    f"list; run {Run.of('fetch', model.name)} to rebuild it",
                )
        return None

    @property
    def exit_code(self) -> ExitCode:
        problem = self.first_problem
        return ExitCode.OK if problem is None else problem.exit_code

    def to_json(self) -> dict[str, Any]:
        problem = self.first_problem
        return {
            "ok": self.ok,
            **({} if problem is None else {"error": problem.to_json()}),
            "models": [
                {
                    "name": m.name,
                    "ok": not m.bad,
                    "bad": [{"path": p, "problem": why} for p, why in m.bad],
                }
                for m in self.models
            ],
        }


def _verify_runtime(settings: Settings, manifest: Manifest) -> None:
    """Re-hash every file of the pinned runtime, when it is installed."""
    from mlxpin.runtime.layout import RuntimeLayout, check_runtime
    from mlxpin.runtime.pin import pinned_runtime

    pin = pinned_runtime(settings, manifest)
    runtime = RuntimeLayout.of(settings)
    if pin is not None and runtime.path(pin.key).exists():
        check = check_runtime(runtime, pin.key, deep=True)
        if check.problem is not None:
            raise DataError(
                f"runtime {pin.short_key}: {check.problem}",
                f"run {Run.of('fetch')} to install it again",
            )


def verify(
    settings: Settings,
    names: Sequence[str] = (),
    progress: ProgressFactory = no_progress,
) -> VerifyResult:
    manifest = manifest_of(settings)
    locks: tuple[LockedModel, ...] = locked_models(settings, manifest, pick(manifest, names))
    if manifest.runtime is not None:
        _verify_runtime(settings, manifest)
    layout = StoreLayout.of(settings)
    cancel = CancelToken()
    return VerifyResult(
        tuple(verify_model(layout, lock, progress(lock.name), cancel) for lock in locks)
    )
