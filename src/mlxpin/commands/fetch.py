"""`mlxpin fetch` and `mlxpin verify`: present, verified snapshots of locked models."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlxpin.config import Settings
from mlxpin.errors import ExitCode, IntegrityError
from mlxpin.hub.source import HubSourceBytes
from mlxpin.project.lockfile import LockedModel
from mlxpin.project.manifest import PathSource
from mlxpin.project.selection import locked_models, manifest_of, pick
from mlxpin.store.fetch import (
    FetchOutcome,
    NoProgress,
    Progress,
    VerifyOutcome,
    fetch_model,
    verify_model,
)
from mlxpin.store.layout import StoreLayout, register_root
from mlxpin.store.sources import ByteSource, LocalSourceBytes

if TYPE_CHECKING:
    from mlxpin.hub.client import HubDownloader

ProgressFactory = Callable[[str], Progress]


@dataclass(frozen=True)
class FetchResult:
    models: tuple[FetchOutcome, ...]
    seconds: float

    exit_code = ExitCode.OK

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": True,
            "seconds": round(self.seconds, 3),
            "models": [
                {
                    "name": m.name,
                    "snapshot": str(m.view),
                    "files": m.files,
                    "total_size": m.total_size,
                    "up_to_date": m.up_to_date,
                    "downloaded_bytes": m.downloaded_bytes,
                    "hashed_bytes": m.hashed_bytes,
                }
                for m in self.models
            ],
        }


def _no_progress(_: str) -> Progress:
    return NoProgress()


def fetch(
    settings: Settings,
    names: Sequence[str] = (),
    progress: ProgressFactory = _no_progress,
) -> FetchResult:
    started = time.monotonic()
    manifest = manifest_of(settings)
    locks = locked_models(settings, manifest, pick(manifest, names))
    layout = StoreLayout.of(settings)
    register_root(layout, settings.lock_dir)
    downloaders: list[HubDownloader] = []

    def downloader() -> HubDownloader:
        if not downloaders:
            from mlxpin.hub.client import HubConfig, HubDownloader

            config = HubConfig(
                endpoint=settings.endpoint,
                token_present=settings.token_present,
                offline=settings.offline,
            )
            downloaders.append(HubDownloader(config))
        return downloaders[0]

    outcomes: list[FetchOutcome] = []
    for lock in locks:
        spec = manifest.get(lock.name)
        assert spec is not None
        source: ByteSource
        if isinstance(spec.launch.source, PathSource):
            source = LocalSourceBytes(spec.launch.source.path, spec.name)
        else:
            source = HubSourceBytes(lock, downloader)
        outcomes.append(fetch_model(layout, lock, source, progress(lock.name)))
    return FetchResult(tuple(outcomes), time.monotonic() - started)


@dataclass(frozen=True)
class VerifyResult:
    models: tuple[VerifyOutcome, ...]

    @property
    def ok(self) -> bool:
        return all(not m.bad for m in self.models)

    @property
    def first_problem(self) -> IntegrityError | None:
        """The error that stands for a failed verification (its hint is the next step)."""
        for model in self.models:
            for path, problem in model.bad:
                return IntegrityError(model.name, path, problem)
        return None

    @property
    def exit_code(self) -> ExitCode:
        problem = self.first_problem
        return ExitCode.OK if problem is None else problem.exit_code

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "models": [
                {
                    "name": m.name,
                    "ok": not m.bad,
                    "bad": [{"path": p, "problem": why} for p, why in m.bad],
                }
                for m in self.models
            ],
        }


def verify(
    settings: Settings,
    names: Sequence[str] = (),
    progress: ProgressFactory = _no_progress,
) -> VerifyResult:
    manifest = manifest_of(settings)
    locks: tuple[LockedModel, ...] = locked_models(settings, manifest, pick(manifest, names))
    layout = StoreLayout.of(settings)
    return VerifyResult(tuple(verify_model(layout, lock, progress(lock.name)) for lock in locks))
