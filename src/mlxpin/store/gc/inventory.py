"""What `mlxpin gc` finds on disk: the live lock dirs and what they pin, and an inventory
of the store and the Hub cache (listings, stats and records; it never hashes or writes)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from mlxpin.config import Settings
from mlxpin.errors import LockCorruptError
from mlxpin.project.lockdir import list_lock_dir
from mlxpin.project.lockfile import LockedModel, read_lock
from mlxpin.store.gc.plan import (
    HEX_RE,
    BlobOnDisk,
    Inventory,
    LeftoverOnDisk,
    LinkOnDisk,
    LiveSet,
    RefOnDisk,
    RootOnDisk,
    SnapshotOnDisk,
    ViewOnDisk,
    live_set,
    oid_of_hex,
)
from mlxpin.store.inuse import locks_in_use
from mlxpin.store.layout import StoreLayout
from mlxpin.store.records import FileStat, read_record

# --- the live set -------------------------------------------------------------------------


@dataclass(frozen=True)
class LiveRoot:
    lock_dir: Path
    registered: bool  # a gc root (else: only the current project's lock dir)
    locks: int


def read_roots(layout: StoreLayout) -> tuple[RootOnDisk, ...]:
    roots_dir = layout.state_dir / "roots"
    try:
        entries = sorted(p for p in roots_dir.iterdir() if not p.name.startswith("."))
    except OSError:
        return ()
    roots: list[RootOnDisk] = []
    for entry in entries:
        try:
            text = os.fsdecode(entry.read_bytes())
        except (OSError, UnicodeDecodeError):
            text = ""
        lock_dir = Path(text)
        if text and "\n" not in text and lock_dir.is_absolute():
            roots.append(RootOnDisk(entry, lock_dir, lock_dir.is_dir()))
        else:
            roots.append(RootOnDisk(entry, None, False))
    return tuple(roots)


@dataclass(frozen=True)
class LiveScan:
    live: LiveSet
    roots: tuple[LiveRoot, ...]
    problems: tuple[LockCorruptError, ...]
    unreadable: dict[Path, str]  # lock dirs that exist but cannot be listed -> why


def collect_live(
    settings: Settings, layout: StoreLayout, roots: tuple[RootOnDisk, ...]
) -> LiveScan:
    dirs: dict[Path, bool] = {settings.lock_dir: False}
    for root in roots:
        if root.exists and root.lock_dir is not None:
            dirs[root.lock_dir] = True
    locks: list[LockedModel] = []
    problems: list[LockCorruptError] = []
    live_roots: list[LiveRoot] = []
    unreadable: dict[Path, str] = {}
    for lock_dir, registered in dirs.items():
        count = 0
        listing = list_lock_dir(lock_dir)
        if listing.error is not None:
            unreadable[lock_dir] = listing.error
        # A `<name>.toml` that cannot be read may be a lock: reading it reports the problem.
        for name in sorted((*listing.names, *listing.unreadable)):
            try:
                lock = read_lock(lock_dir, name)
            except LockCorruptError as exc:
                problems.append(exc)
                continue
            if lock is not None:
                locks.append(lock)
                count += 1
        if registered or lock_dir.is_dir():
            live_roots.append(LiveRoot(lock_dir, registered, count))
    locks += locks_in_use(layout)  # what running imports and servers use
    return LiveScan(live_set(layout, locks), tuple(live_roots), tuple(problems), unreadable)


# --- the inventory ------------------------------------------------------------------------


def _lstat_size(path: Path) -> int:
    try:
        return path.lstat().st_size
    except OSError:
        return 0


def tree_size(path: Path) -> int:
    """Bytes under ``path`` (every entry lstat'ed, links not followed; unreadable: 0)."""
    total = 0
    for directory, dirs, names in os.walk(path):
        for name in (*dirs, *names):
            total += _lstat_size(Path(directory) / name)
    return total


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except OSError:
        return time.time()


def _listdir(path: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as entries:
            return sorted(entries, key=lambda e: e.name)
    except OSError:
        return []


def _scan_views(layout: StoreLayout) -> tuple[list[ViewOnDisk], list[LeftoverOnDisk]]:
    directory = layout.state_dir / "snapshots"
    views: dict[str, Path] = {}
    stamps: dict[str, Path] = {}
    leftovers: list[LeftoverOnDisk] = []
    for entry in _listdir(directory):
        name = entry.name
        path = Path(entry.path)
        if name.startswith("."):
            # build_view's `.<key>.tmp-*` / `.<key>.old-*`, write_atomic's `.<key>.stamp.tmp-*`
            key = name[1:].split(".", 1)[0]
            if HEX_RE.fullmatch(key) and (".tmp-" in name or ".old-" in name):
                size = tree_size(path) if entry.is_dir(follow_symlinks=False) else 0
                leftovers.append(
                    LeftoverOnDisk(
                        "temp",
                        path,
                        size + _lstat_size(path),
                        _mtime(path),
                        layout.view_mutex_for_key(key),
                        directory / key,
                    )
                )
            continue
        if name.endswith(".stamp") and HEX_RE.fullmatch(name.removesuffix(".stamp")):
            stamps[name.removesuffix(".stamp")] = path
        elif HEX_RE.fullmatch(name) and entry.is_dir(follow_symlinks=False):
            views[name] = path
    result = []
    for key in sorted(views.keys() | stamps.keys()):
        view, stamp = views.get(key), stamps.get(key)
        size = (tree_size(view) + _lstat_size(view) if view else 0) + (
            _lstat_size(stamp) if stamp else 0
        )
        result.append(ViewOnDisk(view, stamp, size, layout.view_mutex_for_key(key)))
    return result, leftovers


def _scan_blob_dir(
    layout: StoreLayout, directory: Path, repo: str | None
) -> tuple[list[BlobOnDisk], list[LeftoverOnDisk]]:
    blobs: list[BlobOnDisk] = []
    leftovers: list[LeftoverOnDisk] = []
    for entry in _listdir(directory):
        name = entry.name
        path = Path(entry.path)
        digest = name.split(".", 1)[0]
        if not HEX_RE.fullmatch(digest) or not entry.is_file(follow_symlinks=False):
            continue
        oid = oid_of_hex(digest) if repo is not None else "sha256:" + digest
        mutex = (
            layout.hub_blob_mutex(repo, oid) if repo is not None else layout.local_blob_mutex(oid)
        )
        if name == digest:
            try:
                stat = FileStat.of(path)
            except OSError:
                continue
            blobs.append(
                BlobOnDisk(path, oid, repo is None, stat, read_record(layout, path), mutex)
            )
        elif name.endswith(".incomplete"):
            leftovers.append(
                LeftoverOnDisk(
                    "partial",
                    path,
                    _lstat_size(path),
                    _mtime(path),
                    mutex,
                    directory / digest,
                    ours=repo is None or name.endswith(".mlxpin.incomplete"),
                )
            )
    return blobs, leftovers


def _scan_links(repo_dir: Path) -> tuple[list[LinkOnDisk], list[SnapshotOnDisk]]:
    snapshots = repo_dir / "snapshots"
    blobs = os.path.normpath(repo_dir / "blobs")
    links: list[LinkOnDisk] = []
    found: list[SnapshotOnDisk] = []
    for entry in _listdir(snapshots):
        if not entry.is_dir(follow_symlinks=False):
            continue
        entries: set[Path] = set()
        for directory, dirs, names in os.walk(entry.path):
            for name in (*dirs, *names):
                path = Path(directory) / name
                if not path.is_symlink():
                    if name in names:
                        entries.add(path)
                    continue
                entries.add(path)
                try:
                    target = os.path.normpath(Path(directory) / os.readlink(path))
                except OSError:
                    continue
                if os.path.dirname(target) == blobs:
                    links.append(LinkOnDisk(path, Path(target), snapshots))
        found.append(SnapshotOnDisk(Path(entry.path), frozenset(entries)))
    return links, found


def _scan_refs(repo_dir: Path) -> list[RefOnDisk]:
    """Every ref file (huggingface_hub counts every file under refs/, at any depth)."""
    refs_dir = repo_dir / "refs"
    ours = refs_dir / "mlxpin"
    refs: list[RefOnDisk] = []
    for directory, _, names in os.walk(refs_dir):
        for name in names:
            path = Path(directory) / name
            try:
                commit = path.read_text(encoding="ascii").strip()
            except (OSError, UnicodeDecodeError):
                continue
            if HEX_RE.fullmatch(commit) and len(commit) == 40 and not path.is_symlink():
                snapshot = repo_dir / "snapshots" / commit
                refs.append(RefOnDisk(path, snapshot, ours in path.parents))
    return refs


def scan(layout: StoreLayout, roots: tuple[RootOnDisk, ...]) -> Inventory:
    views, leftovers = _scan_views(layout)
    blobs, more = _scan_blob_dir(layout, layout.state_dir / "blobs" / "sha256", None)
    leftovers += more
    links: list[LinkOnDisk] = []
    refs: list[RefOnDisk] = []
    snapshots: list[SnapshotOnDisk] = []
    for entry in _listdir(layout.hub_cache):
        if not entry.name.startswith("models--") or not entry.is_dir(follow_symlinks=False):
            continue
        repo_dir = Path(entry.path)
        # StoreLayout maps a repo id to its directory by replacing "/" with "--".
        repo = entry.name.removeprefix("models--").replace("--", "/")
        if layout.repo_dir(repo) != repo_dir:
            continue
        hub, more = _scan_blob_dir(layout, repo_dir / "blobs", repo)
        blobs += hub
        leftovers += more
        repo_links, repo_snapshots = _scan_links(repo_dir)
        links += repo_links
        snapshots += repo_snapshots
        refs += _scan_refs(repo_dir)
    return Inventory(
        tuple(views),
        tuple(blobs),
        tuple(leftovers),
        tuple(links),
        roots,
        tuple(refs),
        tuple(snapshots),
    )
