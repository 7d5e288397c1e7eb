"""What `mlxpin gc` may delete: a pure plan from an inventory of the disk and a live set.

Live: every blob, view and stamp a lock file in a live lock dir references (orphans
included), and every Hub pin's snapshot dir and `refs/mlxpin/<name>/<commit>`. Live lock
dirs: the current project's and every gc root's (`<state>/roots/*`, written by `fetch`).

Garbage; anything the planner does not recognise is never touched:

- views `<state>/snapshots/<key>` and their `.stamp` no live lock has;
- mlxpin's own blobs `<state>/blobs/sha256/<hex>` (path sources) no live lock uses;
- Hub cache blobs no live lock uses **only** when mlxpin downloaded them: the record
  says `fetched` and describes this very file, and no other copy of the content exists
  in the cache (else kept, unless `include_foreign`, i.e. `--all`);
- with a deleted blob: its record (if it describes it), the Hub snapshot links to it,
  then emptied snapshot dirs;
- partial downloads and temporary views older than a day, unless they would become a
  live blob (a later fetch resumes them);
- gc roots whose lock dir is gone or unreadable (`--yes` refuses unless `--forget-missing`);
- mlxpin's refs of pins no live lock has, and any ref to a snapshot dir this gc empties
  (huggingface_hub treats a ref to a missing snapshot as a corrupt repo).

Deleting (`sweep`) holds the mutex `fetch` holds for that blob or view, so a concurrent
fetch and gc never see each other's half-done work.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mlxpin.project.lockfile import LockedModel
from mlxpin.store.layout import StoreLayout
from mlxpin.store.records import FETCHED, FileStat, Record

GarbageKind = Literal[
    "view",
    "stamp",
    "temp",
    "hub_blob",
    "local_blob",
    "partial",
    "record",
    "link",
    "root",
    "ref",
    "runtime",  # an installed server runtime (planned by mlxpin.runtime.garbage)
]
STALE_AFTER_S = 24 * 3600.0
HEX_RE = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def oid_of_hex(digest: str) -> str:
    """Blob file names are the Hub's etags: git sha1 for plain files, sha256 for LFS."""
    return ("gitsha1:" if len(digest) == 40 else "sha256:") + digest


LiveSet = frozenset[Path]


def live_set(layout: StoreLayout, locks: Iterable[LockedModel]) -> LiveSet:
    """The locks' blobs, views and stamps, spelled as the scan of this layout spells them."""
    paths: set[Path] = set()
    for lock in locks:
        paths.add(layout.view(lock))
        paths.add(layout.stamp(lock))
        paths.update(layout.blob(lock, file) for file in lock.files)
        ref = layout.pin_ref(lock)
        if ref is not None and lock.original.repo is not None and lock.commit is not None:
            paths.add(ref)
            paths.add(layout.hub_snapshot(lock.original.repo, lock.commit))
    return frozenset(paths)


# --- what is on disk (gathered by mlxpin.store.gc.inventory) ----------------------------


@dataclass(frozen=True)
class BlobOnDisk:
    path: Path
    oid: str
    local: bool  # mlxpin's own store (path sources) rather than the Hub cache
    stat: FileStat
    record: Record | None
    mutex: Path


@dataclass(frozen=True)
class ViewOnDisk:
    view: Path | None  # the directory, when present
    stamp: Path | None  # the stamp, when present
    size: int
    mutex: Path


@dataclass(frozen=True)
class LeftoverOnDisk:
    """A partial download or a temporary view/stamp a crashed process left behind."""

    kind: Literal["partial", "temp"]
    path: Path
    size: int
    mtime: float
    mutex: Path | None
    becomes: Path | None  # the blob or view it would have become
    ours: bool = True  # False: another tool's partial download (huggingface_hub's)


@dataclass(frozen=True)
class LinkOnDisk:
    path: Path
    target: Path  # normalised absolute target
    snapshots_dir: Path  # emptied directories are removed up to (not including) this one


