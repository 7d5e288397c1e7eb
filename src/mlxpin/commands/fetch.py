"""`mlxpin fetch`: present, verified snapshots of locked models (and their runtime)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from mlxpin.config import DEFAULT_ENDPOINT, HUB_CACHE_HINT, STATE_DIR_HINT, Settings
from mlxpin.hub.source import HubSourceBytes
from mlxpin.project.lockfile import served_as
from mlxpin.project.manifest import PathSource
from mlxpin.project.selection import inputs_first, locked_models, manifest_of, pick
from mlxpin.runtime.install import InstallOutcome, install_runtime
from mlxpin.runtime.layout import RuntimeLayout
from mlxpin.runtime.pin import pinned_runtime
from mlxpin.runtime.server import engine_lock_dir
from mlxpin.store.fetch import FetchOutcome, fetch_model
from mlxpin.store.layout import StoreLayout, register_root
from mlxpin.store.ranged import RangePolicy
from mlxpin.store.sources import ByteSource, LocalSourceBytes
from mlxpin.store.verify import ProgressFactory, no_progress
from mlxpin.util.jsonable import Done, fields_json, json_value
from mlxpin.util.parallel import CancelToken
from mlxpin.util.writable import require_writable_dir

if TYPE_CHECKING:
    from mlxpin.hub.client import HubDownloader


@dataclass(frozen=True)
class FetchResult(Done):
    models: tuple[FetchOutcome, ...]
    seconds: float
    runtime: InstallOutcome | None = None  # None: the manifest has no [runtime]
    engines: tuple[InstallOutcome, ...] = ()  # [engines.x]'s runtimes

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": True,
            "seconds": round(self.seconds, 3),
            "models": [fields_json(m, view="snapshot") for m in self.models],
            "runtime": json_value(self.runtime),
            **({"engines": [e.to_json() for e in self.engines]} if self.engines else {}),
        }


def _no_report(_: str) -> None:
    pass


def fetch(
    settings: Settings,
    names: Sequence[str] = (),
    progress: ProgressFactory = no_progress,
    runtime_report: Callable[[str], None] = _no_report,
    environ: Mapping[str, str] | None = None,
) -> FetchResult:
    """Fetch the models' snapshots, then install the pinned runtime (if any)."""
    started = time.monotonic()
    manifest = manifest_of(settings)
    locks = locked_models(settings, manifest, pick(manifest, names))
    by_name = {lock.name: lock for lock in locks}
    specs = [spec for lock in locks if (spec := manifest.get(lock.name)) is not None]
    locks = tuple(by_name[spec.name] for spec in inputs_first(manifest, specs))
    runtime_pin = pinned_runtime(settings, manifest)
    engine_pins = [
        pinned_runtime(
            replace(settings, lock_dir=engine_lock_dir(settings.lock_dir, s.server)),
            replace(manifest, runtime=s),
        )
        for s in manifest.engines
    ]
    layout = StoreLayout.of(settings)
    require_writable_dir(layout.state_dir, STATE_DIR_HINT)
    if any(lock.original.repo is not None for lock in locks):
        require_writable_dir(layout.hub_cache, HUB_CACHE_HINT)
    register_root(layout, settings.lock_dir)
    downloaders: list[HubDownloader] = []

    def downloader() -> HubDownloader:
        if not downloaders:
            from mlxpin.commands.lock import hub_deadline_s
            from mlxpin.hub.client import HubConfig, HubDownloader

            config = HubConfig(
                endpoint=settings.endpoint,
                token_present=settings.token_present,
                offline=settings.offline,
                deadline_s=hub_deadline_s(settings),
            )
            downloaders.append(HubDownloader(config))
        return downloaders[0]

    ranges = RangePolicy.from_settings(settings)
    cancel = CancelToken()  # this command's: Ctrl-C stops every worker of every model
    outcomes: list[FetchOutcome] = []
    for lock in locks:
        spec = manifest.get(lock.name)
        assert spec is not None
        source: ByteSource
        if lock.build is not None:
            from mlxpin.build.fetch import fetch_built  # only for built models

            substitute = None
            if served_as(lock) is not None and _may_substitute(settings):
                substitute = HubSourceBytes(lock, downloader, ranges)
            outcomes.append(
                fetch_built(settings, manifest, lock, substitute, progress(lock.name), cancel)
            )
            continue
        if isinstance(spec.launch.source, PathSource):
            source = LocalSourceBytes(spec.launch.source.path, spec.name)
        else:
            source = HubSourceBytes(lock, downloader, ranges)
        outcomes.append(fetch_model(layout, lock, source, progress(lock.name), cancel=cancel))
    installed = [
        install_runtime(
            RuntimeLayout.of(settings),
            pin,
            os.environ if environ is None else environ,
            runtime_report,
        )
        for pin in (runtime_pin, *engine_pins)
        if pin is not None
    ]
    runtime = installed.pop(0) if runtime_pin is not None else None
    return FetchResult(tuple(outcomes), time.monotonic() - started, runtime, tuple(installed))


def _may_substitute(settings: Settings) -> bool:
    """A built output is asked of HF_ENDPOINT only when it names a mirror, not the Hub."""
    return not settings.offline and settings.endpoint != DEFAULT_ENDPOINT
