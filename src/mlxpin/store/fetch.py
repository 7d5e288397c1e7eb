"""Make a pin's files present and verified on disk.

For every locked file: reuse the blob if a verification record says it is unchanged,
else hash what is there, else download it (Hub) or copy it (local path) into a partial
file that survives interruptions, hashing while the bytes arrive, and rename it into
place only once size and hash match the lock. Then build the exact view of the pin and
stamp it. Nothing unverified is ever reachable through a snapshot.

The Hub cache may be shared with other users: a link is never followed where mlxpin
expects its own file. A blob or partial that is a symlink (or anything but a regular
file) is foreign: it is removed (the link itself, never its target) and the file is
fetched again. Partials are opened with O_NOFOLLOW.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat as stat_mod
from dataclasses import dataclass
from pathlib import Path

from mlxpin.errors import DiskError, IntegrityError
from mlxpin.project.lockfile import LockedFile, LockedModel
from mlxpin.project.validate import is_commit
from mlxpin.store.layout import StoreLayout, check_stamp, list_view, view_links
from mlxpin.store.ranged import Transfer, fill
from mlxpin.store.records import (
    FETCHED,
    FileStat,
    StampEntry,
    read_record,
    write_record,
    write_stamp,
)
from mlxpin.store.sources import ByteSource
from mlxpin.store.verify import Progress, hash_existing
from mlxpin.util.atomic import disk_error, fsync_dir, hold_mutex, temp_name, write_atomic
from mlxpin.util.parallel import CancelToken, run_parallel

log = logging.getLogger("mlxpin.fetch")

BLOB_LOCK_TIMEOUT_S = 6 * 3600.0
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


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
    created: bool = False  # this call placed the blob (decided under its mutex)


# --- verification records --------------------------------------------------------------


def record_matches(layout: StoreLayout, file: LockedFile, blob: Path) -> FileStat | None:
    """The blob's stat if its verification record still describes it, else None."""
    record = read_record(layout, blob)
    try:
        current = FileStat.of(blob)
    except OSError:
        return None
    if record is not None and record.stat == current and current.size == file.size:
        return current
    return None


# --- one blob ----------------------------------------------------------------------------


def _transfer(transfer: Transfer) -> int:
    """Fill the partial file with the file's bytes, resuming what a previous run left, and
    check them; returns the bytes received. Raises IntegrityError if the result is not the
    locked file (after one fresh attempt when the bytes came partly from an earlier run)."""
    source, lock, file, partial = transfer.source, transfer.lock, transfer.file, transfer.partial
    received = 0
    for fresh in (False, True):
        with contextlib.suppress(FileNotFoundError):
            if not stat_mod.S_ISREG(os.lstat(partial).st_mode):
                log.warning(
                    "%s is not a regular file; removing it (not what it points at)", partial
                )
                _remove_foreign(partial, file)
        filled = fill(transfer)
        received += filled.received
        if filled.oid == file.oid:
            return received
        partial.unlink()
        if not filled.resumed or fresh:
            raise source.mismatch_hint(
                lock, file, f"hash to {filled.oid}, the lock says {file.oid}"
            )
        log.info("%s: %s did not match after resuming; downloading it afresh", lock.name, file.path)
    raise AssertionError("unreachable")


def ensure_blob(
    layout: StoreLayout,
    lock: LockedModel,
    file: LockedFile,
    source: ByteSource,
    progress: Progress,
    cancel: CancelToken | None = None,
) -> _BlobResult:
    """Put one locked file's verified blob in place (from its record, by hashing what is
    there, or by downloading it); `cancel` stops it at the next chunk."""
    cancel = CancelToken() if cancel is None else cancel
    cancel.raise_if_cancelled()
    blob = layout.blob(lock, file)
    stat = record_matches(layout, file, blob)
    if stat is not None:
        progress.advance(file.size)
        return _BlobResult(StampEntry(file.path, str(blob), stat), 0, 0)
    blob.parent.mkdir(parents=True, exist_ok=True)
    # 0o664 like huggingface_hub, so other users sharing the cache can wait on it too.
    with hold_mutex(layout.blob_mutex(lock, file), BLOB_LOCK_TIMEOUT_S, mode=0o664):
        hashed = 0
        try:
            st: os.stat_result | None = os.lstat(blob)
        except FileNotFoundError:
            st = None
        if st is not None and not stat_mod.S_ISREG(st.st_mode):
            log.warning(
                "%s: %s is not a regular file where its blob belongs; replacing it", lock.name, blob
            )
            _remove_foreign(blob, file, lock)
        elif st is not None:
            stat = record_matches(layout, file, blob)
            if stat is not None:
                progress.advance(file.size)
                return _BlobResult(StampEntry(file.path, str(blob), stat), 0, 0)
            stat = hash_existing(blob, file, progress, cancel)
            if stat is not None:
                write_record(layout, blob, stat)
                return _BlobResult(StampEntry(file.path, str(blob), stat), 0, file.size)
            log.warning("%s: cached %s is corrupt; fetching it again", lock.name, file.path)
            hashed = file.size
            _remove_foreign(blob, file, lock)
        partial = blob.with_name(blob.name + ".mlxpin.incomplete")
        try:
            downloaded = _transfer(Transfer(source, lock, file, partial, progress, cancel))
            if lock.original.path is not None:
                _chmod_own(partial, 0o444)
            partial.replace(blob)
            fsync_dir(blob.parent)
            stat = FileStat.of(blob)  # we hold the blob lock: nobody replaces it meanwhile
            write_record(layout, blob, stat, FETCHED)
        except IntegrityError:
            for path in (partial, partial.with_name(partial.name + ".ranges")):
                with contextlib.suppress(OSError):
                    path.unlink()
            raise
        except OSError as exc:
            error = disk_error(blob, exc)
            if error is None:
                raise
            with contextlib.suppress(OSError):
                partial.unlink()
            raise error from None
    return _BlobResult(
        StampEntry(file.path, str(blob), stat), downloaded, hashed + file.size, created=True
    )


