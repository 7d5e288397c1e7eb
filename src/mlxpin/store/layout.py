"""Where pinned files live on disk, and the cheap (stat-only) check that they are intact.
Nothing here imports huggingface_hub: `launch` uses this module at boot.

    $HF_HUB_CACHE/models--OWNER--NAME/blobs/<hex>            the Hub's standard cache,
    $HF_HUB_CACHE/models--OWNER--NAME/snapshots/<commit>/..  shared with other tools
    $HF_HUB_CACHE/.locks/models--OWNER--NAME/<hex>.lock      the client's own blob locks
    $HF_HUB_CACHE/models--OWNER--NAME/refs/mlxpin/<name>/<commit>   keeps a Hub pin
                                                             from `hf cache prune`
    <state>/blobs/sha256/<hex>                               local `path` sources (read-only)
    <state>/snapshots/<key>/<path> -> blob (relative link)   one exact view per pin
    <state>/snapshots/<key>.stamp                            verification stamp of the view
    <state>/verified/<h[:2]>/<h>, h = sha256(blob path)      per-blob verification record
    <state>/roots/<key>                                      lock dirs that fetched (gc roots)

A view holds exactly one pin's files (`mlx_lm` loads every weight file in the directory),
is a real directory, and is built in a temporary directory and renamed into place, so a
half-built one is never visible. Its stamp records each file's blob and that blob's size,
mtime, inode, device and ctime when it was last hashed: checking it is one listing of the
view, one readlink and one lstat per file. A blob must be a regular file: a symlink or
anything else where a blob belongs is foreign, never trusted or followed.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat as stat_mod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mlxpin.config import Settings
from mlxpin.project.lockfile import LockedFile, LockedModel
from mlxpin.util.hashing import oid_hex

STAMP_FORMAT = 2  # 2: ctime recorded, the view's listing compared
CHANGED = "changed since it was verified"  # stat only: launch re-hashes it
UNSTAMPED = (  # read_stamp's `why` for a view
    "the snapshot was never verified",
    "snapshot not fetched",
    "the snapshot's stamp cannot be read: {}",
)
OUTSIDE_CACHE = "points outside this cache (a copied HF_HOME still linking to the old one?)"


@dataclass(frozen=True)
class StoreLayout:
    """The Hub cache and mlxpin's state directory."""

    hub_cache: Path
    state_dir: Path

    @classmethod
    def of(cls, settings: Settings) -> StoreLayout:
        return cls(hub_cache=settings.hub_cache, state_dir=settings.state_dir)

    # -- Hub cache (standard layout) ------------------------------------------------------

    def repo_dir(self, repo: str) -> Path:
        return self.hub_cache / ("models--" + repo.replace("/", "--"))

    def hub_blob(self, repo: str, oid: str) -> Path:
        return self.repo_dir(repo) / "blobs" / oid_hex(oid)

    def hub_blob_mutex(self, repo: str, oid: str) -> Path:
        return self.hub_cache / ".locks" / self.repo_dir(repo).name / (oid_hex(oid) + ".lock")

    def hub_snapshot(self, repo: str, commit: str) -> Path:
        return self.repo_dir(repo) / "snapshots" / commit

    def pin_ref(self, lock: LockedModel) -> Path | None:
        """The Hub cache ref that keeps this pin's snapshot out of `hf cache prune`
        (huggingface_hub's scanner counts every file under refs/ as a ref)."""
        if lock.original.repo is None or lock.commit is None:
            return None
        return self.repo_dir(lock.original.repo) / "refs" / "mlxpin" / lock.name / lock.commit

    # -- mlxpin's own state ---------------------------------------------------------------

    def local_blob(self, oid: str) -> Path:
        return self.state_dir / "blobs" / "sha256" / oid_hex(oid)

    def local_blob_mutex(self, oid: str) -> Path:
        return self.state_dir / "locks" / "blobs" / (oid_hex(oid) + ".lock")

    def blob(self, lock: LockedModel, file: LockedFile) -> Path:
        if lock.original.repo is not None:
            return self.hub_blob(lock.original.repo, file.oid)
        return self.local_blob(file.oid)

    def blob_mutex(self, lock: LockedModel, file: LockedFile) -> Path:
        if lock.original.repo is not None:
            return self.hub_blob_mutex(lock.original.repo, file.oid)
        return self.local_blob_mutex(file.oid)

    def view(self, lock: LockedModel) -> Path:
        return self.state_dir / "snapshots" / view_key(lock)

    def stamp(self, lock: LockedModel) -> Path:
        return self.state_dir / "snapshots" / (view_key(lock) + ".stamp")

    def view_mutex(self, lock: LockedModel) -> Path:
        return self.view_mutex_for_key(view_key(lock))

    def view_mutex_for_key(self, key: str) -> Path:
        return self.state_dir / "locks" / f"view-{key}.lock"

    def root(self, lock_dir: Path) -> Path:
        key = hashlib.sha256(os.fsencode(lock_dir)).hexdigest()[:32]
        return self.state_dir / "roots" / key

    def verified_record(self, blob: Path) -> Path:
        """One record per blob file (the same content may sit in several repos' blobs)."""
        digest = hashlib.sha256(os.fsencode(blob)).hexdigest()
        return self.state_dir / "verified" / digest[:2] / digest


