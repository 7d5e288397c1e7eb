"""Refuse early, with exit 74, a directory this process will have to write but cannot.
No side effects (a dry run may call it): it asks the nearest existing ancestor."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from mlxpin.errors import DiskError


def _nearest_existing(path: Path) -> tuple[Path, os.stat_result | None]:
    """The deepest existing ancestor-or-self of `path` and its stat (None if a file
    blocks the way: that path is returned with its own stat result)."""
    probe = path
    while True:
        try:
            return probe, os.stat(probe)
        except (FileNotFoundError, NotADirectoryError):
            if probe.parent == probe:
                return probe, None
            probe = probe.parent


def writable_dir_problem(path: Path) -> str | None:
    """None when `path` is, or can be created as, a directory this process may write."""
    try:
        existing, st = _nearest_existing(path)
    except OSError as exc:
        return exc.strerror or str(exc)
    if st is None:
        return "no existing directory above it"
    if not stat.S_ISDIR(st.st_mode):
        where = "it" if existing == path else str(existing)
        return f"{where} is a file, not a directory"
    mode = os.W_OK | os.X_OK
    effective = os.access in os.supports_effective_ids
    if os.access(existing, mode, effective_ids=effective):
        return None
    try:
        read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    if read_only:
        return "Read-only file system"
    where = "" if existing == path else f" ({existing} is not writable)"
    return "Permission denied" + where


def require_writable_dir(path: Path, hint: str) -> None:
    """Raise DiskError (74) naming `path` unless it is a directory we can write into."""
    problem = writable_dir_problem(path)
    if problem is not None:
        raise DiskError(path, problem, hint)
