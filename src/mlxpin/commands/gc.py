"""`mlxpin gc`: find what no lock references (see `mlxpin.store.gc`) and, with `yes`, delete it.

Scanning reads directory listings, stats and the small verification records; it never
hashes. Deleting holds the per-blob / per-view lock that `fetch` takes (briefly: a busy
lock means a fetch is at work, and that item is skipped), re-checks that the item did not
become live or change meanwhile, and removes a view's stamp before its directory, so a
crash half-way leaves nothing that looks verified.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from mlxpin.config import Settings
from mlxpin.errors import ConfigError, ExitCode, LockBusyError, LockCorruptError
from mlxpin.project.lockfile import LockedModel, list_lock_dir, read_lock
from mlxpin.runtime.gc import live_runtime_keys, runtime_garbage
from mlxpin.runtime.layout import RuntimeLayout
from mlxpin.store.gc import (
    HEX_RE,
    BlobOnDisk,
    Doomed,
    GcPlan,
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
    plan,
)
from mlxpin.store.layout import FileStat, StoreLayout, read_record
from mlxpin.util.atomic import hold_mutex

LOCK_TIMEOUT_S = 0.5
VIEW_KEY_RE = HEX_RE

Status = Literal["would_remove", "removed", "busy", "changed", "live", "gone", "failed"]


@dataclass(frozen=True)
class ItemOutcome:
    item: Doomed
    status: Status
    detail: str | None = None

    def to_json(self) -> dict[str, Any]:
        doomed = self.item
        return {
            "kind": doomed.kind,
            "path": str(doomed.path),
            "size": doomed.total_size,
            "reason": doomed.reason,
            "status": self.status,
            "detail": self.detail,
            "with": [{"kind": f.kind, "path": str(f.path)} for f in doomed.follow],
        }


@dataclass(frozen=True)
class LiveRoot:
    lock_dir: Path
    registered: bool  # a gc root (else: only the current project's lock dir)
    locks: int


@dataclass(frozen=True)
class GcResult:
    dry_run: bool
    include_foreign: bool
    plan: GcPlan
    outcomes: tuple[ItemOutcome, ...]
    roots: tuple[LiveRoot, ...]
    problems: tuple[LockCorruptError, ...]

    @property
    def freed(self) -> int:
        return sum(o.item.total_size for o in self.outcomes if o.status == "removed")

    @property
    def skipped(self) -> tuple[ItemOutcome, ...]:
        return tuple(o for o in self.outcomes if o.status in ("busy", "changed", "live", "failed"))

    @property
    def failed(self) -> tuple[ItemOutcome, ...]:
        return tuple(o for o in self.outcomes if o.status == "failed")

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.IO if self.failed else ExitCode.OK

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": not self.skipped,
            "dry_run": self.dry_run,
            "all": self.include_foreign,
            "bytes": self.plan.size,
            "freed_bytes": self.freed,
            "items": [o.to_json() for o in self.outcomes],
            "kept": [
                {"path": str(k.path), "size": k.size, "reason": k.reason} for k in self.plan.kept
            ],
            "kept_bytes": self.plan.kept_size,
            "roots": [
                {"lock_dir": str(r.lock_dir), "registered": r.registered, "locks": r.locks}
                for r in self.roots
            ],
            "problems": [p.to_json() for p in self.problems],
        }


# --- the live set -------------------------------------------------------------------------


def read_roots(layout: StoreLayout) -> tuple[RootOnDisk, ...]:
    roots_dir = layout.state_dir / "roots"
    try:
        entries = sorted(p for p in roots_dir.iterdir() if not p.name.startswith("."))
    except OSError:
        return ()
    roots: list[RootOnDisk] = []
    for entry in entries:
        try:
            text = entry.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            roots.append(RootOnDisk(entry, None, False))
            continue
        lock_dir = Path(text)
        valid = bool(text) and "\n" not in text and lock_dir.is_absolute()
        if not valid:
            roots.append(RootOnDisk(entry, None, False))
            continue
        roots.append(RootOnDisk(entry, lock_dir, lock_dir.is_dir()))
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
    return LiveScan(live_set(layout, locks), tuple(live_roots), tuple(problems), unreadable)


# --- the inventory ------------------------------------------------------------------------


def _lstat_size(path: Path) -> int:
    try:
        return path.lstat().st_size
    except OSError:
        return 0


def _tree_size(path: Path) -> int:
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
    views: dict[str, tuple[Path | None, Path | None]] = {}
    leftovers: list[LeftoverOnDisk] = []
    for entry in _listdir(directory):
        name = entry.name
        path = Path(entry.path)
        if name.startswith("."):
            # build_view's `.<key>.tmp-*` / `.<key>.old-*`, write_atomic's `.<key>.stamp.tmp-*`
            key = name[1:].split(".", 1)[0]
            if VIEW_KEY_RE.fullmatch(key) and (".tmp-" in name or ".old-" in name):
                size = _tree_size(path) if entry.is_dir(follow_symlinks=False) else 0
                leftovers.append(
                    LeftoverOnDisk(
                        "temp",
                        path,
                        size + _lstat_size(path),
                        _mtime(path),
                        _view_lock(layout, key),
                        directory / key,
                    )
                )
            continue
        if name.endswith(".stamp") and VIEW_KEY_RE.fullmatch(name.removesuffix(".stamp")):
            key = name.removesuffix(".stamp")
            views[key] = (views.get(key, (None, None))[0], path)
        elif VIEW_KEY_RE.fullmatch(name) and entry.is_dir(follow_symlinks=False):
            views[name] = (path, views.get(name, (None, None))[1])
    result = [
        ViewOnDisk(
            key,
            view,
            stamp,
            (_tree_size(view) + _lstat_size(view) if view else 0)
            + (_lstat_size(stamp) if stamp else 0),
            _view_lock(layout, key),
        )
        for key, (view, stamp) in sorted(views.items())
    ]
    return result, leftovers


def _view_lock(layout: StoreLayout, key: str) -> Path:
    return layout.view_lock_for_key(key)


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
        lock = layout.hub_blob_lock(repo, oid) if repo is not None else layout.local_blob_lock(oid)
        if name == digest:
            try:
                stat = FileStat.of(path)
            except OSError:
                continue
            blobs.append(BlobOnDisk(path, oid, repo is None, stat, read_record(layout, path), lock))
        elif name.endswith(".incomplete"):
            leftovers.append(
                LeftoverOnDisk(
                    "partial",
                    path,
                    _lstat_size(path),
                    _mtime(path),
                    lock,
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
    blobs: list[BlobOnDisk] = []
    links: list[LinkOnDisk] = []
    refs: list[RefOnDisk] = []
    snapshots: list[SnapshotOnDisk] = []
    local, local_leftovers = _scan_blob_dir(layout, layout.state_dir / "blobs" / "sha256", None)
    blobs += local
    leftovers += local_leftovers
    for entry in _listdir(layout.hub_cache):
        if not entry.name.startswith("models--") or not entry.is_dir(follow_symlinks=False):
            continue
        repo_dir = Path(entry.path)
        # StoreLayout maps a repo id to its directory by replacing "/" with "--".
        repo = entry.name.removeprefix("models--").replace("--", "/")
        if layout.repo_dir(repo) != repo_dir:
            continue
        hub, hub_leftovers = _scan_blob_dir(layout, repo_dir / "blobs", repo)
        blobs += hub
        leftovers += hub_leftovers
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


# --- deleting -----------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(path: Path | None, timeout_s: float) -> Iterator[None]:
    if path is None:
        yield
        return
    with hold_mutex(path, timeout_s):
        yield


def _unlink(path: Path) -> bool:
    """Remove a file or symlink; a read-only file (local blobs are 0444) is made writable."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except PermissionError:
        if not path.is_symlink():  # never chmod through a link
            with contextlib.suppress(OSError):
                os.chmod(path, 0o644)
        path.unlink()
    return True