@dataclass(frozen=True)
class RootOnDisk:
    path: Path
    lock_dir: Path | None  # None when the root file is unreadable
    exists: bool
    readable: bool = True  # False: the lock dir exists but cannot be listed


@dataclass(frozen=True)
class RefOnDisk:
    path: Path
    snapshot: Path  # the snapshot dir of the commit it names
    ours: bool  # under refs/mlxpin/


@dataclass(frozen=True)
class SnapshotOnDisk:
    path: Path
    entries: frozenset[Path]  # everything in it that is not a directory


@dataclass(frozen=True)
class Inventory:
    views: tuple[ViewOnDisk, ...] = ()
    blobs: tuple[BlobOnDisk, ...] = ()
    leftovers: tuple[LeftoverOnDisk, ...] = ()
    links: tuple[LinkOnDisk, ...] = ()
    roots: tuple[RootOnDisk, ...] = ()
    refs: tuple[RefOnDisk, ...] = ()
    snapshots: tuple[SnapshotOnDisk, ...] = ()


# --- the plan ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Doomed:
    kind: GarbageKind
    path: Path
    size: int
    reason: str
    mutex: Path | None = None  # held while this item and its followers are deleted
    expect: FileStat | None = None  # skip the blob if it changed since the scan
    follow: tuple[Doomed, ...] = ()  # removed only once this item is gone
    prune_to: Path | None = None  # links: remove emptied parents up to this directory
    unless_exists: Path | None = None  # refs: kept if this snapshot dir is still there

    @property
    def total_size(self) -> int:
        return self.size + sum(f.total_size for f in self.follow)


@dataclass(frozen=True)
class Kept:
    path: Path
    size: int
    reason: str


@dataclass(frozen=True)
class GcPlan:
    doomed: tuple[Doomed, ...]
    kept: tuple[Kept, ...]  # unreferenced Hub blobs mlxpin did not download

    @property
    def size(self) -> int:
        return sum(d.total_size for d in self.doomed)

    @property
    def kept_size(self) -> int:
        return sum(k.size for k in self.kept)


def _origin_problem(blob: BlobOnDisk, copies: int) -> str | None:
    """None when mlxpin provably downloaded this blob, else why it is kept."""
    record = blob.record
    if record is None:
        return "never downloaded or verified by mlxpin"
    if record.origin != FETCHED:
        return "found in the cache by mlxpin, not downloaded by it"
    if record.stat != blob.stat:
        return "changed since mlxpin verified it"
    if copies > 1:
        return "another copy of the same content exists, so its origin is uncertain"
    return None


def _doomed_refs(inventory: Inventory, live: LiveSet, doomed: list[Doomed]) -> list[Doomed]:
    """Refs that would be left naming a pin nobody has, or a snapshot this plan empties."""
    gone = {f.path for d in doomed for f in d.follow if f.kind == "link"}
    emptied = {s.path for s in inventory.snapshots if s.entries and s.entries <= gone}
    result: list[Doomed] = []
    for ref in inventory.refs:
        if ref.ours and ref.path not in live:
            refs = ref.snapshot.parent.parent / "refs"
            why = "mlxpin's ref for a pin no lock has"
            result.append(Doomed("ref", ref.path, 0, why, prune_to=refs))
        elif ref.snapshot in emptied and ref.snapshot not in live:
            why = "ref to a snapshot gc empties"
            result.append(Doomed("ref", ref.path, 0, why, unless_exists=ref.snapshot))
    return result


def _plan_views(inventory: Inventory, live: LiveSet) -> list[Doomed]:
    doomed: list[Doomed] = []
    for view in inventory.views:
        if view.view in live or view.stamp in live:
            continue
        stamp = (
            (Doomed("stamp", view.stamp, 0, "stamp of an unreferenced snapshot", view.mutex),)
            if view.stamp is not None and view.view is not None
            else ()
        )
        if view.view is not None:
            reason = "snapshot no lock references"
            doomed.append(Doomed("view", view.view, view.size, reason, view.mutex, follow=stamp))
        elif view.stamp is not None:
            doomed.append(Doomed("stamp", view.stamp, 0, "stamp without a snapshot", view.mutex))
    return doomed