def view_links(layout: StoreLayout, lock: LockedModel) -> dict[str, str]:
    """Each file's link text in the view: relative, as the Hub's own snapshots link, so a
    copied HF_HOME (`cp -a`, `rsync -a`) points into itself, not into the old copy. Built
    from the real directories, so a symlinked parent does not change where `..` leads."""
    if not lock.files:
        return {}
    view = os.path.join(os.path.realpath(layout.view(lock).parent), view_key(lock))
    blobs = os.path.realpath(layout.blob(lock, lock.files[0]).parent)
    ups: dict[str, str] = {}  # a directory of the view -> the way up to the blobs, "/"
    links = {}
    for file in lock.files:
        sub = file.path.rpartition("/")[0]  # os.path.dirname, without its cost per file
        up = ups.get(sub)
        if up is None:
            up = ups[sub] = os.path.relpath(blobs, os.path.join(view, sub)) + "/"
        links[file.path] = up + oid_hex(file.oid)  # os.path.join, without its cost
    return links


def view_key(lock: LockedModel) -> str:
    """One view per (where the blobs live, which files): a fork with identical files in
    another repo gets its own view, pointing at its own blobs."""
    home = lock.original.repo or "local"
    return hashlib.sha256(f"{home}\n{lock.tree_hash}".encode()).hexdigest()


@dataclass(frozen=True)
class StampCheck:
    """Whether a view is intact by its stamp, and if not, why."""

    ok: bool
    problem: str | None = None  # a whole clause: "config.json is missing from the snapshot"
    origin: str | None = None  # ok: where the stamped bytes came from (hub, mirror, ...)


@dataclass(frozen=True)
class ViewListing:
    """What one walk of a view found: its links, and everything that does not belong."""

    links: dict[str, str] = field(default_factory=dict)  # relative path -> link target
    foreign: tuple[tuple[str, str], ...] = ()  # (relative path, what it is) not links
    problem: str | None = None  # the view itself is missing, a symlink or unreadable
    missing: bool = False


def list_view(view: Path, expected: frozenset[str] = frozenset()) -> ViewListing:
    """Walk a view without following any link. `expected` are the lock's file paths:
    directories no expected file lives under are reported as foreign."""
    try:
        st = os.lstat(view)
    except FileNotFoundError:
        return ViewListing(problem="snapshot not fetched", missing=True)
    except OSError as exc:
        return ViewListing(problem=f"the snapshot cannot be read: {exc.strerror}")
    if stat_mod.S_ISLNK(st.st_mode):
        return ViewListing(
            problem="the snapshot directory is a symlink to elsewhere, not the one mlxpin built"
        )
    if not stat_mod.S_ISDIR(st.st_mode):
        return ViewListing(problem="the snapshot is not a directory")
    dirs: set[str] | None = None  # directories the lock's files live in (when needed)
    links: dict[str, str] = {}
    foreign: list[tuple[str, str]] = []
    pending = [("", str(view))]
    try:
        while pending:
            prefix, directory = pending.pop()
            with os.scandir(directory) as entries:
                for entry in entries:
                    rel = prefix + entry.name
                    if entry.is_symlink():
                        links[rel] = os.readlink(entry.path)
                    elif entry.is_dir(follow_symlinks=False):
                        if dirs is None:
                            dirs = {
                                p.rsplit("/", i)[0]
                                for p in expected
                                for i in range(1, p.count("/") + 1)
                            }
                        if rel in dirs:
                            pending.append((rel + "/", entry.path))
                        else:
                            foreign.append((rel, "a directory"))
                    else:
                        foreign.append((rel, "a file mlxpin did not put there"))
    except OSError as exc:
        return ViewListing(problem=f"the snapshot cannot be listed: {exc.strerror}")
    return ViewListing(links, tuple(sorted(foreign)))


