"""A lock directory's lock files: which files are locks (orphan removal, gc's live set)."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from mlxpin.project import validate
from mlxpin.project.lockfile import HEADER
from mlxpin.project.manifest import RESERVED_NAMES


def is_lock_file(path: Path) -> bool | None:
    """The one definition of "this file is a lock" (orphan removal, gc's live set): it
    starts with the header comment, or is TOML with a `[locked]` table. None when it cannot
    be read: it may be a lock, and gc must not assume it is not."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    first = data.lstrip(b"\r\n").split(b"\n", 1)[0].rstrip(b"\r")
    if first == HEADER.rstrip("\n").encode():
        return True
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False
    return isinstance(document.get("locked"), dict)


@dataclass(frozen=True)
class LockDirListing:
    """What a lock directory holds."""

    names: tuple[str, ...]  # lock files
    unreadable: tuple[str, ...] = ()  # `<name>.toml` files that could not be read
    error: str | None = None  # the directory exists but cannot be listed


def list_lock_dir(lock_dir: Path) -> LockDirListing:
    """The lock files in a directory (see `is_lock_file`); a missing directory has none."""
    try:
        with os.scandir(lock_dir) as scan:
            entries = sorted((e for e in scan), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return LockDirListing(())
    except OSError as exc:
        return LockDirListing((), (), exc.strerror or str(exc))
    names: list[str] = []
    unreadable: list[str] = []
    for entry in entries:
        stem = entry.name.removesuffix(".toml")
        # lock/runtime.toml pins the server runtime: never a model's, nor an orphan.
        if stem == entry.name or not validate.NAME_RE.fullmatch(stem) or stem in RESERVED_NAMES:
            continue
        try:
            if not entry.is_file():
                continue
        except OSError:
            pass
        kind = is_lock_file(Path(entry.path))
        if kind:
            names.append(stem)
        elif kind is None:
            unreadable.append(stem)
    return LockDirListing(tuple(names), tuple(unreadable))


def lock_names_on_disk(lock_dir: Path) -> tuple[str, ...]:
    return list_lock_dir(lock_dir).names
