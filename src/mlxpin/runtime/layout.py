"""Where installed runtimes live, and the cheap check that one is complete (boot-path safe).

    <state>/runtimes/<key>/                    a virtual environment, one per pinned closure
    <state>/runtimes/<key>/.mlxpin-runtime.json  its stamp (written before it is renamed in)
    <state>/runtimes/.<key>.tmp-*              a build in progress (or a crashed one)
    <state>/locks/runtime-<key>.lock           held while a runtime is built or deleted

`<key>` hashes the pinned closure, so projects pinning the same closure share one install.
A runtime directory only appears by renaming a finished, stamped build. The stamp lists
every file (size, mtime, ctime, sha256; `__pycache__` aside): checking it stats them all
(no uv, no hashing; `deep` re-hashes them), so an edited or added file is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mlxpin.config import Settings
from mlxpin.runtime.dists import dist_versions
from mlxpin.store.layout import read_stamp

STAMP_FORMAT = 2
STAMP_NAME = ".mlxpin-runtime.json"


@dataclass(frozen=True)
class RuntimeLayout:
    state_dir: Path

    @classmethod
    def of(cls, settings: Settings) -> RuntimeLayout:
        return cls(settings.state_dir)

    @property
    def root(self) -> Path:
        return self.state_dir / "runtimes"

    def path(self, key: str) -> Path:
        return self.root / key

    def stamp(self, key: str) -> Path:
        return self.path(key) / STAMP_NAME

    def python(self, key: str) -> Path:
        return self.path(key) / "bin" / "python"

    def mutex(self, key: str) -> Path:
        return self.state_dir / "locks" / f"runtime-{key}.lock"


@dataclass(frozen=True)
class InstalledRuntime:
    key: str
    path: Path
    python: Path  # the runtime's interpreter (what runs mlx_lm.server)
    python_version: str
    dists: Mapping[str, str]  # canonical name -> version


@dataclass(frozen=True)
class RuntimeCheck:
    ok: bool
    problem: str | None = None
    installed: InstalledRuntime | None = None


def _files(root: Path, deep: bool) -> dict[str, list[object]]:
    """Every file and link under `root` but the stamp and bytecode caches: its stat, and
    with `deep` its sha256 (a link: its target)."""
    out: dict[str, list[object]] = {}
    for top, dirs, names in os.walk(root):
        linked = [d for d in dirs if os.path.islink(Path(top, d))]
        dirs[:] = [d for d in dirs if d != "__pycache__" and d not in linked]
        for name in [*names, *linked]:
            path = Path(top, name)
            rel = str(path.relative_to(root))
            if rel == STAMP_NAME:
                continue
            st = os.lstat(path)
            row: list[object] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns]
            if deep:
                row.append(
                    os.readlink(path)
                    if os.path.islink(path)
                    else hashlib.sha256(path.read_bytes()).hexdigest()
                )
            out[rel] = row
    return out


def check_runtime(layout: RuntimeLayout, key: str, deep: bool = False) -> RuntimeCheck:
    """Is the runtime of this key installed, complete and unchanged since it was built?"""
    why = ("is incomplete (no stamp)", "is not installed", "cannot be read ({})")
    raw = read_stamp(layout.stamp(key), layout.path(key), why, Path.exists)
    if isinstance(raw, str):
        return RuntimeCheck(False, raw)
    try:
        data = json.loads(raw)
        ok_format = data["format"] == STAMP_FORMAT and data["key"] == key
        site_packages = layout.path(key) / str(data["site_packages"])
        dists = {str(k): str(v) for k, v in dict(data["dists"]).items()}
        python_version = str(data["python_version"])
        files = {str(k): list(v)[: None if deep else 3] for k, v in dict(data["files"]).items()}
    except (ValueError, KeyError, TypeError):
        return RuntimeCheck(False, "has an unreadable stamp")
    if not ok_format:
        return RuntimeCheck(False, "has a stamp of another runtime")
    python = layout.python(key)
    try:
        os.stat(python)  # follows the link to the base interpreter it was built with
    except OSError:
        return RuntimeCheck(False, f"lost its interpreter ({python} does not run)")
    if dist_versions(site_packages) != dists:
        return RuntimeCheck(False, "changed since it was installed (packages added or removed)")
    try:
        found = _files(layout.path(key), deep)
    except OSError as exc:
        return RuntimeCheck(False, f"cannot be read ({exc.strerror})")
    changed = sorted(set(found) ^ set(files)) or sorted(p for p in found if found[p] != files[p])
    if changed:
        return RuntimeCheck(False, f"changed since it was installed ({changed[0]})")
    installed = InstalledRuntime(key, layout.path(key), python, python_version, dists)
    return RuntimeCheck(True, installed=installed)


def write_stamp(path: Path, key: str, python_version: str, site_packages: Path) -> None:
    """Record a finished build (inside the directory, before it is renamed into place)."""
    data = {
        "format": STAMP_FORMAT,
        "key": key,
        "python_version": python_version,
        "site_packages": str(site_packages.relative_to(path)),
        "dists": dict(sorted(dist_versions(site_packages).items())),
        "files": _files(path, deep=True),
    }
    stamp = path / STAMP_NAME
    with open(stamp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
