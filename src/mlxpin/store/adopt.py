"""Install files made on this host (a build's output) as a pin's verified snapshot.

The files were hashed and flushed to disk where they lie, in a private directory on the
state disk; each is moved (renamed, never copied) into the local blob store under the
blob's mutex (the directory flushed after), then the view and its stamp are published as
`fetch` does. A blob already in place with a matching
verification record is kept (other views' stamps name its inode) and the new file dropped.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path

from mlxpin.project.lockfile import LockedModel
from mlxpin.store.fetch import BLOB_LOCK_TIMEOUT_S, publish, record_matches
from mlxpin.store.layout import StoreLayout
from mlxpin.store.records import FETCHED, FileStat, StampEntry, write_record
from mlxpin.util.atomic import disk_error, fsync_dir, hold_mutex

BUILD_ORIGIN = "build"


def adopt_files(
    layout: StoreLayout, lock: LockedModel, made: Mapping[str, Path], origin: str = BUILD_ORIGIN
) -> Path:
    """`made` maps each of the lock's paths to a file already hashed to its locked oid
    and fsync'd;
    returns the published view. The files are moved, so ``made`` is consumed."""
    assert lock.original.repo is None, "made files go to the local blob store"
    entries: list[StampEntry] = []
    try:
        for file in lock.files:
            source = made[file.path]
            blob = layout.blob(lock, file)
            blob.parent.mkdir(parents=True, exist_ok=True)
            with hold_mutex(layout.blob_mutex(lock, file), BLOB_LOCK_TIMEOUT_S, mode=0o664):
                stat = record_matches(layout, file, blob)
                if stat is None:
                    os.chmod(source, 0o444)
                    os.replace(source, blob)
                    fsync_dir(blob.parent)
                    stat = FileStat.of(blob)
                    write_record(layout, blob, stat, FETCHED)
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(source)
            entries.append(StampEntry(file.path, str(blob), stat))
    except OSError as exc:
        error = disk_error(layout.local_blob(lock.files[0].oid), exc)
        if error is None:
            raise
        raise error from None
    return publish(layout, lock, entries, origin)