def _plan_blobs(
    inventory: Inventory, live: LiveSet, *, include_foreign: bool
) -> tuple[list[Doomed], list[Kept]]:
    doomed: list[Doomed] = []
    kept: list[Kept] = []
    copies = Counter(blob.oid.split(":", 1)[1] for blob in inventory.blobs)
    links_to: dict[Path, list[LinkOnDisk]] = {}
    for link in inventory.links:
        links_to.setdefault(link.target, []).append(link)
    for blob in inventory.blobs:
        if blob.path in live:
            continue
        record = blob.record
        follow: list[Doomed] = []
        if record is not None and record.stat == blob.stat:
            follow.append(Doomed("record", record.path, 0, "record of a deleted blob"))
        kind: GarbageKind = "local_blob"
        reason = "imported path-source file no lock references"
        if not blob.local:
            problem = _origin_problem(blob, copies[blob.oid.split(":", 1)[1]])
            if problem is not None and not include_foreign:
                kept.append(Kept(blob.path, blob.stat.size, problem))
                continue
            for link in sorted(links_to.get(blob.path, ()), key=lambda item: item.path):
                why = "Hub snapshot link to a deleted blob"
                follow.append(Doomed("link", link.path, 0, why, prune_to=link.snapshots_dir))
            kind = "hub_blob"
            reason = "downloaded by mlxpin, no lock references it"
            if problem is not None:
                reason = f"no lock references it ({problem}; --all)"
        doomed.append(
            Doomed(kind, blob.path, blob.stat.size, reason, blob.mutex, blob.stat, tuple(follow))
        )
    return doomed, kept


def _plan_leftovers(
    inventory: Inventory, live: LiveSet, *, include_foreign: bool, now: float
) -> list[Doomed]:
    doomed: list[Doomed] = []
    for leftover in inventory.leftovers:
        if now - leftover.mtime < STALE_AFTER_S:
            continue
        if not leftover.ours and not include_foreign:
            continue  # another tool's resumable download
        if leftover.becomes in live:
            continue  # an interrupted fetch of a live pin resumes from it
        what = "partial download" if leftover.kind == "partial" else "temporary file"
        reason = f"{what} older than a day"
        doomed.append(Doomed(leftover.kind, leftover.path, leftover.size, reason, leftover.mutex))
    return doomed


def _plan_roots(inventory: Inventory) -> list[Doomed]:
    doomed: list[Doomed] = []
    for root in inventory.roots:
        if root.exists and root.readable:
            continue
        if root.lock_dir is None:
            reason = "unreadable gc root"
        elif not root.exists:
            reason = f"gc root for {root.lock_dir}, which no longer exists"
        else:
            reason = f"gc root for {root.lock_dir}, which cannot be read"
        doomed.append(Doomed("root", root.path, 0, reason))
    return doomed


_ORDER = {
    kind: i for i, kind in enumerate(("view", "stamp", "temp", "local_blob", "hub_blob", "partial"))
}


def plan(inventory: Inventory, live: LiveSet, *, include_foreign: bool, now: float) -> GcPlan:
    """What to delete and what to keep, in deletion order (views before their blobs)."""
    blobs, kept = _plan_blobs(inventory, live, include_foreign=include_foreign)
    doomed = [
        *_plan_views(inventory, live),
        *blobs,
        *_plan_leftovers(inventory, live, include_foreign=include_foreign, now=now),
        *_plan_roots(inventory),
    ]
    doomed.extend(_doomed_refs(inventory, live, doomed))
    doomed.sort(key=lambda d: (_ORDER.get(d.kind, len(_ORDER)), str(d.path)))
    kept.sort(key=lambda k: str(k.path))
    return GcPlan(tuple(doomed), tuple(kept))
