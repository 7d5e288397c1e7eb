"""Make a pin's files present and verified on disk.

For every locked file: reuse the blob if a verification record says it is unchanged,
else hash what is there, else download it (Hub) or copy it (local path) into a partial
file that survives interruptions, hashing while the bytes arrive, and rename it into
place only once size and hash match the lock. Then build the exact view of the pin and
stamp it. Nothing unverified is ever reachable through a snapshot.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from mlxpin.errors import IntegrityError, SnapshotMissingError
from mlxpin.project.lockfile import LockedFile, LockedModel
from mlxpin.project.validate import is_commit
from mlxpin.store.layout import (
    FETCHED,
    FileStat,
    StampEntry,
    StoreLayout,
    check_stamp,
    read_record,
    write_record,
    write_stamp,
)
from mlxpin.store.sources import ByteSource
from mlxpin.util.atomic import disk_error, fsync_dir, hold_lock, temp_name
from mlxpin.util.hashing import CHUNK, OidHasher, oid_algorithm
from mlxpin.util.parallel import CANCEL, Cancelled, run_parallel

log = logging.getLogger("mlxpin.fetch")

BLOB_LOCK_TIMEOUT_S = 6 * 3600.0
ATTEMPTS = 5
RETRY_DELAY_S = 0.25  # doubles per attempt: 0.25 + 0.5 + 1 + 2 s before giving up


class Progress(Protocol):
    def add_total(self, nbytes: int) -> None: ...
    def advance(self, nbytes: int) -> None: ...


class NoProgress:
    def add_total(self, nbytes: int) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass


@dataclass(frozen=True)
class FetchOutcome:
    name: str
    view: Path
    files: int
    total_size: int
    up_to_date: bool
    downloaded_bytes: int
    hashed_bytes: int


@dataclass(frozen=True)
class _BlobResult:
    entry: StampEntry
    downloaded: int
    hashed: int


# --- verification records --------------------------------------------------------------


def _record_matches(layout: StoreLayout, file: LockedFile, blob: Path) -> FileStat | None:
    """The blob's stat if its verification record still describes it, else None."""
    record = read_record(layout, blob)
    try:
        current = FileStat.of(blob)
    except OSError:
        return None
    if record is not None and record.stat == current and current.size == file.size:
        return current
    return None


def _hash_existing(path: Path, file: LockedFile, progress: Progress) -> FileStat | None:
    """Hash a file in place; its stat if it matches the lock, else None.

    The stat is taken from the open descriptor and compared with the path afterwards, so
    a file replaced while it was being hashed is never recorded as verified.
    """
    hasher = OidHasher(oid_algorithm(file.oid), file.size)
    size = 0
    with path.open("rb") as handle:
        opened = os.fstat(handle.fileno())
        while chunk := handle.read(CHUNK):
            if CANCEL.is_set():
                raise Cancelled()
            hasher.update(chunk)
            size += len(chunk)
            progress.advance(len(chunk))
        after = os.fstat(handle.fileno())
    stat = FileStat(after.st_size, after.st_mtime_ns, after.st_ino, after.st_dev)
    if (opened.st_mtime_ns, opened.st_size) != (after.st_mtime_ns, after.st_size):
        return None  # written to while we read it
    try:
        if FileStat.of(path) != stat:
            return None  # replaced while we read it
    except OSError:
        return None
    return stat if size == file.size and hasher.oid() == file.oid else None


# --- one blob ----------------------------------------------------------------------------


@dataclass
class _Partial:
    """What is in the partial file so far: its hash state and length."""

    hasher: OidHasher
    offset: int = 0
    received: int = 0  # bytes that came over the wire in this run


def _read_partial(partial: Path, file: LockedFile, progress: Progress) -> _Partial:
    state = _Partial(OidHasher(oid_algorithm(file.oid), file.size))
    try:
        size = partial.stat().st_size
    except FileNotFoundError:
        return state
    if size > file.size:
        partial.unlink()
        return state
    with partial.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            state.hasher.update(chunk)
            state.offset += len(chunk)
    progress.advance(state.offset)
    return state


def _transfer(
    source: ByteSource,
    lock: LockedModel,
    file: LockedFile,
    partial: Path,
    progress: Progress,
) -> int:
    """Fill `partial` with the file's bytes, resuming what a previous run left, and check
    them; returns the bytes received. Raises IntegrityError if the result is not the
    locked file (after one fresh attempt when the bytes came partly from an earlier run)."""
    received = 0
    for fresh in (False, True):
        state = _read_partial(partial, file, progress)
        resumed = state.offset > 0
        if resumed:
            log.debug("%s: resuming %s at byte %d", lock.name, file.path, state.offset)
        try:
            _fill(source, lock, file, partial, state, progress)
        finally:
            received += state.received
        if state.hasher.oid() == file.oid:
            return received
        partial.unlink()
        if not resumed or fresh:
            raise source.mismatch_hint(
                lock, file, f"hash to {state.hasher.oid()}, the lock says {file.oid}"
            )
        log.info("%s: %s did not match after resuming; downloading it afresh", lock.name, file.path)
    raise AssertionError("unreachable")


