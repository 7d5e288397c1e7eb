"""Atomic file writes (temp + fsync + rename) and cross-process locks."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from mlxpin.errors import DiskError, LockBusyError

DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Readers see the old bytes or the new bytes, never a mix, even after a crash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        with open(tmp, "xb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if exc.errno in DISK_ERRNOS:
            raise DiskError(path, exc.strerror or str(exc)) from None
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def hold_lock(lock_path: Path, timeout_s: float = 600.0, mode: int = 0o644) -> Iterator[None]:
    """A cross-process lock; LockBusyError (exit 75) if it stays held past the timeout."""
    import filelock  # not on the boot path

    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(lock_path), mode=mode)
    try:
        lock.acquire(timeout=timeout_s)
    except filelock.Timeout:
        raise LockBusyError(lock_path, timeout_s) from None
    try:
        yield
    finally:
        lock.release()