def _remove_tree(path: Path) -> bool:
    """Move the directory out of sight first, so no half-deleted view is ever visible."""
    if not path.exists() and not path.is_symlink():
        return False
    trash = path.with_name(f".{path.name}.old-gc-{secrets.token_hex(4)}")
    path.replace(trash)
    shutil.rmtree(trash, ignore_errors=True)
    return True


def _prune(directory: Path, stop: Path) -> None:
    while directory != stop and stop in directory.parents:
        try:
            directory.rmdir()
        except OSError:
            return
        directory = directory.parent


def _remove(item: Doomed) -> bool:
    if (
        item.kind in ("view", "temp", "runtime")
        and item.path.is_dir()
        and not item.path.is_symlink()
    ):
        return _remove_tree(item.path)
    removed = _unlink(item.path)
    if item.kind in ("link", "ref") and item.prune_to is not None:
        _prune(item.path.parent, item.prune_to)
    return removed


def _execute(item: Doomed, live: LiveSet, timeout_s: float) -> ItemOutcome:
    if item.path in live:
        return ItemOutcome(item, "live", "a lock written during gc references it")
    if item.unless_exists is not None and os.path.lexists(item.unless_exists):
        return ItemOutcome(item, "changed", "its snapshot is still there")
    try:
        with _locked(item.lock, timeout_s):
            if item.expect is not None:
                try:
                    current = FileStat.of(item.path)
                except FileNotFoundError:
                    return ItemOutcome(item, "gone")
                if current != item.expect:
                    return ItemOutcome(item, "changed", "changed since it was scanned")
            # A view's stamp goes first: a view without its stamp is never trusted.
            stamps = [f for f in item.follow if f.kind == "stamp"]
            for follower in stamps:
                _unlink(follower.path)
            if not _remove(item):
                return ItemOutcome(item, "gone")
            for follower in item.follow:
                if follower.kind != "stamp":
                    _remove(follower)
    except LockBusyError:
        return ItemOutcome(item, "busy", "another mlxpin or huggingface_hub holds its lock")
    except OSError as exc:
        return ItemOutcome(item, "failed", exc.strerror or str(exc))
    return ItemOutcome(item, "removed")


