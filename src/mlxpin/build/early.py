"""Hash (and flush to disk) a builder's output while it is still being written, so that
work overlaps the step instead of following it.

A file is hashed once it has not changed between two polls. The hash counts only if the
file's stat (the store's FileStat: size, mtime, inode, device, ctime) was the same before
and after the read, and is still the same when the builder has ended: a file written to
again afterwards (the clocks move on every write) is hashed again then, as any file never
hashed early is.
"""

from __future__ import annotations

import os
import stat as stat_mod
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from mlxpin.store.records import FileStat
from mlxpin.util.hashing import CHUNK, OidHasher


def hash_and_sync(path: Path, expected: FileStat | None = None) -> tuple[FileStat, str] | None:
    """The file's stat and sha256 oid, its bytes flushed to disk (a build's output is
    published by a rename, so its data must be durable first). None when it is not a
    regular file, its stat is not ``expected``, or it was written to while it was read."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb", buffering=0) as handle:
        before = os.fstat(fd)
        if not stat_mod.S_ISREG(before.st_mode):
            return None
        current = FileStat.of_result(before)
        if expected not in (None, current):
            return None
        hasher = OidHasher("sha256", current.size)
        with ThreadPoolExecutor(max_workers=1) as syncing:
            synced = syncing.submit(os.fsync, fd)  # the write-back overlaps the hashing
            while chunk := handle.read(CHUNK):
                hasher.update(chunk)
            synced.result()
        if FileStat.of_result(os.fstat(fd)) != current:
            return None  # written to while it was read
    return current, hasher.oid()


class EarlyHashes:
    """One thread hashing the files of ``out`` that stopped changing (`poll`)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="early-hash")
        self.seen: dict[str, FileStat] = {}  # each file's stat at the last poll
        self.queued: dict[str, tuple[FileStat, Future[tuple[FileStat, str] | None]]] = {}

    def poll(self) -> int:
        """Queue the files that did not change since the last poll; the bytes written."""
        listing = _files(self.out)
        for relative, current in listing:
            quiet = self.seen.get(relative) == current
            if quiet and self.queued.get(relative, (None,))[0] != current:
                future = self.pool.submit(hash_and_sync, self.out / relative, current)
                self.queued[relative] = (current, future)
            self.seen[relative] = current
        return sum(current.size for _, current in listing)

    def oid(self, relative: str, final: FileStat) -> str | None:
        """The file's sha256 oid if it was hashed early at its final stat, else None."""
        queued = self.queued.get(relative)
        if queued is None or queued[0] != final:
            return None
        result = queued[1].result()
        return result[1] if result is not None and result[0] == final else None

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _files(out: Path) -> list[tuple[str, FileStat]]:
    found: list[tuple[str, FileStat]] = []
    for root, _, names in os.walk(out):
        for file_name in names:
            full = os.path.join(root, file_name)
            try:
                st = os.lstat(full)
            except OSError:
                continue
            if stat_mod.S_ISREG(st.st_mode):
                relative = os.path.relpath(full, out).replace(os.sep, "/")
                found.append((relative, FileStat.of_result(st)))
    return found
