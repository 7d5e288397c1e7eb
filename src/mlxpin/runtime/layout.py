"""Where installed runtimes live, and the cheap check that one is complete (boot-path safe).

    <state>/runtimes/<key>/                    a virtual environment, one per pinned closure
    <state>/runtimes/<key>/.mlxpin-runtime.json  its stamp (written before it is renamed in)
    <state>/runtimes/.<key>.tmp-*              a build in progress (or a crashed one)
    <state>/locks/runtime-<key>.lock           held while a runtime is built or deleted

`<key>` hashes the pinned closure, so projects pinning the same closure share one install.
A runtime directory only appears by renaming a finished, stamped build; checking it is one
small read, one stat and one directory listing (no uv, no hashing).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mlxpin.config import Settings
from mlxpin.runtime.dists import dist_versions

STAMP_FORMAT = 1
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


def check_runtime(layout: RuntimeLayout, key: str) -> RuntimeCheck:
    """Is the runtime of this key installed, complete and unchanged since it was built?"""
    try:
        raw = layout.stamp(key).read_bytes()
    except FileNotFoundError:
        if layout.path(key).exists():
            return RuntimeCheck(False, "is incomplete (no stamp)")
        return RuntimeCheck(False, "is not installed")
    except OSError as exc:
        return RuntimeCheck(False, f"cannot be read ({exc.strerror})")
    try:
        data = json.loads(raw)
        ok_format = data["format"] == STAMP_FORMAT and data["key"] == key
        site_packages = layout.path(key) / str(data["site_packages"])
        dists = {str(k): str(v) for k, v in dict(data["dists"]).items()}
        python_version = str(data["python_version"])
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
    }
    stamp = path / STAMP_NAME
    with open(stamp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