def _fill(
    source: ByteSource,
    lock: LockedModel,
    file: LockedFile,
    partial: Path,
    state: _Partial,
    progress: Progress,
) -> None:
    delay = RETRY_DELAY_S
    with open(partial, "ab") as handle:
        for attempt in range(1, ATTEMPTS + 1):
            if state.offset == file.size:
                break  # complete (possibly from an earlier run): nothing to ask for
            try:
                _receive(source, lock, file, handle, state, progress)
                if state.offset == file.size:
                    break
                raise _Short()
            except _Restart:
                state.hasher = OidHasher(oid_algorithm(file.oid), file.size)
                handle.seek(0)
                handle.truncate()
                state.offset = 0
            except (_Short, Exception) as exc:
                if not isinstance(exc, _Short) and not source.interrupted(exc):
                    raise
                if attempt == ATTEMPTS:
                    raise source.give_up(file, str(exc) or "connection closed early") from None
                log.info("%s: %s interrupted (%s), retrying", lock.name, file.path, exc or "short")
                if CANCEL.wait(delay):
                    raise Cancelled() from None
                delay = min(delay * 2, 8.0)
        handle.flush()
        os.fsync(handle.fileno())
    if state.offset != file.size:
        raise source.give_up(file, "the transfer never completed")


class _Short(Exception):
    def __str__(self) -> str:
        return "connection closed early"


class _Restart(Exception):
    """The server ignored our Range request: start the file over."""


def _receive(
    source: ByteSource,
    lock: LockedModel,
    file: LockedFile,
    handle: BinaryIO,
    state: _Partial,
    progress: Progress,
) -> None:
    """Append what the source sends from `state.offset`; `state` always matches the file."""
    with source.open(file, state.offset) as (start, chunks):
        if start != state.offset:
            if state.offset == 0:
                raise source.give_up(file, "the server answered an unexpected range")
            raise _Restart()
        for chunk in chunks:
            if CANCEL.is_set():
                raise Cancelled()
            if state.offset + len(chunk) > file.size:
                handle.truncate(0)
                raise source.mismatch_hint(
                    lock, file, f"are longer than the locked {file.size} bytes"
                )
            handle.write(chunk)
            state.hasher.update(chunk)
            state.offset += len(chunk)
            state.received += len(chunk)
            progress.advance(len(chunk))


def ensure_blob(
    layout: StoreLayout,
    lock: LockedModel,
    file: LockedFile,
    source: ByteSource,
    progress: Progress,
) -> _BlobResult:
    if CANCEL.is_set():
        raise Cancelled()
    blob = layout.blob(lock, file)
    stat = _record_matches(layout, file, blob)
    if stat is not None:
        progress.advance(file.size)
        return _BlobResult(StampEntry(file.path, str(blob), stat), 0, 0)
    blob.parent.mkdir(parents=True, exist_ok=True)
    # 0o664 like huggingface_hub, so other users sharing the cache can wait on it too.
    with hold_lock(layout.blob_lock(lock, file), BLOB_LOCK_TIMEOUT_S, mode=0o664):
        hashed = 0
        if blob.exists():
            stat = _record_matches(layout, file, blob)
            if stat is not None:
                progress.advance(file.size)
                return _BlobResult(StampEntry(file.path, str(blob), stat), 0, 0)
            stat = _hash_existing(blob, file, progress)
            if stat is not None:
                write_record(layout, blob, stat)
                return _BlobResult(StampEntry(file.path, str(blob), stat), 0, file.size)
            log.warning("%s: cached %s is corrupt; fetching it again", lock.name, file.path)
            hashed = file.size
            _remove(blob)
        partial = blob.with_name(blob.name + ".mlxpin.incomplete")
        try:
            downloaded = _transfer(source, lock, file, partial, progress)
            if lock.original.path is not None:
                partial.chmod(0o444)
            partial.replace(blob)
            fsync_dir(blob.parent)
            stat = FileStat.of(blob)  # we hold the blob lock: nobody replaces it meanwhile
            write_record(layout, blob, stat, FETCHED)
        except IntegrityError:
            with contextlib.suppress(OSError):
                partial.unlink()
            raise
        except OSError as exc:
            error = disk_error(blob, exc)
            if error is None:
                raise
            with contextlib.suppress(OSError):
                partial.unlink()
            raise error from None
    return _BlobResult(StampEntry(file.path, str(blob), stat), downloaded, hashed + file.size)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.chmod(0o644)
        path.unlink()


# --- snapshot views ---------------------------------------------------------------------


def _link(target: str, link: Path) -> None:
    """Create or replace a symlink atomically."""
    link.parent.mkdir(parents=True, exist_ok=True)
    try:
        if os.readlink(link) == target:
            return
    except OSError:
        pass
    tmp = temp_name(link)
    os.symlink(target, tmp)
    tmp.replace(link)


