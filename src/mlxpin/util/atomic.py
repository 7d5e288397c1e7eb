"""Atomic file writes (temp + fsync + rename) and cross-process locks."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from mlxpin.errors import DiskError, LockBusyError

# What a full, read-only or failing disk (or a file-size limit) answers to a write.
DISK_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EFBIG,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.EIO,
    errno.ENOTDIR,  # a regular file where a directory must be
}


def disk_error(path: Path, exc: OSError) -> DiskError | None:
    """The user-facing error for a write the disk refused; None for any other OSError."""
    if exc.errno in DISK_ERRNOS:
        return DiskError(path, exc.strerror or str(exc))
    return None


@contextlib.contextmanager
def refused_as_disk_error(path: Path) -> Iterator[None]:
    """An OSError the disk answers to a write (see `disk_error`) becomes DiskError (74)."""
    try:
        yield
    except OSError as exc:
        error = disk_error(path, exc)
        if error is None:
            raise
        raise error from None


def make_dirs(directory: Path) -> None:
    """`mkdir -p`, with a refused write (or a file in the way) as DiskError (74)."""
    try:
        with refused_as_disk_error(directory):
            directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise DiskError(directory, "a file, not a directory, is in the way") from None


def fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Readers see the old bytes or the new bytes, never a mix, even after a crash."""
    make_dirs(path.parent)
    tmp = temp_name(path)
    with refused_as_disk_error(path):
        try:
            with open(tmp, "xb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
    fsync_dir(path.parent)


def write_if_changed(path: Path, data: bytes) -> bool:
    """`write_atomic` unless the file already holds exactly `data` (its mtime is then left
    alone); True when it wrote."""
    try:
        if path.read_bytes() == data:
            return False
    except OSError:
        pass
    write_atomic(path, data)
    return True


@contextlib.contextmanager
def hold_mutex(mutex_path: Path, timeout_s: float = 600.0, mode: int = 0o644) -> Iterator[None]:
    """A cross-process mutex (a file lock, never a pin); LockBusyError (exit 75) if it
    stays held past the timeout."""
    import filelock  # not on the boot path

    make_dirs(mutex_path.parent)
    if mutex_path.is_symlink():  # planted in a shared cache: filelock refuses links (ELOOP)
        with contextlib.suppress(FileNotFoundError):
            mutex_path.unlink()  # the link, never its target
    mutex = filelock.FileLock(str(mutex_path), mode=mode)
    try:
        with refused_as_disk_error(mutex_path):
            mutex.acquire(timeout=timeout_s)
    except filelock.Timeout:
        raise LockBusyError(mutex_path, timeout_s) from None
    try:
        yield
    finally:
        mutex.release()
