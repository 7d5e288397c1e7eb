"""Export verified pins into a bundle, and import a bundle into this host's cache.

Export only sends what a stamp vouches for: every view must be present and unchanged
since it was verified, each blob is opened without following links and must still have
the stat its stamp recorded, before and after it is streamed.

Import verifies every byte against the lock inside the bundle while it reads, through
the same blob placement as `fetch` (`ensure_blob`: per-blob lock, partial file, hash,
rename, verification record), then publishes each model's view and stamp exactly as
`fetch` does. It publishes nothing until every file of every model in the bundle is in
place; on any failure the blobs it created are removed again, so a damaged bundle leaves
nothing of its models behind.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mlxpin.errors import BundleError, IntegrityError, MlxpinError, Run, SnapshotMissingError
from mlxpin.project.lockfile import LockedFile, LockedModel, parse_lock, render
from mlxpin.store.bundle import (
    INDEX_MEMBER,
    MAX_INDEX_BYTES,
    MAX_LOCK_BYTES,
    BundleReader,
    BundleWriter,
    blob_member,
    parse_index,
    render_index,
)
from mlxpin.store.fetch import ensure_blob, publish
from mlxpin.store.layout import StoreLayout, check_stamp
from mlxpin.store.records import FileStat, StampEntry, read_stamp
from mlxpin.store.sources import LocalSourceBytes
from mlxpin.store.verify import Progress
from mlxpin.util.atomic import hold_mutex

BUNDLE_ORIGIN = "bundle"


# --- export ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportBlob:
    member: str
    path: Path  # the blob file the stamp vouches for
    size: int
    stat: FileStat
    owner: str  # "model: path", for messages


@dataclass(frozen=True)
class ExportPlan:
    locks: tuple[LockedModel, ...]
    blobs: tuple[ExportBlob, ...]

    @property
    def total_size(self) -> int:
        return sum(b.size for b in self.blobs)


def plan_export(layout: StoreLayout, locks: tuple[LockedModel, ...]) -> ExportPlan:
    """What to send; refuses (66) unless every model is fetched and verified."""
    blobs: dict[str, ExportBlob] = {}
    for lock in locks:
        check = check_stamp(layout, lock)
        stamp = read_stamp(layout, lock)
        if not check.ok or stamp is None:
            raise SnapshotMissingError(
                lock.name, f"cannot export: {check.problem or 'its stamp is unreadable'}"
            )
        for file in lock.files:
            member = blob_member(file.oid)
            if member in blobs:
                continue
            blob, stat = stamp.files[file.path]
            blobs[member] = ExportBlob(
                member, Path(blob), file.size, stat, f"{lock.name}: {file.path}"
            )
    return ExportPlan(locks, tuple(blobs.values()))


def write_bundle(plan: ExportPlan, out: BinaryIO, progress: Progress) -> int:
    """Stream the bundle; returns the bytes written."""
    writer = BundleWriter(out)
    writer.add_bytes(INDEX_MEMBER, render_index(plan.locks, len(plan.blobs), plan.total_size))
    for lock in plan.locks:
        writer.add_bytes(f"locks/{lock.name}.toml", render(lock))
    progress.add_total(plan.total_size)
    for blob in plan.blobs:
        with _open_vouched(blob) as handle:
            try:
                writer.add_file(blob.member, handle, blob.size)
            except ValueError:
                raise _changed(blob) from None
            if _fstat(handle) != blob.stat:
                raise _changed(blob)
        progress.advance(blob.size)
    writer.close()
    return writer.written


def _changed(blob: ExportBlob) -> IntegrityError:
    model, path = blob.owner.split(": ", 1)
    return IntegrityError(
        model,
        path,
        "changed since it was verified",
        hint=f"run {Run.of('verify', model)} to see what changed, then {Run.of('fetch', model)}",
    )


def _fstat(handle: BinaryIO) -> FileStat:
    return FileStat.of_result(os.fstat(handle.fileno()))


@contextlib.contextmanager
def _open_vouched(blob: ExportBlob) -> Iterator[BinaryIO]:
    try:
        fd = os.open(blob.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        raise _changed(blob) from None
    with os.fdopen(fd, "rb", buffering=0) as handle:
        try:
            same = _fstat(handle) == blob.stat
        except OSError:  # not a regular file any more
            same = False
        if not same:
            raise _changed(blob)
        yield handle


# --- import ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportedModel:
    name: str
    view: Path
    files: int
    total_size: int
    written_bytes: int  # bytes placed in the cache (0: everything was already there)
    lock: LockedModel


@dataclass(frozen=True)
class ImportOutcome:
    models: tuple[ImportedModel, ...]
    received_bytes: int


class MemberSource:
    """One bundle member as a ByteSource for `ensure_blob`: read once, forward only."""

    def __init__(self, reader: BundleReader, member_name: str, owner: str) -> None:
        self.reader = reader
        self.member_name = member_name
        self.owner = owner
        self.used = False

    @contextlib.contextmanager
    def open(self, file: LockedFile, offset: int) -> Iterator[tuple[int, Iterator[bytes]]]:
        member = self.reader.current
        if self.used or member is None or member.name != self.member_name:
            raise self._error("bytes from an earlier, interrupted import did not match")
        self.used = True
        skipped = 0
        chunks = self.reader.chunks(member)
        pending = b""
        for chunk in chunks:  # a partial file from an interrupted import holds the start
            if skipped + len(chunk) > offset:
                pending = chunk[offset - skipped :]
                skipped = offset
                break
            skipped += len(chunk)
        if skipped < offset:
            raise self._error("the bundle ends early (truncated)")

        def rest() -> Iterator[bytes]:
            if pending:
                yield pending
            yield from chunks

        yield offset, rest()

    def interrupted(self, exc: Exception) -> bool:
        return False

    def give_up(self, file: LockedFile, cause: str) -> MlxpinError:
        return self._error(cause)

    def mismatch_hint(self, lock: LockedModel, file: LockedFile, problem: str) -> MlxpinError:
        return self._error(f"bytes {problem}")

    def origin(self) -> str | None:
        return BUNDLE_ORIGIN

    def _error(self, problem: str) -> BundleError:
        return BundleError(self.reader.label, f"{self.member_name} ({self.owner})", problem)


LockCheck = Callable[[LockedModel], None]


def import_bundle(
    layout: StoreLayout,
    reader: BundleReader,
    check_lock: LockCheck,
    progress: Progress,
) -> ImportOutcome:
    """Read a whole bundle; place and verify every blob; publish every model.

    `check_lock` sees each of the bundle's locks before any byte is placed (to refuse a
    bundle that pins other bytes than this project's lock). One member at a time, in the
    bundle's order: no worker threads, so Ctrl-C stops it where it is.
    """
    locks = _read_head(reader)
    for lock in locks:
        check_lock(lock)
    wanted: dict[str, list[tuple[LockedModel, LockedFile]]] = {}
    for lock in locks:
        for file in lock.files:
            wanted.setdefault(blob_member(file.oid), []).append((lock, file))
    progress.add_total(sum(lock.total_size for lock in locks))
    created: list[tuple[LockedModel, LockedFile, bool]] = []
    entries: dict[tuple[str, str], StampEntry] = {}  # (model, path) -> entry
    written: dict[str, int] = {}
    try:
        seen: set[str] = set()
        while (member := reader.next()) is not None:
            users = wanted.get(member.name)
            if users is None:
                raise BundleError(reader.label, member.name, "is not a file of any lock in it")
            if member.name in seen:
                raise BundleError(reader.label, member.name, "appears twice")
            seen.add(member.name)
            lock, file = users[0]
            if member.size != file.size:
                raise BundleError(
                    reader.label,
                    f"{member.name} ({lock.name}: {file.path})",
                    f"holds {member.size} bytes, the lock says {file.size}",
                )
            _place(layout, reader, member.name, users, created, entries, written, progress)
        missing = sorted(set(wanted) - seen)
        if missing:
            lock, file = wanted[missing[0]][0]
            raise BundleError(
                reader.label,
                f"{missing[0]} ({lock.name}: {file.path})",
                f"is missing from the bundle ({len(missing)} file(s) missing)",
            )
        outcomes = []
        for lock in locks:
            model_entries = [entries[(lock.name, f.path)] for f in lock.files]
            view = publish(layout, lock, model_entries, BUNDLE_ORIGIN)
            outcomes.append(
                ImportedModel(
                    lock.name,
                    view,
                    len(lock.files),
                    lock.total_size,
                    written.get(lock.name, 0),
                    lock,
                )
            )
    except BaseException:
        _roll_back(layout, created)
        raise
    return ImportOutcome(tuple(outcomes), reader.received)


def _read_head(reader: BundleReader) -> tuple[LockedModel, ...]:
    first = reader.next()
    if first is None or first.name != INDEX_MEMBER:
        raise BundleError(
            reader.label,
            first.name if first else "the start",
            f"an mlxpin bundle starts with {INDEX_MEMBER} (is this a bundle?)",
        )
    index = parse_index(reader.read_small(first, MAX_INDEX_BYTES), reader.label)
    locks: list[LockedModel] = []
    for entry in index.models:
        member = reader.next()
        if member is None or member.name != entry.lock:
            raise BundleError(
                reader.label, member.name if member else entry.lock, f"expected {entry.lock} here"
            )
        data = reader.read_small(member, MAX_LOCK_BYTES)
        lock = parse_lock(data, Path(f"{reader.label}:{member.name}"), expected_name=entry.name)
        if lock.tree_hash != entry.tree_hash:
            raise BundleError(reader.label, member.name, "differs from the bundle's index")
        locks.append(lock)
    distinct = {blob_member(f.oid): f.size for lock in locks for f in lock.files}
    if len(distinct) != index.blobs or sum(distinct.values()) != index.bytes:
        raise BundleError(reader.label, INDEX_MEMBER, "blob counts differ from its locks")
    return tuple(locks)


def _place(
    layout: StoreLayout,
    reader: BundleReader,
    member: str,
    users: list[tuple[LockedModel, LockedFile]],
    created: list[tuple[LockedModel, LockedFile, bool]],
    entries: dict[tuple[str, str], StampEntry],
    written: dict[str, int],
    progress: Progress,
) -> None:
    """Put one member's bytes where every lock that names its oid wants them."""
    placed: dict[Path, StampEntry] = {}
    for lock, file in users:
        blob = layout.blob(lock, file)
        entry = placed.get(blob)
        if entry is None:
            source: MemberSource | LocalSourceBytes
            wanted = file
            if not placed:
                source = MemberSource(reader, member, f"{lock.name}: {file.path}")
            else:  # the same bytes in another repo's blobs: copy the verified one
                first = next(iter(placed.values()))
                source = LocalSourceBytes(Path(first.blob).parent, lock.name)
                wanted = LockedFile(Path(first.blob).name, file.size, file.oid)
            created.append((lock, file, False))  # on failure: only its partial file goes
            result = ensure_blob(layout, lock, wanted, source, progress)
            created[-1] = (lock, file, result.created)
            entry = result.entry
            placed[blob] = entry
            written[lock.name] = written.get(lock.name, 0) + result.downloaded
        entries[(lock.name, file.path)] = StampEntry(file.path, entry.blob, entry.stat)


def _roll_back(layout: StoreLayout, created: list[tuple[LockedModel, LockedFile, bool]]) -> None:
    """Remove the blobs this import placed (and its partial files), under their locks; a
    blob another import placed meanwhile stays."""
    for lock, file, placed in created:
        blob = layout.blob(lock, file)
        partial = blob.with_name(blob.name + ".mlxpin.incomplete")
        try:
            with hold_mutex(layout.blob_mutex(lock, file), 30.0, mode=0o664):
                doomed = (partial, blob, layout.verified_record(blob)) if placed else (partial,)
                for path in doomed:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
        except (OSError, MlxpinError):
            continue