def _with_runtimes(
    live: LiveSet, runtimes: RuntimeLayout, settings: Settings, roots: tuple[LiveRoot, ...]
) -> tuple[LiveSet, list[LockCorruptError]]:
    """Add the runtimes the live lock dirs' lock/runtime.toml name to the live set."""
    dirs = {settings.lock_dir, *(r.lock_dir for r in roots)}
    keys, problems = live_runtime_keys(sorted(dirs))
    return LiveSet(live.paths | {runtimes.path(k) for k in keys}), problems


def _keys(live: LiveSet, runtimes: RuntimeLayout) -> set[str]:
    return {p.name for p in live.paths if p.parent == runtimes.root}


def gc(
    settings: Settings,
    *,
    yes: bool = False,
    include_foreign: bool = False,
    forget_missing: bool = False,
    lock_timeout_s: float = LOCK_TIMEOUT_S,
    now: float | None = None,
) -> GcResult:
    """Plan, and with `yes` delete. Refuses to delete while a live lock file is unreadable."""
    layout = StoreLayout.of(settings)
    roots = read_roots(layout)
    found = collect_live(settings, layout, roots)
    live_roots, problems = found.roots, found.problems
    roots = tuple(
        replace(r, readable=False) if r.lock_dir in found.unreadable else r for r in roots
    )
    inventory = scan(layout, roots)
    moment = time.time() if now is None else now
    the_plan = plan(inventory, found.live, include_foreign=include_foreign, now=moment)
    runtimes = RuntimeLayout.of(settings)
    live, runtime_problems = _with_runtimes(found.live, runtimes, settings, live_roots)
    problems = (*problems, *runtime_problems)
    the_plan = GcPlan(
        (*the_plan.doomed, *runtime_garbage(runtimes, _keys(live, runtimes), moment)),
        the_plan.kept,
    )
    if not yes:
        outcomes = tuple(ItemOutcome(item, "would_remove") for item in the_plan.doomed)
        return GcResult(True, include_foreign, the_plan, outcomes, live_roots, problems)
    if problems:
        first = problems[0]
        raise LockCorruptError(first.file, first.problem).with_hint(
            "gc deletes nothing while a lock it must keep alive is unreadable (it cannot tell "
            "what that lock needs); fix or delete that file, then run `mlxpin gc --yes` again"
        )
    if settings.lock_dir in found.unreadable:
        raise ConfigError(
            f"{settings.lock_dir} cannot be read ({found.unreadable[settings.lock_dir]}), so "
            "gc cannot tell which files its locks need",
            "fix its permissions, or run gc as the user who owns it",
        )
    unreadable = [d for d in found.unreadable if d != settings.lock_dir]
    if unreadable and not forget_missing:
        raise ConfigError(
            f"{unreadable[0]} fetched into this store but cannot be read "
            f"({found.unreadable[unreadable[0]]}), so gc cannot tell which files it still needs",
            "fix its permissions or run gc as its owner; if it is gone for good: "
            "mlxpin gc --yes --forget-missing",
        )
    missing = [r.lock_dir for r in roots if r.lock_dir is not None and not r.exists]
    if missing and not forget_missing:
        raise ConfigError(
            f"{missing[0]} fetched into this store but cannot be found now (moved, deleted, "
            "or on a disk that is not mounted), so gc cannot tell which files it still needs",
            "mount or restore it, or if it is gone for good: mlxpin gc --yes --forget-missing",
        )
    # A lock written since the scan may have made something live again: read them once more.
    again = collect_live(settings, layout, read_roots(layout))
    live_again, _ = _with_runtimes(again.live, runtimes, settings, again.roots)
    outcomes = tuple(_execute(item, live_again, lock_timeout_s) for item in the_plan.doomed)
    return GcResult(False, include_foreign, the_plan, outcomes, live_roots, problems)