def read_stamp(
    stamp: Path,
    of: Path,
    why: tuple[str, str, str],
    there: Callable[[Path], bool] = os.path.lexists,
) -> bytes | str:
    """The bytes of ``stamp``, which records that ``of`` is complete; else which of ``why``:
    (``of`` is `there` unstamped, ``of`` is absent, the stamp is unreadable: `{}` why)."""
    try:
        return stamp.read_bytes()
    except FileNotFoundError:
        return why[0] if there(of) else why[1]
    except OSError as exc:
        return why[2].format(exc.strerror)


def check_stamp(
    layout: StoreLayout,
    lock: LockedModel,
    *,
    need: frozenset[str] | None = None,
) -> StampCheck:
    """Stat-only: is the view present, exactly the lock's files, pointing into this
    layout's cache, unchanged since verified? A subset stamp
    (`mlxpin.store.subset`) passes only when it holds every path of `need`."""
    if lock.unbuilt:
        return StampCheck(False, "not built yet")
    view = layout.view(lock)
    raw = read_stamp(layout.stamp(lock), view, UNSTAMPED)
    if isinstance(raw, str):
        return StampCheck(False, raw)
    try:
        data = json.loads(raw)
        if data.get("failed"):
            (path, problem), *others = data["failed"]
            more = f" (and {len(others)} more files)" if others else ""
            return StampCheck(False, f"`verify` found {path}: {problem}{more}")
        rows = data["files"]
        if data.get("format") != STAMP_FORMAT:
            return StampCheck(False, "the snapshot was verified by another mlxpin version")
        if data.get("tree_hash") != lock.tree_hash:
            return StampCheck(False, "the snapshot's stamp belongs to another pin")
        recorded = {row[0]: (row[1], tuple(row[2:7])) for row in rows}
        origin = data.get("origin")
    except (ValueError, KeyError, TypeError, IndexError):
        return StampCheck(False, "the snapshot's stamp is unreadable")
    # Plain strings and os calls: this runs per file at every boot (5,000 files ~ 20 ms).
    locked = frozenset(file.path for file in lock.files)
    paths = frozenset(recorded)
    if not paths <= locked or len(recorded) != len(rows):
        return StampCheck(False, "the snapshot's stamp lists other files than the lock")
    if paths != locked:
        if need is None:
            return StampCheck(
                False,
                f"the snapshot holds only {len(paths)} of the {len(locked)} locked files "
                "(a pipeline host's subset), not the whole pin",
            )
        missing = sorted(need - paths)
        if missing:
            more = f" (and {len(missing) - 1} more of its files)" if len(missing) > 1 else ""
            return StampCheck(False, f"{missing[0]} is missing from the snapshot{more}")
    listing = list_view(view, paths)
    if listing.problem is not None:
        return StampCheck(False, listing.problem)
    for path, what in listing.foreign:
        return StampCheck(False, f"{path} is not in the lock ({what} in the snapshot)")
    for path in sorted(listing.links.keys() - paths):
        if path in locked:
            return StampCheck(False, f"{path} is in the snapshot but its stamp does not list it")
        return StampCheck(False, f"{path} is not in the lock (an extra file in the snapshot)")
    blob_dir = str(layout.blob(lock, lock.files[0]).parent) + os.sep if lock.files else ""
    relative = view_links(layout, lock)
    for file in lock.files:
        entry = recorded.get(file.path)
        if entry is None:
            continue  # a subset stamp: this file is not held here (and not needed)
        stamped, expected = entry
        blob = blob_dir + oid_hex(file.oid)
        target = listing.links.get(file.path)
        if target is None:
            return StampCheck(False, f"{file.path} is missing from the snapshot")
        if target not in (relative[file.path], blob):
            return StampCheck(False, f"{file.path} {OUTSIDE_CACHE}")
        if stamped != blob:
            return StampCheck(False, f"{file.path} {CHANGED}")
        try:
            st = os.lstat(blob)
        except OSError:
            return StampCheck(False, f"{file.path} is missing")
        actual = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev, st.st_ctime_ns)
        if actual != expected or st.st_size != file.size or not stat_mod.S_ISREG(st.st_mode):
            return StampCheck(False, f"{file.path} {CHANGED}")
    return StampCheck(True, origin=origin if isinstance(origin, str) else None)


def size_on_disk(layout: StoreLayout, lock: LockedModel) -> int:
    total = 0
    for file in lock.files:
        try:
            total += layout.blob(lock, file).stat().st_size
        except OSError:
            continue
    return total


def register_root(layout: StoreLayout, lock_dir: Path) -> None:
    """Remember this project's lock dir, so `mlxpin gc` keeps what its locks use."""
    root = layout.root(lock_dir)
    data = os.fsencode(lock_dir)
    try:
        if root.read_bytes() == data:
            return
    except OSError:
        pass
    from mlxpin.util.atomic import write_atomic  # `status` writes nothing

    write_atomic(root, data)
