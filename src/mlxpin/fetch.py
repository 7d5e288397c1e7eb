"""Make a pin's files present and verified on disk.

For every locked file: reuse the blob if a verification record says it is unchanged,
else hash what is there, else download it (Hub) or copy it (local path) into a partial
file that survives interruptions, hashing while the bytes arrive, and rename it into
place only once size and hash match the lock. Then build the exact view of the pin and
stamp it. Nothing unverified is ever reachable through a snapshot.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

from mlxpin.atomic import DISK_ERRNOS, fsync_dir, hold_lock, write_atomic
from mlxpin.errors import DiskError, IntegrityError, MlxpinError, SnapshotMissingError
from mlxpin.hashing import CHUNK, OidHasher, oid_algorithm
from mlxpin.lockfile import LockedFile, LockedModel
from mlxpin.store import FileStat, StampEntry, StoreLayout, check_stamp, write_stamp

if TYPE_CHECKING:
    from mlxpin.hub import HubDownloader

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


def _record_matches(layout: StoreLayout, file: LockedFile, blob: Path) -> bool:
    try:
        recorded = layout.verified_record(blob).read_text().split()
        current = FileStat.of(blob)
    except OSError:
        return False
    return recorded[:4] == [str(v) for v in current.as_list()] and current.size == file.size


def _write_record(
    layout: StoreLayout, file: LockedFile, blob: Path, origin: str | None = None
) -> FileStat:
    """Record that this blob, as it is now, matches its oid.

    `origin` says whether mlxpin downloaded/copied the blob ("fetched") or found it
    in the cache ("adopted"); `mlxpin gc` only deletes what mlxpin fetched.
    """
    stat = FileStat.of(blob)
    record = layout.verified_record(blob)
    if origin is None:
        try:
            fields = record.read_text().split()
            origin = fields[4] if len(fields) > 4 else "adopted"
        except OSError:
            origin = "adopted"
    write_atomic(record, " ".join([*map(str, stat.as_list()), origin]).encode())
    return stat


def _hash_existing(path: Path, file: LockedFile, progress: Progress) -> bool:
    hasher = OidHasher(oid_algorithm(file.oid), file.size)
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            hasher.update(chunk)
            size += len(chunk)
            progress.advance(len(chunk))
    return size == file.size and hasher.oid() == file.oid


# --- byte sources ------------------------------------------------------------------------


class ByteSource(Protocol):
    def open(
        self, file: LockedFile, offset: int
    ) -> contextlib.AbstractContextManager[tuple[int, Iterator[bytes]]]: ...

    def interrupted(self, exc: Exception) -> bool: ...

    def give_up(self, file: LockedFile, cause: str) -> MlxpinError: ...

    def mismatch_hint(self, lock: LockedModel, file: LockedFile, problem: str) -> MlxpinError: ...


class HubSourceBytes:
    def __init__(self, lock: LockedModel, downloader: HubDownloader) -> None:
        assert lock.original.repo is not None and lock.commit is not None
        self.repo = lock.original.repo
        self.commit = lock.commit
        self.downloader = downloader

    def open(
        self, file: LockedFile, offset: int
    ) -> contextlib.AbstractContextManager[tuple[int, Iterator[bytes]]]:
        return self.downloader.open(self.repo, self.commit, file.path, offset)

    def interrupted(self, exc: Exception) -> bool:
        from mlxpin.hub import TransferInterrupted

        return isinstance(exc, TransferInterrupted)

    def give_up(self, file: LockedFile, cause: str) -> MlxpinError:
        return self.downloader.unreachable(self.repo, self.commit, f"{file.path}: {cause}")

    def mismatch_hint(self, lock: LockedModel, file: LockedFile, problem: str) -> MlxpinError:
        return IntegrityError(lock.name, file.path, f"downloaded bytes {problem}")


class LocalSourceBytes:
    def __init__(self, root: Path) -> None:
        self.root = root

    @contextlib.contextmanager
    def open(self, file: LockedFile, offset: int) -> Iterator[tuple[int, Iterator[bytes]]]:
        with (self.root / file.path).open("rb") as handle:
            handle.seek(offset)

            def chunks() -> Iterator[bytes]:
                while chunk := handle.read(CHUNK):
                    yield chunk

            yield offset, chunks()

    def interrupted(self, exc: Exception) -> bool:
        return False

    def give_up(self, file: LockedFile, cause: str) -> MlxpinError:
        raise AssertionError("local copies are not retried")

    def mismatch_hint(self, lock: LockedModel, file: LockedFile, problem: str) -> MlxpinError:
        error = IntegrityError(lock.name, file.path, f"the local file {problem}")
        error.hint = (
            f"{self.root / file.path} changed since it was locked; if that is intended, "
            f"run `mlxpin lock --update {lock.name}`"
        )
        return error


# --- one blob ----------------------------------------------------------------------------


def _disk_error(path: Path, exc: OSError) -> DiskError | None:
    if exc.errno in DISK_ERRNOS or exc.errno == errno.EFBIG:
        return DiskError(path, exc.strerror or str(exc))
    return None


def _transfer(
    source: ByteSource,
    lock: LockedModel,
    file: LockedFile,
    partial: Path,
    progress: Progress,
) -> int:
    """Fill `partial` with the file's bytes, resuming what a previous run left; returns the
    number of bytes transferred. Raises IntegrityError if the result is not the locked file."""
    hasher = OidHasher(oid_algorithm(file.oid), file.size)
    offset = 0
    if partial.exists():
        if partial.stat().st_size > file.size:
            partial.unlink()
        else:
            with partial.open("rb") as handle:
                while chunk := handle.read(CHUNK):
                    hasher.update(chunk)
                    offset += len(chunk)
            progress.advance(offset)
            log.debug("%s: resuming %s at byte %d", lock.name, file.path, offset)
    transferred = 0
    delay = RETRY_DELAY_S
    with open(partial, "ab") as handle:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                offset, got = _receive(source, lock, file, handle, hasher, offset, progress)
                transferred += got
                if offset == file.size:
                    break
                raise _Short()
            except _Restart:
                hasher = OidHasher(oid_algorithm(file.oid), file.size)
                handle.seek(0)
                handle.truncate()
                offset = 0
            except (_Short, Exception) as exc:
                if not isinstance(exc, _Short) and not source.interrupted(exc):
                    raise
                offset = handle.tell()  # every byte written so far is hashed too: resume there
                if attempt == ATTEMPTS:
                    raise source.give_up(file, str(exc) or "connection closed early") from None
                log.info("%s: %s interrupted (%s), retrying", lock.name, file.path, exc or "short")
                time.sleep(delay)
                delay = min(delay * 2, 8.0)
        handle.flush()
        os.fsync(handle.fileno())
    if offset != file.size:
        raise source.give_up(file, "the transfer never completed")
    if hasher.oid() != file.oid:
        partial.unlink()
        raise source.mismatch_hint(lock, file, f"hash to {hasher.oid()}, the lock says {file.oid}")
    return transferred


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
    hasher: OidHasher,
    offset: int,
    progress: Progress,
) -> tuple[int, int]:
    got = 0
    with source.open(file, offset) as (start, chunks):
        if start != offset:
            if offset == 0:
                raise MlxpinError(f"{file.path}: server answered an unexpected range")
            raise _Restart()
        for chunk in chunks:
            if offset + len(chunk) > file.size:
                raise source.mismatch_hint(
                    lock, file, f"are longer than the locked {file.size} bytes"
                )
            handle.write(chunk)
            hasher.update(chunk)
            offset += len(chunk)
            got += len(chunk)
            progress.advance(len(chunk))
    return offset, got


def ensure_blob(
    layout: StoreLayout,
    lock: LockedModel,
    file: LockedFile,
    source: ByteSource | None,
    progress: Progress,
) -> _BlobResult:
    blob = layout.blob(lock, file)
    if _record_matches(layout, file, blob):
        progress.advance(file.size)
        return _BlobResult(StampEntry(file.path, str(blob), FileStat.of(blob)), 0, 0)
    blob.parent.mkdir(parents=True, exist_ok=True)
    with hold_lock(layout.blob_lock(lock, file), BLOB_LOCK_TIMEOUT_S):
        hashed = 0
        if blob.exists():
            if _record_matches(layout, file, blob):
                progress.advance(file.size)
                return _BlobResult(StampEntry(file.path, str(blob), FileStat.of(blob)), 0, 0)
            if _hash_existing(blob, file, progress):
                stat = _write_record(layout, file, blob)
                return _BlobResult(StampEntry(file.path, str(blob), stat), 0, file.size)
            log.warning("%s: cached %s is corrupt; fetching it again", lock.name, file.path)
            hashed = file.size
            _remove(blob)
        if source is None:
            raise SnapshotMissingError(lock.name, f"{file.path} is not in the store")
        partial = blob.with_name(blob.name + ".mlxpin.incomplete")
        try:
            downloaded = _transfer(source, lock, file, partial, progress)
            if lock.original.path is not None:
                partial.chmod(0o444)
            partial.replace(blob)
            fsync_dir(blob.parent)
            stat = _write_record(layout, file, blob, "fetched")
        except OSError as exc:
            error = _disk_error(blob, exc)
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
    tmp = link.with_name(f".{link.name}.tmp-{secrets.token_hex(4)}")
    os.symlink(target, tmp)
    tmp.replace(link)


def link_hub_snapshot(layout: StoreLayout, lock: LockedModel) -> None:
    """Also expose the files in the Hub cache's own snapshot dir, as `hf download` would."""
    if lock.original.repo is None or lock.commit is None:
        return
    snapshot = layout.hub_snapshot(lock.original.repo, lock.commit)
    for file in lock.files:
        link = snapshot / file.path
        blob = layout.blob(lock, file)
        _link(os.path.relpath(blob, link.parent), link)


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
    tmp = view.with_name(f".{view.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    tmp.mkdir()
    for path, blob in wanted.items():
        link = tmp / path
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(blob, link)
    old = None
    if view.exists():
        old = view.with_name(f".{view.name}.old-{secrets.token_hex(4)}")
        view.replace(old)
    tmp.replace(view)
    fsync_dir(view.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return view


# --- one model ---------------------------------------------------------------------------


def fetch_model(
    layout: StoreLayout,
    lock: LockedModel,
    source: ByteSource | None,
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

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(lock.files)))) as pool:
        futures = [pool.submit(one, f) for f in lock.files]
        results: list[_BlobResult] = []
        failures: list[BaseException] = []
        for future in futures:
            try:
                results.append(future.result())
            except BaseException as exc:  # collected, re-raised below after the others finish
                failures.append(exc)
    if failures:
        raise failures[0]
    entries = [r.entry for r in results]
    try:
        link_hub_snapshot(layout, lock)
        with hold_lock(layout.view_lock(lock)):
            view = build_view(layout, lock, entries)
            write_stamp(layout, lock, entries)
    except OSError as exc:
        error = _disk_error(layout.view(lock), exc)
        if error is None:
            raise
        raise error from None
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
        if not _hash_existing(blob, file, progress):
            return file, "content hash differs from the lock", None
        return file, None, StampEntry(file.path, target, _write_record(layout, file, blob))

    with ThreadPoolExecutor(max_workers=4) as pool:
        for file, problem, entry in pool.map(check, lock.files):
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
