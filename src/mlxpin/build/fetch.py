"""`fetch` of a built model: nothing when its output is present and verified; else take
the recorded output from a mirror (a binary cache, verified against the lock's hashes)
when its input is not here or was built on another platform; else build it."""

from __future__ import annotations

from mlxpin.build.derive import build_model, builder_here, input_views
from mlxpin.build.identity import builder_identity, this_platform
from mlxpin.config import Settings
from mlxpin.errors import MlxpinError, NoInputError
from mlxpin.project.lockfile import LockedModel
from mlxpin.project.manifest import Manifest
from mlxpin.store.fetch import FetchOutcome, fetch_model
from mlxpin.store.layout import StoreLayout, check_stamp
from mlxpin.store.sources import ByteSource
from mlxpin.store.verify import Progress
from mlxpin.util.parallel import CancelToken


def fetch_built(
    settings: Settings,
    manifest: Manifest,
    lock: LockedModel,
    substitute: ByteSource | None,
    progress: Progress,
    cancel: CancelToken,
) -> FetchOutcome:
    """`substitute`: where a recorded output may be downloaded from (None: nowhere)."""
    assert lock.build is not None and lock.original.build is not None
    layout = StoreLayout.of(settings)
    if check_stamp(layout, lock).ok:
        view = layout.view(lock)
        return FetchOutcome(lock.name, view, len(lock.files), lock.total_size, True, 0, 0)
    missing: NoInputError | None = None
    try:
        input_views(layout, settings.lock_dir, lock)
    except NoInputError as exc:
        missing = exc
    elsewhere = lock.build.built_on not in (None, this_platform())
    if substitute is not None and (missing is not None or elsewhere):
        try:
            return fetch_model(layout, lock, substitute, progress, cancel=cancel)
        except MlxpinError:
            if missing is not None:
                raise
    if missing is not None:
        raise missing
    builder = builder_here(settings, manifest, builder_identity(settings, manifest))
    built = build_model(settings, lock, builder, progress)
    view = built.snapshot or layout.view(lock)
    return FetchOutcome(lock.name, view, built.files, built.total_size, False, 0, built.total_size)
