"""A host's share of a pin: only some of its files, verified and stamped as such.

A pipeline rank reads only its own layers' weight files (plus every non-weight file and
those with the embeddings, final norm and head), so a host running no other rank holds a
*subset*: the whole pin's view (same key and path) with only the subset's links, and a
stamp listing exactly the files it verified. `check_stamp(..., need=paths)` accepts it
when it holds every needed path; without `need` (one-host launch, serve, export, mirror,
status) it is "not the whole pin". A subset is a lock with fewer files and the same tree
hash (`sub_lock`), so fetch and verify run on it unchanged. A subset fetch never drops
what a host holds; a whole fetch replaces a subset with the whole pin.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from mlxpin.errors import DataError
from mlxpin.project.lockfile import LockedModel
from mlxpin.store.fetch import FetchOutcome, fetch_model
from mlxpin.store.layout import StoreLayout, list_view
from mlxpin.store.records import FileStat, read_stamp
from mlxpin.store.sources import ByteSource
from mlxpin.store.verify import Progress, VerifyOutcome, verify_model


def sub_lock(lock: LockedModel, paths: Iterable[str]) -> LockedModel:
    """`lock` restricted to `paths`: the same name, source and tree hash (so the same view,
    stamp and blobs), only those files."""
    wanted = frozenset(paths)
    files = tuple(f for f in lock.files if f.path in wanted)
    return dataclasses.replace(lock, files=files, total_size=sum(f.size for f in files))


def need_of(lock: LockedModel, paths: Iterable[str] | None) -> frozenset[str] | None:
    """The paths a host needs, or None for the whole pin (also when `paths` is all of it).
    A path the lock does not have is refused: the sender and this host disagree."""
    if paths is None:
        return None
    need = frozenset(paths)
    locked = frozenset(f.path for f in lock.files)
    unknown = sorted(need - locked)
    if unknown:
        raise DataError(
            f"{lock.name}: {unknown[0]!r} is not a file of the pin "
            f"(commit {lock.short_commit or 'local'}); the sender's lock and subset disagree",
            "run the command again from the host that launches the model",
        )
    return None if need == locked else need


def held_files(layout: StoreLayout, lock: LockedModel) -> frozenset[str]:
    """The files this host's stamp lists whose blob in this cache is unchanged since."""
    stamp = read_stamp(layout, lock)
    if stamp is None:
        return frozenset()
    by_path = {f.path: f for f in lock.files}
    held: set[str] = set()
    for path, (blob, stat) in stamp.files.items():
        file = by_path.get(path)
        if file is None or blob != str(layout.blob(lock, file)):
            continue
        try:
            if FileStat.of(blob) == stat:
                held.add(path)
        except OSError:
            continue
    return frozenset(held)


def fetch_subset(
    layout: StoreLayout,
    lock: LockedModel,
    need: frozenset[str] | None,
    source: ByteSource,
    progress: Progress,
) -> FetchOutcome:
    """Make `need` (None: every file) present and verified here, keeping what is held."""
    if need is None:
        return fetch_model(layout, lock, source, progress)
    return fetch_model(layout, sub_lock(lock, need | held_files(layout, lock)), source, progress)


def verify_subset(
    layout: StoreLayout, lock: LockedModel, need: frozenset[str] | None, progress: Progress
) -> VerifyOutcome:
    """Re-hash what the view holds of the pin, `need` included (a missing one is bad)."""
    if need is None:
        return verify_model(layout, lock, progress)
    locked = frozenset(f.path for f in lock.files)
    held = frozenset(list_view(layout.view(lock), locked).links) & locked
    return verify_model(layout, sub_lock(lock, held | need), progress)
