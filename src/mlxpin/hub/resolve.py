"""ModelSpec → LockedModel: ask the Hub (or read a local directory) and pin the answer."""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING

from mlxpin.errors import ConfigError, UnstorableFilesError
from mlxpin.project import validate
from mlxpin.project.lockfile import LockedFile, LockedModel, make_locked, original_of
from mlxpin.project.manifest import HubSource, ModelSpec, PathSource
from mlxpin.util.hashing import hash_file

if TYPE_CHECKING:
    from mlxpin.hub.client import HubClient


@dataclass(frozen=True)
class Resolution:
    lock: LockedModel
    gated: bool = False


def selected(path: str, patterns: tuple[str, ...] | None) -> bool:
    """The same allow-list rule as huggingface_hub (fnmatchcase; 'dir/' means 'dir/*')."""
    if patterns is None:
        return True
    return any(fnmatchcase(path, p + "*" if p.endswith("/") else p) for p in patterns)


def _nothing_selected(spec: ModelSpec, where: str) -> ConfigError:
    return ConfigError(
        f"{spec.name}: launch.files {list(spec.launch.files or ())} select no file of {where}",
        "fix the patterns in the manifest (they match like `hf download --include`)",
    )


def resolve_hub(spec: ModelSpec, client: HubClient) -> Resolution:
    source = spec.launch.source
    assert isinstance(source, HubSource)
    remote = client.resolve(source.repo, source.revision)
    files = [
        LockedFile(path=f.path, size=f.size, oid=f.oid)
        for f in remote.files
        if selected(f.path, spec.launch.files)
    ]
    if not files:
        raise _nothing_selected(spec, f"{source.repo}@{remote.commit[:7]}")
    problem = validate.tree_problem(f.path for f in files)
    if problem:
        raise UnstorableFilesError(spec.name, f"{source.repo}@{remote.commit[:7]}", problem)
    lock = make_locked(
        spec.name, original_of(spec), remote.commit, remote.last_modified, files, remote.access
    )
    return Resolution(lock=lock, gated=remote.access is not None)


def local_files(root: Path) -> Iterable[str]:
    """Every regular file under root, as a repo-style relative path; hidden entries skipped."""
    for directory, subdirs, names in os.walk(root, followlinks=True):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        base = Path(directory).relative_to(root)
        for name in sorted(names):
            if name.startswith("."):
                continue
            full = Path(directory) / name
            if full.is_file():
                yield (base / name).as_posix()
            elif full.is_symlink() and not full.exists():
                raise ConfigError(
                    f"{full} is a broken symbolic link",
                    "remove it or point it at a file; mlxpin will not silently skip it",
                )


def resolve_path(spec: ModelSpec, workers: int = 4) -> Resolution:
    source = spec.launch.source
    assert isinstance(source, PathSource)
    root = source.path
    if not root.is_dir():
        raise ConfigError(
            f"{spec.name}: launch.path {source.written!r} is not a directory ({root})",
            "fix the path in the manifest; a relative path is relative to the manifest's folder",
        )
    try:
        paths = [p for p in local_files(root) if selected(p, spec.launch.files)]
    except OSError as exc:
        raise ConfigError(f"{spec.name}: cannot list {root}: {exc.strerror}") from None
    for path in paths:
        problem = validate.relpath_problem(path)
        if problem:
            raise ConfigError(f"{spec.name}: file name {path!r} {problem}", "rename the file")
    if not paths:
        raise _nothing_selected(spec, str(root))
    problem = validate.tree_problem(paths)
    if problem:
        raise UnstorableFilesError(spec.name, str(root), problem)

    def pin(path: str) -> LockedFile:
        full = root / path
        try:
            size = full.stat().st_size
            return LockedFile(path=path, size=size, oid=hash_file(full, "sha256", size))
        except OSError as exc:
            raise ConfigError(
                f"{spec.name}: cannot read {full}: {exc.strerror}",
                "fix the file's permissions, or leave it out with launch.files",
            ) from None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        files = list(pool.map(pin, paths))
    return Resolution(lock=make_locked(spec.name, original_of(spec), None, None, files))


def resolve(spec: ModelSpec, client: HubClient | None) -> Resolution:
    if isinstance(spec.launch.source, PathSource):
        return resolve_path(spec)
    assert client is not None
    return resolve_hub(spec, client)