def _chmod_own(path: Path, mode: int) -> None:
    """chmod the file itself: a link put in its place fails (ELOOP) instead of passing
    the mode on to its target."""
    fd = os.open(path, os.O_RDONLY | NOFOLLOW)
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _remove_foreign(path: Path, file: LockedFile, lock: LockedModel | None = None) -> None:
    """Remove what sits where mlxpin's file belongs: a link is unlinked (its target is
    never touched), a regular file deleted; a directory is not ours to delete."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except (IsADirectoryError, PermissionError) as exc:
        if not path.is_dir() or path.is_symlink():
            raise
        name = lock.name if lock is not None else "fetch"
        raise IntegrityError(
            name, file.path, f"{path} is a directory where a file belongs; remove it"
        ) from exc


# --- snapshot views ---------------------------------------------------------------------


def _link(target: str, link: Path) -> None:
    """Create or replace a symlink atomically (a short temporary name, so a file name near
    the 255-byte limit still fits)."""
    link.parent.mkdir(parents=True, exist_ok=True)
    try:
        if os.readlink(link) == target:
            return
    except OSError:
        pass
    tmp = link.parent / f".mlxpin-{os.urandom(6).hex()}.tmp"
    os.symlink(target, tmp)
    tmp.replace(link)


def _write_ref(ref: Path, commit: str) -> None:
    """Best effort: the pin itself (blobs, view, stamp) does not depend on refs, so a ref
    another user owns in a shared cache is a warning, not a failed fetch."""
    try:
        if not ref.is_symlink() and ref.read_bytes() == commit.encode():
            return
    except OSError:
        pass
    try:
        write_atomic(ref, commit.encode())  # no newline, as huggingface_hub writes it
    except (OSError, DiskError) as exc:
        log.warning("cannot set %s to %s: %s", ref, commit, exc)


def link_hub_snapshot(layout: StoreLayout, lock: LockedModel) -> None:
    """Also expose the files in the Hub cache's own snapshot dir, as `hf download` would,
    and keep refs a good citizen keeps:

    - `refs/mlxpin/<name>/<commit>`: one per pin, so `hf cache prune` (which deletes
      revisions no ref points at) never deletes a pinned snapshot;
    - `refs/<revision>` for a branch or tag pin is set to the locked commit, so offline
      tools asking for that revision (`mlx_lm --model owner/name`) load the pinned files.
    """
    ref = layout.pin_ref(lock)
    if lock.original.repo is None or lock.commit is None or ref is None:
        return
    snapshot = layout.hub_snapshot(lock.original.repo, lock.commit)
    snapshot.mkdir(parents=True, exist_ok=True)  # a ref must never name a missing snapshot
    for file in lock.files:
        link = snapshot / file.path
        blob = layout.blob(lock, file)
        _link(os.path.relpath(blob, link.parent), link)
    _write_ref(ref, lock.commit)
    revision = lock.original.revision
    if revision is not None and not is_commit(revision):
        _write_ref(layout.repo_dir(lock.original.repo) / "refs" / revision, lock.commit)


def build_view(layout: StoreLayout, lock: LockedModel, entries: list[StampEntry]) -> Path:
    """Publish the exact set of files as one directory, atomically."""
    view = layout.view(lock)
    links = view_links(layout, lock)
    wanted = {e.path: links[e.path] for e in entries}
    listing = list_view(view, frozenset(wanted))
    if listing.problem is None and not listing.foreign and listing.links == wanted:
        return view
    view.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(view)
    tmp.mkdir()
    for path, target in wanted.items():
        link = tmp / path
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, link)
    old = None
    if view.is_symlink() or (os.path.lexists(view) and not view.is_dir()):
        view.unlink()  # a link to elsewhere: the link goes, what it points at stays
    elif os.path.lexists(view):
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
        with hold_mutex(layout.view_mutex(lock)):
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
    cancel: CancelToken | None = None,
) -> FetchOutcome:
    """Fetch one pin: every blob (in `workers` threads), then its view and stamp. The
    command's `cancel` token (a fresh one when not given) stops the workers on Ctrl-C."""
    cancel = CancelToken() if cancel is None else cancel
    if check_stamp(layout, lock).ok:
        try:
            link_hub_snapshot(layout, lock)  # refs another tool may have moved or removed
        except OSError as exc:
            log.warning(
                "%s: cannot update the Hub cache's snapshot links or refs: %s", lock.name, exc
            )
        return FetchOutcome(
            lock.name, layout.view(lock), len(lock.files), lock.total_size, True, 0, 0
        )
    progress.add_total(lock.total_size)

    def one(file: LockedFile) -> _BlobResult:
        return ensure_blob(layout, lock, file, source, progress, cancel)

    results = run_parallel(one, lock.files, workers=workers, cancel=cancel)
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
