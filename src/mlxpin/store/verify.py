"""`mlxpin verify` (and launch's start-time check): re-hash a pin's files in place against
its lock, compare its view with the lock, and stamp it. Nothing here downloads: `verify`
imports this module, not the fetch machinery."""

from __future__ import annotations

import contextlib
import os
import stat as stat_mod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from mlxpin.errors import SnapshotMissingError
from mlxpin.project.lockfile import LockedFile, LockedModel
from mlxpin.store.layout import OUTSIDE_CACHE, StoreLayout, list_view, view_links
from mlxpin.store.records import (
    FileStat,
    StampEntry,
    read_stamp,
    write_failed_stamp,
    write_record,
    write_stamp,
)
from mlxpin.util.atomic import hold_mutex
from mlxpin.util.hashing import CHUNK, OidHasher, oid_algorithm, oid_hex
from mlxpin.util.parallel import CancelToken, run_parallel

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class Progress(Protocol):
    def add_total(self, nbytes: int) -> None: ...
    def advance(self, nbytes: int) -> None: ...


class NoProgress:
    def add_total(self, nbytes: int) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass


ProgressFactory = Callable[[str], Progress]  # one Progress per model, by name


def no_progress(_: str) -> Progress:
    return NoProgress()


def hash_existing(
    path: Path | str,
    file: LockedFile,
    progress: Progress,
    cancel: CancelToken,
    seen: os.stat_result | None = None,
    dir_fd: int | None = None,
) -> FileStat | None:
    """Hash a file in place; its stat if it matches the lock, else None. `seen` is the
    path's lstat the caller just took (else it is taken here): only a regular file of the
    locked size is opened. With `dir_fd`, `path` is relative to that directory.

    The descriptor's stat after reading must be `seen` (the same file, not written to
    meanwhile) and the path's after it, so a file written to or replaced while it was
    being hashed is never recorded as verified. The reads stop at the locked size: that
    stat proves the file holds no more (an exact file costs no read of its end).
    """
    try:
        seen = os.lstat(path, dir_fd=dir_fd) if seen is None else seen
    except OSError:
        return None
    if not stat_mod.S_ISREG(seen.st_mode) or seen.st_size != file.size:
        return None
    hasher = OidHasher(oid_algorithm(file.oid), file.size)
    size = 0
    try:
        fd = os.open(path, os.O_RDONLY | NOFOLLOW, dir_fd=dir_fd)
    except OSError:
        return None  # gone, unreadable, or a link: not a verified blob
    try:  # plain reads on the descriptor: a buffered file object costs small files ~50 %
        while size < file.size:
            chunk = os.read(fd, min(CHUNK, file.size - size + 1))  # + 1: a longer file shows
            if not chunk:
                break
            cancel.raise_if_cancelled()
            hasher.update(chunk)
            size += len(chunk)
            progress.advance(len(chunk))
        after = os.fstat(fd)
    finally:
        os.close(fd)
    try:
        stat = FileStat.of_result(after, path)
        if FileStat.of_result(seen, path) != stat:
            return None  # another file than the one seen, or written to while we read it
        if FileStat.of_result(os.lstat(path, dir_fd=dir_fd), path) != stat:
            return None  # replaced while we read it (by anything but a regular file: OSError)
    except OSError:
        return None
    return stat if size == file.size and hasher.oid() == file.oid else None


@dataclass(frozen=True)
class VerifyOutcome:
    """One model's verification."""

    name: str
    bad: tuple[tuple[str, str], ...]  # (path, problem)
    hashed_bytes: int
    differs: tuple[str, ...] = ()  # the bad paths whose bytes differ (else: missing/extra)


INLINE_HASH_BYTES = 1 << 20  # verify hashes smaller files without the thread pool


