"""What mlxpin wrote about bytes it verified: one record per blob file, one stamp per view
(`store/layout.py` says where they live and checks a stamp by stat alone; `status` and
`launch` need no more than that, fetch, verify and gc need this)."""

from __future__ import annotations

import contextlib
import json
import os
import stat as stat_mod
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from mlxpin.project.lockfile import LockedModel
from mlxpin.store.layout import STAMP_FORMAT, StoreLayout
from mlxpin.util.atomic import hold_mutex, write_atomic


class FileStat(NamedTuple):
    """The stat fields that say a file is unchanged since it was hashed. A tuple, not a
    dataclass: `verify` makes and compares two or three per file (5,000 files: ~10 ms)."""

    size: int
    mtime_ns: int
    inode: int
    device: int
    ctime_ns: int  # an in-place rewrite with the mtime put back still moves the ctime

    @classmethod
    def of(cls, path: Path | str) -> FileStat:
        """The file's own stat, never a link's target's; OSError for anything but a regular
        file."""
        return cls.of_result(os.lstat(path), path)

    @classmethod
    def of_result(cls, st: os.stat_result, path: Path | str = "") -> FileStat:
        if not stat_mod.S_ISREG(st.st_mode):
            raise OSError(0, "not a regular file", str(path))
        return cls(st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev, st.st_ctime_ns)

    def as_list(self) -> list[int]:
        return [self.size, self.mtime_ns, self.inode, self.device, self.ctime_ns]


FETCHED = "fetched"  # mlxpin downloaded or copied the blob itself
ADOPTED = "adopted"  # mlxpin found the blob in the cache and verified it


@dataclass(frozen=True)
class Record:
    """What mlxpin last verified about one blob file."""

    path: Path  # the record file
    stat: FileStat | None  # None when unreadable
    origin: str  # FETCHED | ADOPTED (records without the field: ADOPTED)


def read_record(layout: StoreLayout, blob: Path) -> Record | None:
    """Fields: size mtime inode device ctime origin. A record from before ctime was kept
    (four numbers, then the origin) keeps its origin but describes no file any more."""
    path = layout.verified_record(blob)
    try:
        fields = path.read_text().split()
    except (OSError, UnicodeDecodeError):
        return None
    try:
        stat: FileStat | None = FileStat(*(int(v) for v in fields[:5]))
        origin = fields[5] if len(fields) > 5 else ADOPTED
    except (ValueError, TypeError):
        stat = None
        origin = next((f for f in fields if f in (FETCHED, ADOPTED)), ADOPTED)
    return Record(path, stat, origin)


def write_record(
    layout: StoreLayout, blob: Path, stat: FileStat, origin: str | None = None
) -> None:
    """Record that the blob with this stat matches its oid; `origin` None keeps the
    recorded one (a blob mlxpin fetched stays fetched when it is re-verified)."""
    old = read_record(layout, blob)
    if origin is None:
        origin = old.origin if old is not None else ADOPTED
    if old is not None and (old.stat, old.origin) == (stat, origin):
        return  # unchanged: no rewrite, no fsyncs (`verify` of 5,000 files was 25x sha256sum)
    write_atomic(
        layout.verified_record(blob), " ".join([*map(str, stat.as_list()), origin]).encode()
    )


class StampEntry(NamedTuple):
    """One file of a stamp: its blob and that blob's stat when verified (a tuple, as
    `FileStat`: `verify` and `fetch` make one per file)."""

    path: str
    blob: str
    stat: FileStat


def write_stamp(
    layout: StoreLayout,
    lock: LockedModel,
    entries: list[StampEntry],
    origin: str | None = None,
    mutex: Path | None = None,
) -> None:
    """`origin` says where the bytes came from (hub, mirror, bundle, path); None keeps the
    recorded one (a re-verification does not change where a snapshot came from). With
    `mutex`, only a stamp that changes is written, holding it (an unchanged one needs
    neither the write nor the mutex)."""
    if origin is None:
        old = read_stamp(layout, lock)
        origin = old.origin if old is not None else None
    data: dict[str, object] = {
        "format": STAMP_FORMAT,
        "tree_hash": lock.tree_hash,
        "files": [
            [e.path, e.blob, *e.stat.as_list()] for e in sorted(entries, key=lambda e: e.path)
        ],
    }
    if origin is not None:
        data["origin"] = origin
    raw = json.dumps(data, separators=(",", ":")).encode()
    with contextlib.suppress(OSError):
        if layout.stamp(lock).read_bytes() == raw:
            return
    with hold_mutex(mutex) if mutex is not None else contextlib.nullcontext():
        write_atomic(layout.stamp(lock), raw)


def write_failed_stamp(layout: StoreLayout, lock: LockedModel, bad: list[tuple[str, str]]) -> None:
    """What `verify` leaves when bytes changed: a stamp that vouches for nothing and says
    why, so that `launch` names the failure instead of "never verified"."""
    data = {"format": STAMP_FORMAT, "tree_hash": lock.tree_hash, "failed": sorted(map(list, bad))}
    write_atomic(layout.stamp(lock), json.dumps(data, separators=(",", ":")).encode())


@dataclass(frozen=True)
class Stamp:
    """A stamp as written: which blob and stat each file had when it was verified."""

    files: dict[str, tuple[str, FileStat]]
    origin: str | None
    rows: int = 0  # as listed: more than `files` when a path is listed twice


def read_stamp(layout: StoreLayout, lock: LockedModel) -> Stamp | None:
    """The stamp of this pin, or None when absent, unreadable or another pin's."""
    try:
        data = json.loads(layout.stamp(lock).read_bytes())
        if data.get("format") != STAMP_FORMAT or data.get("tree_hash") != lock.tree_hash:
            return None
        if "failed" in data:
            return None
        rows = data["files"]
        files = {str(r[0]): (str(r[1]), FileStat(*map(int, r[2:7]))) for r in rows}
        origin = data.get("origin")
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None
    return Stamp(files, origin if isinstance(origin, str) else None, len(rows))