def link_hub_snapshot(layout: StoreLayout, lock: LockedModel) -> None:
    """Also expose the files in the Hub cache's own snapshot dir, as `hf download` would.

    A ref for the locked branch or tag is created only where none exists, so offline
    tools can resolve it; an existing ref (another tool's newer download) is never moved.
    """
    if lock.original.repo is None or lock.commit is None:
        return
    snapshot = layout.hub_snapshot(lock.original.repo, lock.commit)
    for file in lock.files:
        link = snapshot / file.path
        blob = layout.blob(lock, file)
        _link(os.path.relpath(blob, link.parent), link)
    revision = lock.original.revision
    if revision is None or is_commit(revision):
        return
    ref = layout.repo_dir(lock.original.repo) / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        fd = os.open(ref, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w") as handle:
            handle.write(lock.commit)


def _view_matches(view: Path, entries: dict[str, str]) -> bool:
    found: dict[str, str] = {}
    for directory, _, names in os.walk(view):
        for name in names:
            full = Path(directory) / name
            try:
                found[full.relative_to(view).as_posix()] = os.readlink(full)
            except OSError:
                return False
    return found == entries


def build_view(layout: StoreLayout, lock: LockedModel, entries: list[StampEntry]) -> Path:
    """Publish the exact set of files as one directory, atomically."""
    view = layout.view(lock)
    wanted = {e.path: e.blob for e in entries}
    if view.is_dir() and _view_matches(view, wanted):
        return view
    view.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(view)
    tmp.mkdir()
    for path, blob in wanted.items():
        link = tmp / path
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(blob, link)
    old = None
    if view.exists():
        old = view.with_name(f".{view.name}.old-{os.urandom(4).hex()}")
        view.replace(old)
    tmp.replace(view)
    fsync_dir(view.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return view


def publish(
    layout: StoreLayout, lock: LockedModel, entries: list[StampEntry], origin: str | None
) -> Path:
    """Make a pin whose every blob is in place and verified visible: the Hub cache's
    snapshot links, the exact view, then the stamp (what launch trusts) last."""
    try:
        link_hub_snapshot(layout, lock)
        with hold_lock(layout.view_lock(lock)):
            view = build_view(layout, lock, entries)
            write_stamp(layout, lock, entries, origin)
    except OSError as exc:
        error = disk_error(layout.view(lock), exc)
        if error is None:
            raise
        raise error from None
    return view


# --- one model ---------------------------------------------------------------------------


def fetch_model(
    layout: StoreLayout,
    lock: LockedModel,
    source: ByteSource,
    progress: Progress,
    workers: int = 8,
) -> FetchOutcome:
    if check_stamp(layout, lock, in_this_cache=True).ok:
        return FetchOutcome(
            lock.name, layout.view(lock), len(lock.files), lock.total_size, True, 0, 0
        )
    progress.add_total(lock.total_size)

    def one(file: LockedFile) -> _BlobResult:
        return ensure_blob(layout, lock, file, source, progress)

    CANCEL.clear()
    results = run_parallel(one, lock.files, workers=workers)
    view = publish(layout, lock, [r.entry for r in results], source.origin())
    return FetchOutcome(
        lock.name,
        view,
        len(lock.files),
        lock.total_size,
        False,
        sum(r.downloaded for r in results),
        sum(r.hashed for r in results),
    )


@dataclass(frozen=True)
class VerifyOutcome:
    name: str
    bad: tuple[tuple[str, str], ...]  # (path, problem)
    hashed_bytes: int


def verify_model(layout: StoreLayout, lock: LockedModel, progress: Progress) -> VerifyOutcome:
    """Re-hash every file of the view against the lock; refresh the stamp when all match."""
    view = layout.view(lock)
    if not view.is_dir():
        raise SnapshotMissingError(lock.name, "not fetched")
    progress.add_total(lock.total_size)
    bad: list[tuple[str, str]] = []
    entries: list[StampEntry] = []
    hashed = 0

    def check(file: LockedFile) -> tuple[LockedFile, str | None, StampEntry | None]:
        link = view / file.path
        try:
            target = os.readlink(link)
            blob = Path(target)
            size = blob.stat().st_size
        except OSError:
            return file, "missing", None
        if size != file.size:
            return file, f"size {size} differs from the locked {file.size}", None
        stat = _hash_existing(blob, file, progress)
        if stat is None:
            return file, "content hash differs from the lock", None
        write_record(layout, blob, stat)
        return file, None, StampEntry(file.path, target, stat)

    CANCEL.clear()
    for file, problem, entry in run_parallel(check, lock.files, workers=4):
        hashed += file.size
        if problem is not None:
            bad.append((file.path, problem))
        elif entry is not None:
            entries.append(entry)
    if not bad:
        with hold_lock(layout.view_lock(lock)):
            write_stamp(layout, lock, entries)
    else:
        with contextlib.suppress(FileNotFoundError):
            layout.stamp(lock).unlink()
        for path, _ in bad:
            with contextlib.suppress(OSError):
                layout.verified_record(Path(os.readlink(view / path))).unlink()
    return VerifyOutcome(lock.name, tuple(bad), hashed)