def verify_model(
    layout: StoreLayout,
    lock: LockedModel,
    progress: Progress,
    cancel: CancelToken | None = None,
    only_changed: bool = False,
) -> VerifyOutcome:
    """Re-hash every file of the view against the lock, and compare the view's listing
    with the lock; refresh the stamp when all match. `cancel` stops the hashing.
    `only_changed` (boot): files whose stat is the stamp's are not hashed again, so a
    backup or restore that touched only metadata costs a hash of what it touched."""
    cancel = CancelToken() if cancel is None else cancel
    view = layout.view(lock)
    listing = list_view(view, frozenset(f.path for f in lock.files))
    if listing.missing:
        raise SnapshotMissingError(lock.name, "snapshot not fetched")
    if listing.problem is not None:
        return VerifyOutcome(lock.name, ((str(view), listing.problem),), 0)
    progress.add_total(lock.total_size)
    bad: list[tuple[str, str]] = [
        (path, f"not in the lock ({what} in the snapshot)") for path, what in listing.foreign
    ]
    extra = sorted(listing.links.keys() - {f.path for f in lock.files})
    bad += [(path, "not in the lock (an extra file in the snapshot)") for path in extra]
    differs: list[str] = []
    entries: list[StampEntry] = []
    hashed = 0
    links = view_links(layout, lock)
    # The stamp's (blob, stat) pairs were all recorded in the blobs' records when it was
    # written (every entry comes from a record that matched or was written, or from an
    # older stamp's entry), and an unchanged stat (ctime included) means nobody changed
    # the blob since: for those, the record need not be read to know it needs no rewrite.
    stamp = read_stamp(layout, lock)
    stamped_files = stamp.files if stamp is not None else {}
    blob_dir = str(layout.blob(lock, lock.files[0]).parent) + os.sep if lock.files else ""

    def check(file: LockedFile) -> tuple[LockedFile, str | None, StampEntry | None, bool]:
        """(file, problem or None, its stamp entry, whether the stamp lacks that entry)"""
        link = listing.links.get(file.path)
        if link is None:
            return file, "missing", None, True
        blob_name = oid_hex(file.oid)
        target = blob_dir + blob_name
        if link not in (links[file.path], target):
            return file, OUTSIDE_CACHE, None, True
        stamped = stamped_files.get(file.path)
        try:
            if only_changed and stamped is not None and stamped == (target, FileStat.of(target)):
                return file, None, StampEntry(file.path, target, stamped[1]), False
        except OSError:
            pass
        # With the blob directory open, its files are looked up by name alone.
        lookup = blob_name if dir_fd is not None else target
        try:
            st = os.lstat(lookup, dir_fd=dir_fd)
        except OSError:
            return file, "missing (its blob is gone)", None, True
        if not stat_mod.S_ISREG(st.st_mode):
            return file, f"not a regular file ({target} is not mlxpin's blob)", None, True
        if st.st_size != file.size:
            return file, f"size {st.st_size} differs from the locked {file.size}", None, True
        stat = hash_existing(lookup, file, progress, cancel, st, dir_fd)
        if stat is None:
            return file, "content hash differs from the lock", None, True
        fresh = stamped != (target, stat)
        if fresh:
            write_record(layout, Path(target), stat)
        return file, None, StampEntry(file.path, target, stat), fresh

    by_path = {f.path: f for f in lock.files}
    # Small files are hashed here: a thread pool's hand-offs cost more than their hashing.
    small = [file for file in lock.files if file.size < INLINE_HASH_BYTES]
    large = [file for file in lock.files if file.size >= INLINE_HASH_BYTES]
    with _opened_dir(blob_dir) as dir_fd:
        checked = [check(file) for file in small]
        checked += run_parallel(check, large, workers=4, cancel=cancel)
    restated = stamp is not None and stamp.rows == len(stamp.files) == len(lock.files)
    for file, problem, entry, fresh in checked:
        hashed += file.size
        restated = restated and not fresh
        if problem is not None:
            bad.append((file.path, problem))
            if problem.startswith(("size", "content")):
                differs.append(file.path)
        elif entry is not None:
            entries.append(entry)
    if not bad:
        if not restated:  # else the stamp says exactly this already: nothing to render
            origin = stamp.origin if stamp is not None else None
            write_stamp(layout, lock, entries, origin, mutex=layout.view_mutex(lock))
    else:
        with hold_mutex(layout.view_mutex(lock)):
            write_failed_stamp(layout, lock, bad)
        for path in differs:
            with contextlib.suppress(OSError):
                layout.verified_record(layout.blob(lock, by_path[path])).unlink()
    return VerifyOutcome(lock.name, tuple(sorted(bad)), hashed, tuple(differs))


@contextlib.contextmanager
def _opened_dir(path: str) -> Iterator[int | None]:
    """The directory's descriptor, to look its files up by name rather than by their whole
    path (three lookups per verified blob); None when it cannot be opened (each file is
    then looked up whole, and fails on its own)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        yield None
        return
    try:
        yield fd
    finally:
        os.close(fd)
